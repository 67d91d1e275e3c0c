"""SZDD: the LZSS format of Microsoft's COMPRESS.EXE (files like ``SETUP.EX_``), decoded in Python.

Header: ``SZDD\\x88\\xf0\\x27\\x33``, mode ``A``, the last character of the original name, the original
size (u32 little-endian); then LZSS with a 4096-byte window filled with spaces, starting at 4080:
each flag byte announces eight items, a set bit a literal byte, a clear bit two bytes giving a
window position (12 bits) and a length (4 bits + 3).  Output stops at the announced size or at
``max_filesize``, whichever is smaller.
"""

from __future__ import annotations

from collections.abc import Iterator

from bastion.unpack.base import ChildObject, LimitExceeded, UnpackLimits, register

MAGIC = b"SZDD\x88\xf0\x27\x33"


class SzddUnpacker:
    handles = frozenset({"CL_TYPE_MSSZDD"})
    counts_as_level = True

    def children(self, data: bytes | memoryview, container_path: str,
                 limits: UnpackLimits) -> Iterator[ChildObject | LimitExceeded]:
        raw = bytes(data)
        if len(raw) < 14 or not raw.startswith(MAGIC):
            yield LimitExceeded("broken", "not an SZDD file")
            return
        size = int.from_bytes(raw[10:14], "little")
        cap = min(size, limits.max_filesize)
        window = bytearray(b" " * 4096)
        pos = 4096 - 16
        out = bytearray()
        i = 14
        while i < len(raw) and len(out) < cap:
            flags = raw[i]
            i += 1
            for bit in range(8):
                if i >= len(raw) or len(out) >= cap:
                    break
                if flags & (1 << bit):
                    byte = raw[i]
                    i += 1
                    out.append(byte)
                    window[pos] = byte
                    pos = (pos + 1) & 0xFFF
                else:
                    if i + 1 >= len(raw):
                        i = len(raw)
                        break
                    lo, hi = raw[i], raw[i + 1]
                    i += 2
                    src = lo | ((hi & 0xF0) << 4)
                    for k in range((hi & 0x0F) + 3):
                        byte = window[(src + k) & 0xFFF]
                        out.append(byte)
                        window[pos] = byte
                        pos = (pos + 1) & 0xFFF
        last = container_path.rsplit("!", 1)[-1].rsplit("/", 1)[-1]
        name = last[:-1] + chr(raw[9]) if last.endswith("_") and 32 < raw[9] < 127 else last + ".unpacked"
        if size > limits.max_filesize:
            yield LimitExceeded("max-filesize", f"SZDD data larger than {limits.max_filesize} bytes")
        if out:
            yield ChildObject(bytes(out[:cap]), name, f"{container_path}!{name}")


register(SzddUnpacker())
