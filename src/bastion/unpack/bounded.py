"""Decompression in bounded steps, for the installer formats (NSIS, InstallShield) whose members are
deflate or LZMA streams held in memory.

:func:`pull` hands out a decompressor's output a step at a time, so the caller can stop at a size
limit having produced at most one step more; :func:`decompress_capped` gathers one member's output up
to a cap.  A corrupt stream ends the output where the damage starts (:class:`DecodeError` carries what
decoded before it).
"""

from __future__ import annotations

import lzma
import zlib
from collections.abc import Iterator
from typing import Protocol

STEP = 256 * 1024


class Decompressor(Protocol):
    """A zlib, bz2 or lzma decompression object."""

    eof: bool

    def decompress(self, data: bytes, max_length: int = ...) -> bytes: ...


class DecodeError(ValueError):
    """The stream is damaged; ``partial`` holds the output decoded before the damage."""

    def __init__(self, message: str, partial: bytes = b"") -> None:
        super().__init__(message)
        self.partial = partial


def raw_deflate() -> Decompressor:
    """A decompressor for deflate data without zlib's header (NSIS, InstallShield cabinets)."""
    return zlib.decompressobj(-zlib.MAX_WBITS)


def lzma_props(props: bytes) -> Decompressor:
    """A raw LZMA1 decompressor from the 5-byte properties that precede the data (NSIS): one byte
    ``(pb * 5 + lp) * 9 + lc``, then the dictionary size (u32 little-endian).  Raises ValueError for
    properties liblzma does not accept."""
    if len(props) < 5 or props[0] >= 9 * 5 * 5:
        raise ValueError("bad LZMA properties")
    value = props[0]
    lc, lp, pb = value % 9, (value // 9) % 5, value // 45
    dict_size = max(4096, int.from_bytes(props[1:5], "little"))
    if lc + lp > 4:
        raise ValueError("unsupported LZMA properties")
    # a dictionary larger than what liblzma accepts is clipped: it only bounds back-references
    dict_size = min(dict_size, 1536 * 1024 * 1024)
    try:
        return lzma.LZMADecompressor(lzma.FORMAT_RAW, filters=[
            {"id": lzma.FILTER_LZMA1, "dict_size": dict_size, "lc": lc, "lp": lp, "pb": pb}])
    except lzma.LZMAError as exc:
        raise ValueError(f"LZMA properties: {exc}") from exc


def pull(dec: Decompressor, data: bytes | memoryview, step: int = STEP, final: bool = True) -> Iterator[bytes]:
    """The output of ``dec`` on ``data``, at most ``step`` bytes at a time; ``final`` when it is the
    last of the input (else zlib may keep a few bytes for the next call).

    Raises :class:`DecodeError` (``partial`` empty: the caller has the earlier steps) when the stream
    is damaged.  Ends at the stream's end, or when the input is used up (a truncated stream)."""
    is_zlib = hasattr(dec, "unconsumed_tail")
    try:
        out = dec.decompress(bytes(data), step)
        while True:
            if out:
                yield out
            if dec.eof:
                return
            if is_zlib:
                tail = dec.unconsumed_tail  # type: ignore[attr-defined]
                if not tail:  # input used up: what zlib still holds (at most one match) and the end
                    rest = dec.flush() if final else b""  # type: ignore[attr-defined]
                    if rest:
                        yield rest
                    return
                before = len(tail)
                out = dec.decompress(tail, step)
                if not out and len(dec.unconsumed_tail) >= before:  # type: ignore[attr-defined]
                    return  # no progress: nothing more will come
            else:
                if dec.needs_input:  # type: ignore[attr-defined]
                    return
                out = dec.decompress(b"", step)
                if not out and not dec.eof and dec.needs_input:  # type: ignore[attr-defined]
                    return
    except (zlib.error, lzma.LZMAError, OSError, EOFError) as exc:
        raise DecodeError(str(exc)) from None


def decompress_capped(dec: Decompressor, data: bytes | memoryview, cap: int) -> tuple[bytes, bool]:
    """Up to ``cap`` bytes of ``dec``'s output on ``data``; True as well when there was more.

    Raises :class:`DecodeError` with the output decoded before the damage."""
    out = bytearray()
    try:
        for chunk in pull(dec, data, min(STEP, cap + 1)):
            out += chunk
            if len(out) > cap:
                return bytes(out[:cap]), True
    except DecodeError as exc:
        raise DecodeError(str(exc), bytes(out)) from None
    return bytes(out), False
