"""Byte-transform snippets of PESpin 1.1 and yoda's Crypter, read as data.

Project decision: Bastion never runs or emulates scanned code.  PESpin 1.1 and yoda's Crypter (yC)
encrypt data with a small snippet of x86 byte operations that the packer generates for each file;
ClamAV runs such a snippet on every byte with a small x86 interpreter.  Bastion instead reads the
snippet *as data*, as a program of a tiny closed language: a whitelist of instructions that
transform the data byte AL, and filler.  :func:`translate` turns the snippet into a list of
:class:`Op` once; :func:`apply` then applies that list to each byte of a buffer, bounded by the
data size.  Nothing here follows a general jump, touches memory or loops on the snippet's own
control flow; anything outside the whitelist refuses the file (:class:`SnippetError`, which the
packers report as "unsupported").

The whitelist (AL the data byte, CL the byte counter the packer keeps in ECX):

==================  =====================================================================
``04 ib``           add al, ib        ``02 c1``  add al, cl
``2c ib``           sub al, ib        ``2a c1``  sub al, cl
``34 ib``           xor al, ib        ``32 c1``  xor al, cl
``c0 c0 ib``        rol al, ib        ``d2 c0``  rol al, cl
``c0 c8 ib``        ror al, ib        ``d2 c8``  ror al, cl
``fe c0``           inc al            ``fe c8``  dec al
``f6 d0``           not al            ``f6 d8``  neg al
``90 f8 f9``        nop, clc, stc     ``0a c0``  or al, al (flags only)
``eb rel8``         a short jump forward (0 <= rel8 < 0x80) inside the snippet: the bytes it
                    skips are never read, as the processor never runs them
==================  =====================================================================

Rotations count modulo 8, as the processor's 8-bit rotations do.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache, reduce

KINDS = ("add", "sub", "xor", "rol", "ror", "neg")
_IDENTITY = bytes(range(256))


class SnippetError(ValueError):
    """The snippet is not a program of the whitelist (an instruction outside it, a backward jump,
    an instruction cut by the end of the data)."""


@dataclass(frozen=True, slots=True)
class Op:
    """One transform of the data byte: ``kind`` one of :data:`KINDS`; ``value`` its operand (0-255),
    or None for the byte counter CL.  inc/dec are ``add``/``sub`` 1, not is ``xor`` 0xff."""

    kind: str
    value: int | None


@dataclass(frozen=True, slots=True)
class Program:
    """A translated snippet: ``ops`` in order; ``end`` the offset in the snippet where the last
    instruction ended (its operands may run past the snippet's length, as the processor reads
    them)."""

    ops: tuple[Op, ...]
    end: int

    @property
    def uses_counter(self) -> bool:
        return any(op.value is None for op in self.ops)

    def table(self, counter: int) -> bytes:
        """The whole program for counter value ``counter`` as a 256-byte translation table."""
        return _program_table(self.ops, counter & 0xFF)

    def run(self, byte: int, counter: int) -> int:
        """The program on one byte (for tests and single values)."""
        return self.table(counter)[byte & 0xFF]


_IMM = {0x04: "add", 0x2C: "sub", 0x34: "xor"}
_WITH_CL = {0x02: "add", 0x2A: "sub", 0x32: "xor"}
_FILLER = frozenset({0x90, 0xF8, 0xF9})
_TWO_BYTE = {(0xFE, 0xC0): Op("add", 1), (0xFE, 0xC8): Op("sub", 1), (0xF6, 0xD0): Op("xor", 0xFF),
             (0xF6, 0xD8): Op("neg", 0), (0xD2, 0xC0): Op("rol", None), (0xD2, 0xC8): Op("ror", None)}
_ROTATE = {0xC0: "rol", 0xC8: "ror"}


def translate(code: bytes | bytearray, length: int) -> Program:
    """The whitelist program of the snippet's first ``length`` bytes of ``code`` (an instruction
    that starts before ``length`` may take its operands from the bytes after it, when ``code`` has
    them).  Raises :class:`SnippetError` for anything outside the whitelist."""
    if not 0 <= length <= len(code):
        raise SnippetError(f"snippet of {length} bytes, {len(code)} available")
    ops: list[Op] = []
    at = 0

    def operand(i: int) -> int:
        if at + i >= len(code):
            raise SnippetError(f"instruction at +{at:#x} is cut by the end of the data")
        return code[at + i]

    while at < length:
        opcode = code[at]
        if opcode in _FILLER:
            at += 1
        elif opcode in _IMM:
            ops.append(Op(_IMM[opcode], operand(1)))
            at += 2
        elif opcode in _WITH_CL and operand(1) == 0xC1:
            ops.append(Op(_WITH_CL[opcode], None))
            at += 2
        elif opcode == 0x0A and operand(1) == 0xC0:
            at += 2
        elif opcode == 0xC0 and operand(1) in _ROTATE:
            ops.append(Op(_ROTATE[code[at + 1]], operand(2) & 7))
            at += 3
        elif opcode in (0xFE, 0xF6, 0xD2) and (opcode, operand(1)) in _TWO_BYTE:
            ops.append(_TWO_BYTE[(opcode, code[at + 1])])
            at += 2
        elif opcode == 0xEB and operand(1) < 0x80:
            at += 2 + code[at + 1]
            if at > length:
                raise SnippetError(f"short jump out of the snippet (to +{at:#x})")
        else:
            shown = bytes(code[at:at + 3]).hex(" ")
            raise SnippetError(f"instruction outside the whitelist at +{at:#x}: {shown}")
    return Program(tuple(ops), at)


@lru_cache(maxsize=2048)
def _op_table(kind: str, value: int) -> bytes:
    """One operation with a fixed operand as a 256-byte translation table."""
    if kind == "add":
        return bytes((b + value) & 0xFF for b in range(256))
    if kind == "sub":
        return bytes((b - value) & 0xFF for b in range(256))
    if kind == "xor":
        return bytes(b ^ value for b in range(256))
    if kind == "neg":
        return bytes(-b & 0xFF for b in range(256))
    r = value & 7 if kind == "rol" else -value & 7
    return bytes(((b << r) | (b >> (8 - r))) & 0xFF for b in range(256))


@lru_cache(maxsize=512)
def _program_table(ops: tuple[Op, ...], counter: int) -> bytes:
    return reduce(lambda table, op: table.translate(
        _op_table(op.kind, counter if op.value is None else op.value)), ops, _IDENTITY)


def apply(program: Program, data: bytearray, start: int, length: int, counter: int) -> None:
    """Transform ``length`` bytes of ``data`` from ``start`` in place: byte i (from 0) with the
    counter CL at ``counter - i`` (mod 256), as the packers' loops count down.  The range must lie
    in ``data`` (:class:`SnippetError` otherwise)."""
    if start < 0 or length < 0 or start + length > len(data):
        raise SnippetError(f"{length} bytes at {start:#x} are outside the data ({len(data):#x})")
    if not length:
        return
    if not program.uses_counter:
        data[start:start + length] = data[start:start + length].translate(program.table(0))
        return
    stop = start + length
    for k in range(min(256, length)):  # the bytes that share a counter value are 256 apart
        piece = slice(start + k, stop, 256)
        data[piece] = data[piece].translate(program.table(counter - k))
