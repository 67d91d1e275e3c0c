"""The import table hash of a PE file, as ClamAV's ``.imp`` signatures use it.

ClamAV hashes the import table the way pefile's "imphash" does: every imported function as
``dll.function``, the DLL name lower-cased without its ``.dll``/``.ocx``/``.sys`` extension, the
function name lower-cased (``ordN`` for an import by ordinal), joined with ``,``; an ``.imp`` line
carries the MD5 of that text and its length (``clamscan --debug`` prints ``Imphash: <md5>:<len>``;
checked on clamav-testfiles' clam.exe and crafted tables in tests/test_section_hash_parity.py).

Hostile input: every read is bounds-checked and the walk is capped (descriptors, thunks, name
length), so a malformed table costs bounded work and simply gives no hash.
"""

from __future__ import annotations

import struct

from bastion.formats.executable import ExecutableInfo

MAX_DESCRIPTORS = 4096
MAX_THUNKS = 65536
MAX_NAME = 512
_STRIPPED = (".dll", ".ocx", ".sys")


class _Bad(Exception):
    pass


def _u(fmt: str, data: memoryview, offset: int) -> tuple[int, ...]:
    size = struct.calcsize(fmt)
    if offset < 0 or offset + size > len(data):
        raise _Bad
    return struct.unpack_from(fmt, data, offset)


def _cstr(data: memoryview, offset: int) -> str:
    if offset < 0 or offset >= len(data):
        raise _Bad
    chunk = bytes(data[offset:offset + MAX_NAME])
    end = chunk.find(b"\0")
    if end < 0:
        raise _Bad
    return chunk[:end].decode("latin-1")


def import_text(data: bytes | memoryview, info: ExecutableInfo) -> str | None:
    """The ``dll.function,...`` text of a PE's import table, or None (no table, or a broken one)."""
    if info.kind != "pe" or not info.sections:
        return None
    buf = memoryview(data)
    try:
        pe = _u("<I", buf, 0x3C)[0]
        optional = pe + 24
        magic = _u("<H", buf, optional)[0]
        wide = magic == 0x20B
        directory = optional + (112 if wide else 96) + 8  # data directory 1: imports
        table_rva, table_size = _u("<II", buf, directory)
        if not table_rva or not table_size:
            return None

        def offset(rva: int) -> int:
            for sec in info.sections:
                if sec.virtual_address <= rva < sec.virtual_address + max(sec.virtual_size, sec.raw_size):
                    return rva - sec.virtual_address + sec.raw_offset
            raise _Bad

        items: list[str] = []
        at = offset(table_rva)
        # clamscan 1.4.6 reads only the descriptors the directory's Size covers, the last 20 bytes being
        # the terminator: a Size of 40 gives one DLL even when a second one follows
        descriptors = min(MAX_DESCRIPTORS, table_size // 20 - 1)
        thunk_fmt, thunk_size = ("<Q", 8) if wide else ("<I", 4)
        ordinal_bit = 1 << (63 if wide else 31)
        for _ in range(descriptors):
            lookup, _stamp, _chain, name_rva, address = _u("<IIIII", buf, at)
            if not (lookup or name_rva or address):
                break
            dll = _cstr(buf, offset(name_rva)).lower()
            for ext in _STRIPPED:
                if dll.endswith(ext):
                    dll = dll[: -len(ext)]
                    break
            thunk = offset(lookup or address)
            for _ in range(MAX_THUNKS):
                value = _u(thunk_fmt, buf, thunk)[0]
                if not value:
                    break
                if value & ordinal_bit:
                    function = f"ord{value & 0xFFFF}"
                else:
                    function = _cstr(buf, offset(value & 0x7FFF_FFFF) + 2).lower()
                items.append(f"{dll}.{function}")
                thunk += thunk_size
            at += 20
        return ",".join(items) if items else None
    except _Bad:
        return None
