"""File typing by magic bytes, with ClamAV's type names, and the target types each type admits.

This is the built-in subset ClamAV calls ``filetypes_int.h``; a database's ``.ftm`` entries refine it
(:class:`FileTyper`).  Typing looks only at the first bytes of the object.
"""

from __future__ import annotations

from collections.abc import Sequence

from bastion.signatures.model import FileTypeMagic

TEXT_PROBE = 1024
# Bytes that make an object binary, as in file(1)'s text test that ClamAV's typing follows: most C0
# controls.  High bytes (UTF-8, Latin-1) and BEL/BS/TAB/LF/VT/FF/CR/ESC/DEL keep it text.
_BINARY_BYTES = bytes([*range(0x00, 0x07), *range(0x0E, 0x1B), *range(0x1C, 0x20)])
_HTML_MARKERS = (b"<html", b"<body", b"<script", b"<head", b"<!doctype html", b"<iframe", b"<meta",
                 b"<a href", b"<form", b"<title", b"<img", b"<div", b"<style")
_MAIL_MARKERS = (b"from ", b"received: ", b"return-path: ", b"delivered-to: ", b"x-mailer: ",
                 b"mime-version: ", b"message-id: ")
# Headers a message may start with, that plain text may start with too: mail only if another header
# line follows
_MAIL_FIRST = (b"from: ", b"to: ", b"subject: ", b"date: ")
_MAIL_MORE = (b"\nfrom: ", b"\nto: ", b"\nsubject: ", b"\nmime-version: ", b"\ncontent-type: ", b"\nmessage-id: ")

# Containers and compression layers by their leading bytes (ClamAV's type names)
_CONTAINER_MAGIC: tuple[tuple[bytes, str], ...] = (
    (b"\x1f\x8b", "CL_TYPE_GZ"),
    (b"BZh", "CL_TYPE_BZ"),
    (b"\xfd7zXZ\x00", "CL_TYPE_XZ"),
    (b"7z\xbc\xaf\x27\x1c", "CL_TYPE_7Z"),
    (b"Rar!\x1a\x07", "CL_TYPE_RAR"),
    (b"MSCF\x00\x00\x00\x00", "CL_TYPE_MSCAB"),
    (b"070701", "CL_TYPE_CPIO_NEWC"),
    (b"070702", "CL_TYPE_CPIO_CRC"),
    (b"070707", "CL_TYPE_CPIO_ODC"),
    (b"\xc7\x71", "CL_TYPE_CPIO_OLD"),
    (b"\x71\xc7", "CL_TYPE_CPIO_OLD"),
    (b"xar!", "CL_TYPE_XAR"),
    (b"SZDD\x88\xf0\x27\x33", "CL_TYPE_MSSZDD"),
    (b"(This file must be converted with BinHex", "CL_TYPE_BINHEX"),
    (b"{\\rtf", "CL_TYPE_RTF"),
    (b"\x78\x9f\x3e\x22", "CL_TYPE_TNEF"),
    (b"\x60\xea", "CL_TYPE_ARJ"),
    (b"ITSF", "CL_TYPE_MSCHM"),
)
# Symbian SIS (pre-9): ClamAV finds the third UID within bytes 8..23 (filetypes_int.h "1:8,12:19040010")
_SIS_UID3 = b"\x19\x04\x00\x10"

# target type -> the ClamAV types a signature with that target may match (libclamav matcher.h)
TARGET_TYPES: dict[int, frozenset[str]] = {
    1: frozenset({"CL_TYPE_MSEXE"}),
    2: frozenset({"CL_TYPE_MSOLE2"}),
    3: frozenset({"CL_TYPE_HTML"}),
    4: frozenset({"CL_TYPE_MAIL"}),
    5: frozenset({"CL_TYPE_GRAPHICS", "CL_TYPE_GIF", "CL_TYPE_PNG", "CL_TYPE_JPEG", "CL_TYPE_TIFF"}),
    6: frozenset({"CL_TYPE_ELF"}),
    7: frozenset({"CL_TYPE_TEXT_ASCII"}),
    9: frozenset({"CL_TYPE_MACHO", "CL_TYPE_MACHO_UNIBIN"}),
    10: frozenset({"CL_TYPE_PDF"}),
    11: frozenset({"CL_TYPE_SWF"}),
    12: frozenset({"CL_TYPE_JAVA"}),
    13: frozenset({"CL_TYPE_INTERNAL"}),
    14: frozenset({"CL_TYPE_OTHER"}),
}


