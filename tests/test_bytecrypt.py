"""bytecrypt: hand-assembled snippets translated into byte operations (checked against a plain
per-byte model of the x86 instructions), and everything outside the whitelist refused."""

from __future__ import annotations

import random

import pytest

from bastion.unpack.packers.bytecrypt import Op, SnippetError, apply, translate


def rol8(value: int, count: int) -> int:
    count &= 7
    return ((value << count) | (value >> (8 - count))) & 0xFF


def model(code: bytes, al: int, cl: int) -> int:
    """What the processor does with AL for the whitelisted instructions, written out byte by byte."""
    at = 0
    while at < len(code):
        op = code[at]
        if op in (0x90, 0xF8, 0xF9):
            at += 1
            continue
        arg = code[at + 1]
        if op == 0x04:
            al += arg
        elif op == 0x2C:
            al -= arg
        elif op == 0x34:
            al ^= arg
        elif op == 0x02:
            al += cl
        elif op == 0x2A:
            al -= cl
        elif op == 0x32:
            al ^= cl
        elif op == 0xFE:
            al += 1 if arg == 0xC0 else -1
        elif op == 0xF6:
            al = al ^ 0xFF if arg == 0xD0 else -al
        elif op == 0xD2:
            al = rol8(al, cl if arg == 0xC0 else -cl)
        elif op == 0xC0:
            al = rol8(al, code[at + 2] if arg == 0xC0 else -code[at + 2])
            at += 1
        elif op == 0xEB:
            at += arg
        at += 2
        al &= 0xFF
    return al


# every whitelisted instruction once, with jumps over junk that would be refused if it were read
EVERY = bytes.fromhex(
    "04 17 2c 33 34 5a 02 c1 2a c1 32 c1 c0 c0 03 c0 c8 05 d2 c0 d2 c8 fe c0 fe c8 f6 d0 f6 d8"
    "90 f8 f9 0a c0 eb 01 e8 eb 00 eb 03 ff 15 cc 04 01")
# the snippet at + 0x28ec in clam-pespin.exe (after the data layers), its stosb after it
PESPIN_POLY1 = bytes.fromhex(
    "0a c0 04 c3 2a c1 32 c1 eb 01 c2 04 2b f9 eb 01 e8 f9 90 eb 01 e8 2c ed 02 c1 34 9a f9 32 c1"
    "f9 2a c1 34 40 aa")


def test_every_instruction_matches_the_model() -> None:
    program = translate(EVERY, len(EVERY))
    assert program.end == len(EVERY) and program.uses_counter
    assert program.ops[:3] == (Op("add", 0x17), Op("sub", 0x33), Op("xor", 0x5A))
    for al in range(256):
        for cl in (0, 1, 7, 8, 0x80, 0xFF):
            assert program.run(al, cl) == model(EVERY, al, cl), (al, cl)


def test_pespin_snippet_and_apply() -> None:
    program = translate(PESPIN_POLY1, 0x24)
    assert program.end == 0x24 and PESPIN_POLY1[0x24] == 0xAA
    rng = random.Random(3)
    for length in (0, 1, 255, 256, 257, 0x1A1, 5000):
        data = bytearray(rng.randbytes(length + 20))
        before = bytes(data)
        apply(program, data, 10, length, length)
        expect = bytes(model(PESPIN_POLY1[:0x24], b, (length - i) & 0xFF)
                       for i, b in enumerate(before[10:10 + length]))
        assert data[10:10 + length] == expect
        assert data[:10] == before[:10] and data[10 + length:] == before[10 + length:]
    constant = translate(bytes.fromhex("04 05 c0 c0 03 34 11"), 7)  # no CL: one table for all bytes
    data = bytearray(range(256))
    apply(constant, data, 0, 256, 0)
    assert data == bytes(model(bytes.fromhex("04 05 c0 c0 03 34 11"), b, 0) for b in range(256))


def test_operands_may_follow_the_snippet() -> None:
    # yC's loop: an instruction that starts inside the snippet takes its operand from after it
    assert translate(bytes.fromhex("90 04 10"), 2).ops == (Op("add", 0x10),)
    assert translate(bytes.fromhex("90 04 10"), 2).end == 3


@pytest.mark.parametrize("code", [
    "88 06",        # mov [esi], al: a memory write
    "aa",           # stosb
    "e8 00 00 00 00",  # call
    "ff d0",        # call eax
    "c3",           # ret
    "eb fe",        # a jump back onto itself
    "eb 80",        # a backward jump
    "eb 10",        # a jump out of the snippet
    "74 02",        # a conditional jump
    "e2 fc",        # loop
    "02 c3",        # add al, bl: another register
    "32 c0",        # xor al, al (not a whitelisted form)
    "0a c1",        # or al, cl: changes AL, not filler
    "fe c1",        # inc cl: changes the counter
    "c0 c1 03",     # rol cl, 3
    "d2 c1",        # rol cl, cl
    "f6 e0",        # mul al
    "cd 80",        # int
    "0f 0b",        # ud2
    "04",           # cut short
    "c0 c0",        # cut short
    "eb",           # cut short
])
def test_refused(code: str) -> None:
    raw = bytes.fromhex(code)
    with pytest.raises(SnippetError):
        translate(raw, len(raw))


def test_refused_inside_a_valid_snippet_and_bounds() -> None:
    bad = bytearray(PESPIN_POLY1)
    bad[0x16:0x18] = b"\x88\x06"  # mov [esi], al in place of sub al, 0xed
    with pytest.raises(SnippetError, match="whitelist"):
        translate(bad, 0x24)
    with pytest.raises(SnippetError):
        translate(b"\x90", 2)
    program = translate(PESPIN_POLY1, 0x24)
    with pytest.raises(SnippetError):
        apply(program, bytearray(10), 5, 6, 6)
    with pytest.raises(SnippetError):
        apply(program, bytearray(10), -1, 2, 2)


def test_random_snippets_never_crash() -> None:
    rng = random.Random(9)
    for _ in range(3000):
        code = rng.randbytes(rng.randrange(0, 0x30))
        try:
            program = translate(code, rng.randrange(0, len(code) + 1))
        except SnippetError:
            continue
        assert 0 <= program.run(rng.randrange(256), rng.randrange(256)) < 256
