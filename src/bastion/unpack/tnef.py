"""TNEF (``winmail.dat``, Outlook's Transport Neutral Encapsulation): the attachments it carries.

Layout: signature 0x223E9F78, a 16-bit key, then attributes (level u8, id u32, length u32, the data,
a 16-bit checksum).  ``attAttachTitle`` (0x00018010) names an attachment, ``attAttachData``
(0x0006800F) holds its bytes: children ``winmail.dat!report.exe``.
"""

from __future__ import annotations

from collections.abc import Iterator

from bastion.unpack.base import ChildObject, LimitExceeded, UnpackLimits, register

MAGIC = b"\x78\x9f\x3e\x22"
ATT_TITLE = 0x00018010
ATT_DATA = 0x0006800F


class TnefUnpacker:
    handles = frozenset({"CL_TYPE_TNEF"})
    counts_as_level = True

    def children(self, data: bytes | memoryview, container_path: str,
                 limits: UnpackLimits) -> Iterator[ChildObject | LimitExceeded]:
        raw = bytes(data)
        if not raw.startswith(MAGIC):
            yield LimitExceeded("broken", "not a TNEF stream")
            return
        pos, title, count = 6, "", 0
        while pos + 9 <= len(raw):
            attr = int.from_bytes(raw[pos + 1:pos + 5], "little")
            length = int.from_bytes(raw[pos + 5:pos + 9], "little")
            body = raw[pos + 9:pos + 9 + length]
            if len(body) < length:
                yield LimitExceeded("broken", f"TNEF attribute {attr:#x}: truncated")
                if attr != ATT_DATA:
                    return
            pos += 9 + length + 2
            if attr == ATT_TITLE:
                title = body.rstrip(b"\0").decode("latin-1").replace("/", "_") or ""
            elif attr == ATT_DATA:
                count += 1
                if count > limits.max_files:
                    yield LimitExceeded("max-files", f"more than {limits.max_files} TNEF attachments")
                    return
                if len(body) > limits.max_filesize:
                    yield LimitExceeded("max-filesize", f"attachment {count}: larger than {limits.max_filesize} bytes")
                    continue
                name = title or f"attachment{count}"
                yield ChildObject(body, name, f"{container_path}!{name}")
                title = ""


register(TnefUnpacker())
