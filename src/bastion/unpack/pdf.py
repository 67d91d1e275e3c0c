"""PDF: every stream, decoded (FlateDecode, ASCIIHexDecode, ASCII85Decode, RunLengthDecode, in the
order the /Filter names them), and the JavaScript held in ``/JS (...)`` or ``/JS <...>`` strings.

Children: ``doc.pdf!obj15`` (a stream: embedded files, page contents, fonts, object streams) and
``doc.pdf!obj7.js`` (a JavaScript string).  Objects are found by their ``N G obj`` headers, so a
damaged cross-reference table does not hide anything; a stream's /Length is used when it is direct
and fits, else the data runs to ``endstream``.  Limits: ``max_files`` objects, ``max_filesize`` per
decoded stream, the ratio bound on every inflation; a filter Bastion does not decode (LZW, image
codecs) yields the stream as stored and says so.
"""

from __future__ import annotations

import base64
import binascii
import re
import zlib
from collections.abc import Iterator

from bastion.unpack.base import ChildObject, LimitExceeded, UnpackLimits, register

_OBJ = re.compile(rb"(\d{1,10})\s+(\d{1,5})\s+obj\b")
_STREAM = re.compile(rb"\bstream\r?\n|\bstream\r")
_FILTER = re.compile(rb"/Filter\s*(\[[^\]]*\]|/[A-Za-z0-9]+)")
_LENGTH = re.compile(rb"/Length\s+(\d{1,10})(?!\s+\d+\s+R)")
_JS = re.compile(rb"/JS\s*([(<])")
_NAMES = {b"/FlateDecode": "flate", b"/Fl": "flate", b"/ASCIIHexDecode": "hex", b"/AHx": "hex",
          b"/ASCII85Decode": "a85", b"/A85": "a85", b"/RunLengthDecode": "rl", b"/RL": "rl"}


class _Unsupported(Exception):
    pass


def _inflate(data: bytes, cap: int) -> bytes:
    """Inflate up to ``cap + 1`` bytes; a stream damaged part way keeps what inflated before the damage
    (a truncated one simply ends early)."""
    dec = zlib.decompressobj()
    out = bytearray()
    for at in range(0, len(data), 1 << 16):
        try:
            out += dec.decompress(data[at:at + (1 << 16)], cap + 1 - len(out))
        except zlib.error:
            break
        if len(out) > cap or dec.eof:
            break
    return bytes(out)


def _run_length(data: bytes, cap: int) -> bytes:
    out = bytearray()
    i = 0
    while i < len(data) and len(out) <= cap:
        n = data[i]
        if n == 128:
            break
        if n < 128:
            out += data[i + 1:i + 2 + n]
            i += n + 2
        else:
            out += data[i + 1:i + 2] * (257 - n)
            i += 2
    return bytes(out)


def decode(data: bytes, filters: list[str], cap: int) -> bytes:
    for f in filters:
        if f == "flate":
            data = _inflate(data, cap)
        elif f == "hex":
            text = re.sub(rb"\s", b"", data).split(b">")[0]
            data = binascii.unhexlify(text + (b"0" if len(text) % 2 else b""))
        elif f == "a85":
            text = re.sub(rb"\s", b"", data)
            text = text[2:] if text.startswith(b"<~") else text
            data = base64.a85decode(text.split(b"~>")[0] + b"~>", adobe=True) if text else b""
        elif f == "rl":
            data = _run_length(data, cap)
        else:
            raise _Unsupported(f)
        if len(data) > cap:
            return data[:cap + 1]
    return data


def literal_string(data: bytes, start: int) -> bytes:
    """A PDF literal string whose ``(`` is at ``start``: balanced parentheses, escapes decoded."""
    out = bytearray()
    depth = 0
    i = start
    while i < len(data):
        c = data[i]
        if c == 0x5C and i + 1 < len(data):  # backslash
            n = data[i + 1]
            simple = {0x6E: 10, 0x72: 13, 0x74: 9, 0x62: 8, 0x66: 12, 0x28: 0x28, 0x29: 0x29, 0x5C: 0x5C}
            if n in simple:
                out.append(simple[n])
                i += 2
            elif 0x30 <= n <= 0x37:
                digits = re.match(rb"[0-7]{1,3}", data[i + 1:i + 4])
                assert digits is not None
                out.append(int(digits.group(0), 8) & 0xFF)
                i += 1 + len(digits.group(0))
            elif n in (10, 13):  # a line continuation
                i += 3 if data[i + 1:i + 3] == b"\r\n" else 2
            else:
                out.append(n)
                i += 2
            continue
        if c == 0x28:
            depth += 1
            if depth > 1:
                out.append(c)
        elif c == 0x29:
            depth -= 1
            if depth == 0:
                return bytes(out)
            out.append(c)
        else:
            out.append(c)
        i += 1
    return bytes(out)


def hex_string(data: bytes, start: int) -> bytes:
    """A PDF hex string whose ``<`` is at ``start`` (white space ignored, an odd last digit padded)."""
    end = data.find(b">", start)
    digits = re.sub(rb"[^0-9A-Fa-f]", b"", data[start + 1:end if end >= 0 else len(data)])
    return binascii.unhexlify(digits + b"0" if len(digits) % 2 else digits)


class PdfUnpacker:
    handles = frozenset({"CL_TYPE_PDF"})
    counts_as_level = True

    def children(self, data: bytes | memoryview, container_path: str,
                 limits: UnpackLimits) -> Iterator[ChildObject | LimitExceeded]:
        raw = bytes(data)
        cap = limits.max_filesize
        headers = list(_OBJ.finditer(raw))
        if len(headers) > limits.max_files:
            yield LimitExceeded("max-files", f"more than {limits.max_files} PDF objects")
            headers = headers[:limits.max_files]
        for n, m in enumerate(headers):
            number = int(m.group(1))
            end = headers[n + 1].start() if n + 1 < len(headers) else len(raw)
            body = raw[m.end():end]
            name = f"obj{number}"
            stream = _STREAM.search(body)
            head = body[:stream.start()] if stream else body
            for js in _JS.finditer(head):
                at = js.start(1)
                text = literal_string(head, at) if head[at:at + 1] == b"(" else hex_string(head, at)
                if text:
                    yield ChildObject(text, f"{name}.js", f"{container_path}!{name}.js")
            if stream is None:
                continue
            start = stream.end()
            length = _LENGTH.search(head)
            stop = body.find(b"endstream", start)
            if length and start + int(length.group(1)) <= len(body):
                content = body[start:start + int(length.group(1))]
            else:
                content = body[start:stop if stop >= 0 else len(body)].rstrip(b"\r\n")
            filters_match = _FILTER.search(head)
            names = re.findall(rb"/[A-Za-z0-9]+", filters_match.group(1)) if filters_match else []
            try:
                decoded = decode(content, [_NAMES.get(f, f.decode("latin-1")) for f in names], cap)
            except _Unsupported as exc:
                yield LimitExceeded("unsupported", f"{name}: filter {exc} is not decoded; scanned as stored")
                decoded = content
            except (ValueError, binascii.Error) as exc:
                yield LimitExceeded("broken", f"{name}: {exc}")
                continue
            if len(decoded) > cap:
                yield LimitExceeded("max-filesize", f"{name}: decoded stream larger than {cap} bytes")
                continue
            if len(decoded) > limits.growth_cap(max(1, len(content))):
                yield LimitExceeded("max-ratio", f"{name}: compression ratio above {limits.max_ratio}")
                continue
            if decoded:
                yield ChildObject(decoded, name, f"{container_path}!{name}")


register(PdfUnpacker())
