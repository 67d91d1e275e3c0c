"""The two keystreams that hide the data of a compiled AutoIt script, each XORed over the bytes.

* **EA05** (AutoIt v3.0/3.1, ``AU3!EA05``): MT19937 seeded with ``init_genrand(seed)``; each output
  word gives one key byte, bits 1..8 of the tempered word.  The seed is a fixed per-field key (plus,
  for file data, the sum of the 16 bytes after the type signature).
* **EA06** (AutoIt v3.2+, ``AU3!EA06``): a lagged additive generator over 17 words with rotations,
  ``x[n] = rotl(x[n-17], 9) + rotl(x[n-10], 13)`` (mod 2**32); each key byte costs two steps and is the
  top byte of the second.  (The original squeezes that word through a double in [0, 1) times 256; the
  result is exactly the top byte.)  Seeded by 17 rounds of ``s = 1 - s * 0x53A9B4FB``, then 9 warm-up
  steps.

MT19937 runs in CPython's ``random`` module (its state set to ``init_genrand``'s, index 624 so the
first draw twists), which makes EA05 data decrypt at about 90 MB/s; EA06 is pure Python (about
2 MB/s; both measured on the 2-core test machine).  ``tests/test_autoit.py`` holds both against plain step-by-step
implementations.
"""

from __future__ import annotations

import random

_M32 = 0xFFFF_FFFF
# key bytes made at a time, so a large file's keystream never holds more than this many words
CHUNK = 1 << 16


def _genrand_state(seed: int) -> list[int]:
    """MT19937's 624 state words after ``init_genrand(seed)``."""
    state = [seed & _M32]
    for i in range(1, 624):
        prev = state[-1]
        state.append((0x6C078965 * (prev ^ (prev >> 30)) + i) & _M32)
    return state


def mt_keystream(seed: int, size: int) -> bytes:
    """``size`` EA05 key bytes for ``seed``."""
    if size <= 0:
        return b""
    gen = random.Random()
    gen.setstate((3, (*_genrand_state(seed), 624), None))
    out = bytearray()
    for start in range(0, size, CHUNK):
        n = min(CHUNK, size - start)
        # getrandbits(32 * n) holds the next n words in draw order from the least significant end;
        # shifted right by one bit, the low byte of each 4-byte group is bits 1..8 of its word
        words = gen.getrandbits(32 * n) >> 1
        out += words.to_bytes(4 * n, "little")[0::4]
    return bytes(out)


def lame_keystream(seed: int, size: int) -> bytes:
    """``size`` EA06 key bytes for ``seed``."""
    if size <= 0:
        return b""
    x: list[int] = []
    s = seed & _M32
    for _ in range(17):
        s = (1 - s * 0x53A9B4FB) & _M32
        x.append(s)
    # the original keeps the 17 words in a ring, overwriting slots 0, 16, 15, ... in turn (and reading
    # the slot 10 further on): as a sequence, the words before the first step are slots 0, 16, ..., 1
    x = [x[0], *x[16:0:-1]]
    _extend(x, 9)  # the warm-up
    out = bytearray()
    for start in range(0, size, CHUNK):
        n = min(CHUNK, size - start)
        x = x[-17:]
        _extend(x, 2 * n)
        out += bytes(w >> 24 for w in x[18::2])  # two steps per byte, the second one's top byte
    return bytes(out)


def _extend(x: list[int], steps: int) -> None:
    """Append ``steps`` more words of the EA06 sequence to ``x`` (at least its last 17)."""
    append = x.append
    for n in range(len(x), len(x) + steps):
        a = x[n - 17]
        b = x[n - 10]
        append((((a << 9) | (a >> 23)) + ((b << 13) | (b >> 19))) & _M32)


def xor(data: bytes, key: bytes) -> bytes:
    """``data`` XOR ``key`` (same length)."""
    n = len(data)
    return (int.from_bytes(data, "little") ^ int.from_bytes(key[:n], "little")).to_bytes(n, "little")
