"""Which unpacker opens which file type: imports the plug-in modules (each registers itself in
``base.py``) once, under a lock, and answers lookups.  The engine asks only this module.

Several plug-ins may open the same type (an executable holds an installer's files, and may also be
packed): the engine then gets one :class:`_Chain` that yields the children of each in turn."""

from __future__ import annotations

import importlib
import threading
from collections.abc import Iterator

from bastion.unpack.base import ChildObject, LimitExceeded, Unpacker, UnpackLimits, registered

# the plug-in modules beside this one
PLUGINS = ("archive", "arj", "autoit", "binhex", "chm", "compressed", "html", "mail", "ole2", "pdf", "pe_installers",
           "pe_packers", "rtf", "sis", "szdd", "tnef")
_LOADED = False
_LOAD_LOCK = threading.Lock()


def load_plugins() -> None:
    """Import the plug-in modules; cheap after the first call.

    Thread-safe: scanning threads start together, and one that saw a half-filled registry would
    silently skip unpacking (found by the archive benchmark and a .cdb test, both with -j 2)."""
    global _LOADED
    if _LOADED:
        return
    with _LOAD_LOCK:
        if _LOADED:
            return
        for module in PLUGINS:  # each registers itself when imported
            importlib.import_module(f"bastion.unpack.{module}")

        _LOADED = True


class _Chain:
    """The plug-ins that open one type, run one after the other on the same object.  Their children
    are one level deeper if any plug-in's are."""

    def __init__(self, members: list[Unpacker]) -> None:
        self.members = members
        self.handles = frozenset().union(*(m.handles for m in members))
        self.counts_as_level = any(m.counts_as_level for m in members)

    def children(self, data: bytes | memoryview, container_path: str,
                 limits: UnpackLimits) -> Iterator[ChildObject | LimitExceeded]:
        for member in self.members:
            yield from member.children(data, container_path, limits)


_BY_TYPE: dict[str, Unpacker | None] = {}


def unpacker_for(file_type: str) -> Unpacker | None:
    """The plug-in (or chain of plug-ins) that opens ``file_type``; looked up once per type."""
    try:
        return _BY_TYPE[file_type]
    except KeyError:
        pass
    load_plugins()
    members = [u for u in registered() if file_type in u.handles]
    found = _Chain(members) if len(members) > 1 else members[0] if members else None
    _BY_TYPE[file_type] = found  # a race only computes the same answer twice
    return found
