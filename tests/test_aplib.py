"""The aPLib decoder: vectors worked out by hand from the format description, round trips through
the test-only encoder (tests/aplib_encoder.py, which uses every item kind), damage and bombs."""

from __future__ import annotations

import random
import time

import pytest

from bastion.unpack.packers.aplib import AplibError, decompress
from tests.aplib_encoder import compress

# aPLib vectors worked out by hand from the format description (first literal, tag byte, items)
VECTORS = [
    (bytes.fromhex("61d80300"), b"aaaa"),               # 110 dist 1 len 3; 110 end
    (bytes.fromhex("616c620500"), b"ababa"),            # 0 'b'; 110 dist 2 len 3; end
    (bytes.fromhex("61e1460200"), b"a\0a\0a\0"),        # 111 zero byte; 10 gamma match dist 2 len 4
]


@pytest.mark.parametrize(("stream", "plain"), VECTORS)
def test_aplib_vectors(stream: bytes, plain: bytes) -> None:
    assert decompress(stream, len(plain)) == (plain, len(stream))
    assert decompress(stream + b"trailing", 100) == (plain, len(stream))


def test_aplib_round_trips() -> None:
    rng = random.Random(7)
    block = rng.randbytes(2000)
    samples = [b"x", b"\0" * 5000, bytes(range(256)) * 300, rng.randbytes(3000),
               bytes(rng.randrange(3) for _ in range(20000)),
               block + bytes(35000) + block + rng.randbytes(50) + block[:700] + block]  # far distances
    for _ in range(40):
        unit = rng.randbytes(rng.randrange(1, 300))
        samples.append((unit * 50)[:rng.randrange(1, 9000)])
        # periodic with a changed byte now and then: a literal, then the repeat distance again
        edited = bytearray(unit * 50)
        for at in range(rng.randrange(1, 90), len(edited), 97):
            edited[at] = rng.randrange(256)
        samples.append(bytes(edited))
    for plain in samples:
        stream = compress(plain)
        assert decompress(stream, len(plain)) == (plain, len(stream))
        # a larger buffer: the output stops at the end marker
        assert decompress(stream, len(plain) + 10)[0] == plain


def test_aplib_damage_and_bomb() -> None:
    stream = compress(bytes(range(256)) * 40)
    for cut in (1, 2, len(stream) // 2, len(stream) - 1):
        with pytest.raises(AplibError):
            decompress(stream[:cut], 256 * 40)
    with pytest.raises(AplibError):  # output larger than declared
        decompress(stream, 256 * 40 - 1)
    with pytest.raises(AplibError):  # 110 with distance 5 after one byte
        decompress(bytes.fromhex("61c00a00"), 10)
    with pytest.raises(AplibError):
        decompress(b"", 10)
    # a bomb: 'a', 0 'b', 10 + gamma 2 (the repeat distance), then a length of about 2**400
    bomb = b"a" + bytes([0b01000111]) + b"b" + b"\xff" * 100
    start = time.monotonic()
    with pytest.raises(AplibError):
        decompress(bomb, 1 << 20)
    # garbage ends (decoded or AplibError), quickly
    rng = random.Random(3)
    for _ in range(400):
        try:
            out, used = decompress(rng.randbytes(rng.randrange(1, 200)), 4096)
        except AplibError:
            continue
        assert len(out) <= 4096
    assert time.monotonic() - start < 10
