"""OLE2 (Compound File Binary: .doc .xls .ppt .msi, vbaProject.bin inside OOXML): its streams, the
files embedded in them and the VBA macro source, read with ``olefile`` (a pure-Python reader: a
malformed file raises, it cannot crash the process).

Children, each named by its path inside the file (``doc.doc!ObjectPool/_1279313719/Ole10Native``):

* every stream, as stored (an MSI file's packed stream names unpacked: ``clam.msi!Data1.cab``, a
  cabinet, which the archive unpacker then opens);
* ``.../Ole10Native!native``: the file an OLE1 "Package" object carries (label, path, then the
  file's own bytes);
* ``PowerPoint Document!ExOleObjStg<n>``: embedded OLE objects of a PowerPoint file, inflated when
  stored compressed (an OLE2 file in turn);
* ``VBA/<module>``: each VBA module's source text, decompressed from its stream as the MS-OVBA
  specification describes (the ``dir`` stream lists the modules and where their source starts).

Limits: ``max_files`` streams, ``max_filesize`` per child, the ratio bound on every inflation.
"""

from __future__ import annotations

import io
import zlib
from collections.abc import Iterator

from bastion.unpack.base import ChildObject, LimitExceeded, UnpackLimits, register

MAGIC = b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1"


# MSI (Windows Installer) files are OLE2 files whose stream names are packed: each character in
# U+3800..U+47FF holds two characters of this alphabet (low six bits first), one in U+4800..U+483F
# holds one, and U+4840 marks a table ("!Media")
_MSI_ALPHABET = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz._"


def msi_stream_name(name: str) -> str:
    """An MSI stream name unpacked (``"\u410d\u4137..."`` -> ``"Data1.cab"``); other names unchanged."""
    out = []
    for ch in name:
        code = ord(ch)
        if 0x3800 <= code < 0x4800:
            code -= 0x3800
            out.append(_MSI_ALPHABET[code & 0x3F] + _MSI_ALPHABET[code >> 6])
        elif 0x4800 <= code < 0x4840:
            out.append(_MSI_ALPHABET[code - 0x4800])
        elif code == 0x4840:
            out.append("!")
        else:
            out.append(ch)
    return "".join(out)


class VbaError(ValueError):
    pass


def vba_decompress(data: bytes, limit: int) -> bytes:
    """MS-OVBA 2.4.1 "CompressedContainer" decompression, stopping at ``limit`` bytes."""
    if not data or data[0] != 1:
        raise VbaError("not a compressed VBA container")
    out = bytearray()
    pos = 1
    while pos + 2 <= len(data) and len(out) < limit:
        header = int.from_bytes(data[pos:pos + 2], "little")
        chunk_end = min(len(data), pos + (header & 0x0FFF) + 3)
        pos += 2
        chunk_start = len(out)
        if not header & 0x8000:  # stored chunk: 4096 raw bytes
            out += data[pos:pos + 4096]
            pos += 4096
            continue
        while pos < chunk_end and len(out) < limit:
            flags = data[pos]
            pos += 1
            for bit in range(8):
                if pos >= chunk_end:
                    break
                if not flags & (1 << bit):
                    out.append(data[pos])
                    pos += 1
                    continue
                if pos + 2 > chunk_end:
                    raise VbaError("truncated copy token")
                token = int.from_bytes(data[pos:pos + 2], "little")
                pos += 2
                bit_count = max((len(out) - chunk_start - 1).bit_length(), 4)
                length = (token & (0xFFFF >> bit_count)) + 3
                offset = (token >> (16 - bit_count)) + 1
                start = len(out) - offset
                if start < chunk_start:
                    raise VbaError("copy token points before its chunk")
                for k in range(length):  # may overlap what it writes: byte by byte
                    out.append(out[start + k])
        pos = max(pos, chunk_end)
    return bytes(out[:limit])


def vba_modules(dir_stream: bytes) -> list[tuple[str, str, int]]:
    """(module name, stream name, source offset) for each module listed in a decompressed ``dir``."""
    modules: list[tuple[str, str, int]] = []
    name = stream = ""
    offset = 0
    pos = 0
    while pos + 6 <= len(dir_stream):
        rec_id = int.from_bytes(dir_stream[pos:pos + 2], "little")
        size = int.from_bytes(dir_stream[pos + 2:pos + 6], "little")
        pos += 6
        if rec_id == 0x0009:  # PROJECTVERSION: its size field says 4, six bytes follow
            size = 6
        body = dir_stream[pos:pos + size]
        pos += size
        if rec_id == 0x0019:
            name = body.decode("latin-1")
        elif rec_id == 0x001A:
            stream = body.decode("latin-1")
        elif rec_id == 0x0031 and len(body) >= 4:
            offset = int.from_bytes(body[:4], "little")
        elif rec_id == 0x002B:  # module terminator
            modules.append((name, stream or name, offset))
            name = stream = ""
            offset = 0
    return modules


