"""BinHex 4.0 (``.hqx``), the classic Mac encoding often found in old mail: decoded in Python.

The text after ``(This file must be converted with BinHex 4.0)`` is enclosed in ``:``; its 64-symbol
alphabet gives 6 bits per character, then run-length coding (``0x90 n`` repeats the previous byte
n times; ``0x90 0`` is a literal 0x90).  The result holds a header (name, type, creator, flags, data
and resource fork lengths, CRC) followed by the data fork and the resource fork: both are children.
CRCs are not required to match (damaged files are still scanned, as clamscan does).
"""

from __future__ import annotations

from collections.abc import Iterator

from bastion.unpack.base import ChildObject, LimitExceeded, UnpackLimits, register

ALPHABET = b"!\"#$%&'()*+,-012345689@ABCDEFGHIJKLMNPQRSTUVXYZ[`abcdefhijklmpqr"
_VALUE = {c: i for i, c in enumerate(ALPHABET)}
MARKER = b"(This file must be converted with BinHex"


def _decode(text: bytes, cap: int) -> bytes:
    start = text.find(b":", text.find(MARKER) + len(MARKER) if MARKER in text else 0)
    if start < 0:
        return b""
    bits = 0
    nbits = 0
    packed = bytearray()
    for c in text[start + 1:]:
        if c == ord(":"):
            break
        v = _VALUE.get(c)
        if v is None:
            continue  # line breaks and spaces
        bits = (bits << 6) | v
        nbits += 6
        if nbits >= 8:
            nbits -= 8
            packed.append((bits >> nbits) & 0xFF)
        if len(packed) > 2 * cap + 1024:
            break
    out = bytearray()
    i = 0
    while i < len(packed) and len(out) <= cap:
        b = packed[i]
        if b == 0x90 and i + 1 < len(packed):
            n = packed[i + 1]
            i += 2
            if n == 0:
                out.append(0x90)
            elif out:
                out += bytes([out[-1]]) * min(n - 1, cap + 1 - len(out))
            continue
        out.append(b)
        i += 1
    return bytes(out)


class BinHexUnpacker:
    handles = frozenset({"CL_TYPE_BINHEX"})
    counts_as_level = True

    def children(self, data: bytes | memoryview, container_path: str,
                 limits: UnpackLimits) -> Iterator[ChildObject | LimitExceeded]:
        raw = _decode(bytes(data), 2 * limits.max_filesize + 1024)
        if len(raw) < 22:
            yield LimitExceeded("broken", "BinHex data too short")
            return
        name_len = raw[0]
        name = raw[1:1 + name_len].decode("latin-1").replace("!", "_").replace("/", "_") or "data"
        h = 1 + name_len + 1 + 4 + 4 + 2
        data_len = int.from_bytes(raw[h:h + 4], "big")
        rsrc_len = int.from_bytes(raw[h + 4:h + 8], "big")
        body = h + 8 + 2
        for label, start, length in ((name, body, data_len), (f"{name}.rsrc", body + data_len + 2, rsrc_len)):
            if length > limits.max_filesize:
                yield LimitExceeded("max-filesize", f"BinHex fork larger than {limits.max_filesize} bytes")
                continue
            fork = raw[start:start + length]
            if fork:
                yield ChildObject(fork, label, f"{container_path}!{label}")


register(BinHexUnpacker())