def target_matches(target: int, file_type: str) -> bool:
    if target == 0:
        return True
    return file_type in TARGET_TYPES.get(target, frozenset())


def is_text(head: bytes | memoryview) -> bool:
    probe = bytes(head[:TEXT_PROBE])
    return bool(probe) and len(probe.translate(None, _BINARY_BYTES)) == len(probe)


def detect_type(data: bytes | memoryview) -> str:
    """The ClamAV type name of an object from its first bytes."""
    head = bytes(data[:TEXT_PROBE])
    if head.startswith(b"MZ"):
        return "CL_TYPE_MSEXE"
    if head.startswith(b"\x7fELF"):
        return "CL_TYPE_ELF"
    if head[:4] in (b"\xfe\xed\xfa\xce", b"\xfe\xed\xfa\xcf", b"\xce\xfa\xed\xfe", b"\xcf\xfa\xed\xfe"):
        return "CL_TYPE_MACHO"
    if head.startswith(b"\xca\xfe\xba\xbe") and len(head) >= 8:
        # Java classes and Mach-O universal binaries share this magic: a small arch count means Mach-O
        return "CL_TYPE_MACHO_UNIBIN" if int.from_bytes(head[4:8], "big") < 30 else "CL_TYPE_JAVA"
    if head.startswith(b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1"):
        return "CL_TYPE_MSOLE2"
    if b"%PDF-" in head:
        return "CL_TYPE_PDF"
    if head.startswith((b"GIF87a", b"GIF89a")):
        return "CL_TYPE_GIF"
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return "CL_TYPE_PNG"
    if head.startswith(b"\xff\xd8\xff"):
        return "CL_TYPE_JPEG"
    if head.startswith((b"II*\x00", b"MM\x00*")):
        return "CL_TYPE_TIFF"
    if head.startswith((b"FWS", b"CWS", b"ZWS")):
        return "CL_TYPE_SWF"
    if head.startswith((b"PK\x03\x04", b"PK\x05\x06")):
        return "CL_TYPE_ZIP"
    for magic, name in _CONTAINER_MAGIC:
        if head.startswith(magic):
            return name
    if _SIS_UID3 in head[8:24]:
        return "CL_TYPE_SIS"
    if head[257:262] == b"ustar":
        return "CL_TYPE_POSIX_TAR"
    if is_text(head):
        lower = head.lower()
        if any(m in lower for m in _HTML_MARKERS):
            return "CL_TYPE_HTML"
        if lower.startswith(_MAIL_MARKERS) or (lower.startswith(_MAIL_FIRST) and any(m in lower for m in _MAIL_MORE)):
            return "CL_TYPE_MAIL"
        return "CL_TYPE_TEXT_ASCII"
    return "CL_TYPE_BINARY_DATA"


class FileTyper:
    """Built-in typing refined by a database's ``.ftm`` entries (magictype 0): the first entry whose
    bytes sit at its offset wins.  Its previous type (``rtype``) is not checked when typing a whole
    object: clamscan 1.4.6 retypes a binary file with an entry for ``CL_TYPE_TEXT_ASCII`` too
    (tests/test_formats_parity.py)."""

    def __init__(self, magics: Sequence[FileTypeMagic]) -> None:
        self.magics = [m for m in magics if m.kind == 0]

    def __call__(self, head: bytes | memoryview) -> str:
        if self.magics:
            probe = bytes(head[:TEXT_PROBE])
            for m in self.magics:
                if probe.startswith(m.magic, m.offset):
                    return m.ftype
        return detect_type(head)


# The normalized view of an object and the target type matched against it, by object type.
NORMALIZED_TARGET = {"CL_TYPE_TEXT_ASCII": 7, "CL_TYPE_HTML": 3}
