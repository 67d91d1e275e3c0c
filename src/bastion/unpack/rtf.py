"""RTF: the objects embedded in a document (``{\\object ... {\\*\\objdata <hex>}}``).

Each ``\\objdata`` group is hex; decoded, it is an OLE1 object: version, format, class name, topic,
item, then the native data.  Children: ``doc.rtf!obj1`` (the native data: an OLE2 file for most
classes, opened in turn) and, for the ``Package`` class, ``doc.rtf!obj1!native`` (the file the
package carries: the usual way an executable is hidden in a document).
"""

from __future__ import annotations

import binascii
import re
from collections.abc import Iterator

from bastion.unpack.base import ChildObject, LimitExceeded, UnpackLimits, register
from bastion.unpack.ole2 import ole10_native

_OBJDATA = re.compile(rb"\\objdata\b")
_NOT_HEX = re.compile(rb"[^0-9A-Fa-f]")


def _prefixed(data: bytes, pos: int) -> tuple[bytes, int]:
    n = int.from_bytes(data[pos:pos + 4], "little")
    if n > len(data):
        raise ValueError("length past the end")
    return data[pos + 4:pos + 4 + n], pos + 4 + n


def ole1_object(data: bytes) -> tuple[str, bytes] | None:
    """(class name, native data) of an OLE1 embedded object, or None if it is not one."""
    try:
        if len(data) < 8 or int.from_bytes(data[4:8], "little") != 2:  # FormatID 2: embedded
            return None
        class_name, pos = _prefixed(data, 8)
        _topic, pos = _prefixed(data, pos)
        _item, pos = _prefixed(data, pos)
        native, _ = _prefixed(data, pos)
    except ValueError:
        return None
    return class_name.rstrip(b"\0").decode("latin-1"), native


class RtfUnpacker:
    handles = frozenset({"CL_TYPE_RTF"})
    counts_as_level = True

    def children(self, data: bytes | memoryview, container_path: str,
                 limits: UnpackLimits) -> Iterator[ChildObject | LimitExceeded]:
        raw = bytes(data)
        for n, m in enumerate(_OBJDATA.finditer(raw), 1):
            if n > limits.max_files:
                yield LimitExceeded("max-files", f"more than {limits.max_files} RTF objects")
                return
            end = raw.find(b"}", m.end())
            digits = _NOT_HEX.sub(b"", raw[m.end():end if end >= 0 else len(raw)])
            digits = digits[: 2 * (limits.max_filesize + 1)]
            blob = binascii.unhexlify(digits[: len(digits) // 2 * 2])
            name = f"obj{n}"
            parsed = ole1_object(blob)
            if parsed is None:
                if blob:
                    yield ChildObject(blob, name, f"{container_path}!{name}")
                continue
            class_name, native = parsed
            if native:
                yield ChildObject(native, name, f"{container_path}!{name}")
            if class_name == "Package" and (inner := ole10_native(native, sized=False)) is not None:
                yield ChildObject(inner, "native", f"{container_path}!{name}!native")


register(RtfUnpacker())
