"""Resolving a signature offset (``*``, ``n``, ``EOF-n``, ``EP+n``, ``Sx+n``, ``SL+n``, ``SEx``, with a
maxshift) to the window of start positions it allows in one object.  Shared by body signatures
(engine/scanner.py) and logical subsignatures (engine/logical.py)."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from bastion.signatures.offsets import EXECUTABLE_ANCHORS, Anchor, Offset

if TYPE_CHECKING:
    from bastion.formats.executable import ExecutableInfo


def resolve_window(offset: Offset, size: int, exe: Callable[[], ExecutableInfo | None]) -> tuple[int, int] | None:
    """First and last allowed start offset of a match in an object of ``size`` bytes, or None when the
    offset cannot apply to it.  ClamAV's semantics (checked against clamscan 1.4.6): an offset before
    the start never matches, whatever the maxshift; EP/section offsets need the executable's headers;
    ``VI`` (PE version info) is not parsed yet and never matches (README)."""
    anchor = offset.anchor
    if anchor is Anchor.ANY:
        return 0, size
    if anchor is Anchor.ABSOLUTE:
        lo = offset.value
    elif anchor is Anchor.EOF:
        lo = size - offset.value
    elif anchor in EXECUTABLE_ANCHORS:
        info = exe()
        if info is None:
            return None
        if anchor is Anchor.ENTRY_POINT:
            if info.entry_point is None:
                return None
            lo = info.entry_point + offset.value
        elif not info.sections:
            return None
        elif anchor is Anchor.LAST_SECTION:
            lo = info.sections[-1].raw_offset + offset.value
        elif offset.section >= len(info.sections):
            return None
        elif anchor is Anchor.SECTION:
            lo = info.sections[offset.section].raw_offset + offset.value
        else:  # SECTION_ENTIRE
            sec = info.sections[offset.section]
            if sec.raw_offset < 0 or sec.raw_offset >= size:
                return None
            return sec.raw_offset, sec.raw_offset + sec.raw_size + offset.maxshift
    else:  # VI: PE version info is not parsed yet, never matches (README)
        return None
    if lo < 0 or lo >= size:
        return None
    return lo, lo + offset.maxshift
