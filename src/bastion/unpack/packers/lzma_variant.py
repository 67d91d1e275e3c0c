"""The "LZMA variant" of MEW 11 SE and Upack, which is plain LZMA1 with packer-chosen parameters.

ClamAV decodes both with hand-translated copies of the packers' own range decoders (libclamav/mew.c:
``mew_lzma``, ``unupack399``).  Reading them shows nothing beyond LZMA1: 11-bit probabilities
moved by 1/32, the usual state machine (12 states, four rep distances, short rep, matched literals
after a match), 6-bit position slots by length, 4 align bits, the three-level length coder, and a
range coder primed from the stream's bytes 1-4 (byte 0 is ignored; Upack's stub keeps its stream
pointer one byte further on, so its data starts at what would be byte 1).  Only the parameters and
where the probability array lives differ:

* MEW: lc=4, lp=0, pb=2 (literal context ``prev >> 4``, is-match indexed by ``pos & 3``);
* Upack: lc = 8 - the stub's ``shr ebp, n`` count, lp=0, pb=0 (is-match by state alone).

So the streams are decoded by liblzma (Python's :mod:`lzma`, ``FORMAT_RAW`` with an explicit
``FILTER_LZMA1``) - chosen by trying it: clam-upack.exe decodes to the bytes ClamAV 1.4.6 rebuilds,
at C speed, where a Python range decoder would manage a few hundred KB/s.  liblzma refuses lc + lp
> 4, which Upack allows (a shift of 2 or 3); such a file is reported, not decoded.

The output is bounded while decoding (``max_length``), so a stream that claims more than its image
holds cannot grow past it; streams carry no end marker, decoding stops at the declared size.
"""

from __future__ import annotations

import lzma

MAX_LC_LP = 4  # liblzma's bound on lc + lp for LZMA1


def decode(data: bytes | bytearray | memoryview, size: int, lc: int, lp: int, pb: int,
           primed: bool = True, end_marker: bool = False) -> bytes:
    """``size`` bytes decoded from the LZMA1 stream ``data`` (``primed``: ``data`` starts with the
    range coder's ignored byte 0; else it starts at byte 1, as Upack's does).  Raises ValueError
    when the stream is damaged, ends before ``size`` bytes (unless ``end_marker``: the stream may
    stop early with LZMA's end marker, as MEW's decoder allows), or uses parameters liblzma lacks."""
    if size <= 0:
        return b""
    if lc + lp > MAX_LC_LP or not 0 <= pb <= 4 or min(lc, lp) < 0:
        raise ValueError(f"LZMA parameters lc={lc} lp={lp} pb={pb} are not supported")
    dict_size = max(4096, min(size, 1 << 30))
    decoder = lzma.LZMADecompressor(lzma.FORMAT_RAW, filters=[
        {"id": lzma.FILTER_LZMA1, "lc": lc, "lp": lp, "pb": pb, "dict_size": dict_size}])
    stream = b"\0" + bytes(data[1:] if primed else data)  # liblzma wants byte 0 to be 0
    try:
        out = decoder.decompress(stream, max_length=size)
    except lzma.LZMAError as exc:
        raise ValueError(f"damaged LZMA data: {exc}") from None
    if len(out) < size and not (end_marker and decoder.eof):
        raise ValueError(f"LZMA data ends after {len(out)} of {size} bytes")
    return out