def ole10_native(data: bytes, sized: bool = True) -> bytes | None:
    """The file inside an OLE1 "Package" (``Ole10Native`` stream, which starts with its total size;
    ``sized=False`` for the native data of an RTF object, which does not), or None if it is not one."""
    try:
        pos = (4 if sized else 0) + 2                 # total size, flags
        pos = data.index(b"\0", pos) + 1              # label
        pos = data.index(b"\0", pos) + 1              # original path
        pos += 4                                      # two reserved words
        temp_len = int.from_bytes(data[pos:pos + 4], "little")
        pos += 4 + temp_len                           # temporary path
        size = int.from_bytes(data[pos:pos + 4], "little")
        pos += 4
    except ValueError:
        return None
    if size <= 0 or pos + size > len(data):
        return None
    return data[pos:pos + size]


def ppt_embedded(stream: bytes, limits: UnpackLimits) -> Iterator[bytes | LimitExceeded]:
    """The ExOleObjStg records (type 0x1011) of a "PowerPoint Document" stream, inflated if compressed."""
    todo = [(0, len(stream))]
    seen = 0
    while todo:
        pos, end = todo.pop()
        while pos + 8 <= end:
            ver_inst = int.from_bytes(stream[pos:pos + 2], "little")
            rec_type = int.from_bytes(stream[pos + 2:pos + 4], "little")
            rec_len = int.from_bytes(stream[pos + 4:pos + 8], "little")
            body_start, body_end = pos + 8, min(end, pos + 8 + rec_len)
            seen += 1
            if seen > 100_000:
                yield LimitExceeded("broken", "PowerPoint Document: too many records")
                return
            if ver_inst & 0x000F == 0x000F:  # a container record: look inside
                todo.append((body_start, body_end))
            elif rec_type == 0x1011:
                body = stream[body_start:body_end]
                if ver_inst >> 4 == 1 and len(body) > 4:  # compressed: u32 size, then zlib
                    dec = zlib.decompressobj()
                    try:
                        out = dec.decompress(body[4:], limits.max_filesize + 1)
                    except zlib.error as exc:
                        yield LimitExceeded("broken", f"ExOleObjStg: {exc}")
                        out = b""
                    if len(out) > limits.max_filesize:
                        yield LimitExceeded("max-filesize", "ExOleObjStg larger than max-filesize")
                    elif out:
                        yield out
                elif body:
                    yield body
            pos = body_start + rec_len


class Ole2Unpacker:
    handles = frozenset({"CL_TYPE_MSOLE2"})
    counts_as_level = True

    def children(self, data: bytes | memoryview, container_path: str,
                 limits: UnpackLimits) -> Iterator[ChildObject | LimitExceeded]:
        import olefile

        raw = bytes(data)
        try:
            ole = olefile.OleFileIO(io.BytesIO(raw))
            entries = ole.listdir(streams=True, storages=False)
        except Exception as exc:  # olefile raises many kinds for malformed files
            yield LimitExceeded("broken", f"OLE2: {exc}")
            return
        count = 0
        streams: dict[str, bytes] = {}
        for parts in entries:
            raw_name = "/".join(parts)
            # shown without the control characters OLE2 puts in front of some names ("\x01Ole10Native")
            # (MSI stream names unpacked, see msi_stream_name)
            name = "/".join(msi_stream_name(p.lstrip("".join(map(chr, range(1, 32))))) or p for p in parts)
            count += 1
            if count > limits.max_files:
                yield LimitExceeded("max-files", f"more than {limits.max_files} OLE2 streams")
                return
            try:
                size = ole.get_size(raw_name)
                if size > limits.max_filesize:
                    yield LimitExceeded("max-filesize", f"{name}: larger than {limits.max_filesize} bytes")
                    continue
                content = ole.openstream(raw_name).read(limits.max_filesize + 1)
            except Exception as exc:
                yield LimitExceeded("broken", f"OLE2 stream {name}: {exc}")
                continue
            streams[name] = content
            yield ChildObject(content, name, f"{container_path}!{name}")
            if name.rsplit("/", 1)[-1] == "Ole10Native" and (inner := ole10_native(content)) is not None:
                yield ChildObject(inner, "native", f"{container_path}!{name}!native")
            if name == "PowerPoint Document":
                for n, item in enumerate(ppt_embedded(content, limits)):
                    if isinstance(item, LimitExceeded):
                        yield item
                    else:
                        yield ChildObject(item, f"ExOleObjStg{n}", f"{container_path}!{name}!ExOleObjStg{n}")
        yield from self._vba(streams, container_path, limits)

    @staticmethod
    def _vba(streams: dict[str, bytes], container_path: str,
             limits: UnpackLimits) -> Iterator[ChildObject | LimitExceeded]:
        for dir_name in [n for n in streams if n.split("/")[-2:] == ["VBA", "dir"]]:
            base = dir_name[: -len("dir")]
            try:
                modules = vba_modules(vba_decompress(streams[dir_name], limits.max_filesize))
            except VbaError as exc:
                yield LimitExceeded("broken", f"{dir_name}: {exc}")
                continue
            for module, stream_name, offset in modules:
                stream = streams.get(base + stream_name)
                if stream is None or offset >= len(stream):
                    yield LimitExceeded("broken", f"VBA module {module}: no source stream")
                    continue
                try:
                    source = vba_decompress(stream[offset:], limits.max_filesize)
                except VbaError as exc:
                    yield LimitExceeded("broken", f"VBA module {module}: {exc}")
                    continue
                yield ChildObject(source, f"VBA/{module}", f"{container_path}!VBA/{module}")


register(Ole2Unpacker())
