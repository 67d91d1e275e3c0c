"""The unpacker interface: one object in, child objects out.

An unpacker plug-in recognises a container type and yields its members as :class:`ChildObject`
values, each with its path inside the container (``mail.eml!invoice.zip!doc.docm``).  The engine
feeds children back through itself.  Plug-ins stream and honour :class:`UnpackLimits`; a limit that
is reached is reported as data (``LimitExceeded``), never as a crash.  Plug-ins live beside this
module (``compressed.py``, ``archive.py``, ...) and register themselves when :func:`load_plugins` imports
them.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

MiB = 1024 * 1024


@dataclass(frozen=True, slots=True)
class UnpackLimits:
    """ClamAV's names and defaults."""

    max_files: int = 10_000
    max_recursion: int = 17
    max_scansize: int = 400 * MiB
    max_filesize: int = 100 * MiB
    # Bastion's own bound (ClamAV has none): a member may not decompress to more than max_ratio times
    # its compressed size, once it is larger than min_ratio_bytes
    max_ratio: int = 250
    min_ratio_bytes: int = 1 * MiB


@dataclass(frozen=True, slots=True)
class ChildObject:
    """One member of a container: its bytes, its name inside the parent and its full path."""

    data: bytes
    name: str
    container_path: str


@dataclass(frozen=True, slots=True)
class LimitExceeded:
    """Yielded instead of a child when a limit stops the unpacking (e.g. ``max-files``)."""

    limit: str
    detail: str


@runtime_checkable
class Unpacker(Protocol):
    """A container plug-in."""

    #: ClamAV type names this plug-in opens, e.g. ``{"CL_TYPE_ZIP"}``
    handles: frozenset[str]
    #: whether its children are one level of recursion deeper (a compression layer is not)
    counts_as_level: bool

    def children(self, data: bytes | memoryview, container_path: str,
                 limits: UnpackLimits) -> Iterator[ChildObject | LimitExceeded]:
        """Yield the members of ``data``; never raise for malformed input."""
        ...


_REGISTRY: list[Unpacker] = []


def register(unpacker: Unpacker) -> None:
    """Make a plug-in available to the engine."""
    _REGISTRY.append(unpacker)


_LOADED = False
_LOAD_LOCK = threading.Lock()


def load_plugins() -> None:
    """Import the plug-in modules (each registers itself); cheap after the first call.

    Thread-safe: scanning threads start together, and one that saw a half-filled registry would
    silently skip unpacking (found by the archive benchmark and a .cdb test, both with -j 2)."""
    global _LOADED
    if _LOADED:
        return
    with _LOAD_LOCK:
        if _LOADED:
            return
        from bastion.unpack import archive, compressed, mail  # noqa: F401 - imported for their registration

        _LOADED = True


def unpacker_for(file_type: str) -> Unpacker | None:
    load_plugins()
    for unpacker in _REGISTRY:
        if file_type in unpacker.handles:
            return unpacker
    return None
