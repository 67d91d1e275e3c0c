"""The unpacker interface: one object in, child objects out.

An unpacker plug-in recognises a container type and yields its members as :class:`ChildObject`
values, each with its path inside the container (``mail.eml!invoice.zip!doc.docm``).  The engine
feeds children back through itself.  Plug-ins stream and honour :class:`UnpackLimits`; a limit that
is reached is reported as data (``LimitExceeded``), never as a crash.  Plug-ins live beside this
module (``compressed.py``, ``archive.py``, ...) and register themselves when ``registry.py`` imports
them.
"""

from __future__ import annotations

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

    def growth_cap(self, packed_size: int) -> int:
        """How many bytes one member packed in ``packed_size`` bytes may decompress to before the
        ratio bound stops it."""
        return max(self.min_ratio_bytes, self.max_ratio * packed_size)

    def growth_problem(self, name: str, size: int, ratio_cap: int) -> LimitExceeded | None:
        """Checked while a member is decompressed: None while ``size`` bytes are within
        ``max_filesize`` and ``ratio_cap`` (from :meth:`growth_cap`), else the limit it broke."""
        if size > self.max_filesize:
            return LimitExceeded("max-filesize", f"{name}: larger than {self.max_filesize} bytes")
        if size > ratio_cap:
            return LimitExceeded("max-ratio", f"{name}: compression ratio above {self.max_ratio}")
        return None


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


def find_all(data: bytes, needle: bytes, start: int = 0) -> Iterator[int]:
    """Every offset of ``needle`` in ``data`` from ``start`` on, in order.  Lazy: callers that look
    for signatures inside hostile objects take only as many as their bound allows."""
    at = data.find(needle, start)
    while at >= 0:
        yield at
        at = data.find(needle, at + 1)


def as_bytes(data: bytes | memoryview) -> bytes:
    """``data`` as bytes (for ``find`` and slicing), without copying a view of a whole bytes object
    (the engine's read-back of a large file, which several plug-ins look at in turn)."""
    if isinstance(data, bytes):
        return data
    if isinstance(data.obj, bytes) and data.contiguous and len(data) == len(data.obj):
        return data.obj
    return bytes(data)


def checked_member(out: bytes, problem: str | None, declared_size: int, crc: int, name: str,
                   container_path: str) -> Iterator[ChildObject | LimitExceeded]:
    """The end of a decoded member whose header declares its size and CRC-32 (zip, ARJ): a size or
    CRC that differs is reported as "broken" (after ``problem``, a damage the decoder met), and
    whatever decoded is still handed over to be scanned."""
    import zlib

    if problem is None and len(out) != declared_size:
        problem = f"decoded to {len(out)} bytes, the header says {declared_size}"
    if problem is None and zlib.crc32(out) != crc:
        problem = "CRC mismatch"
    if problem is not None:
        yield LimitExceeded("broken", f"{name}: {problem}")
    if out or problem is None:
        yield ChildObject(out, name, f"{container_path}!{name}")


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
    """Make a plug-in available to the engine (each plug-in module calls this when imported)."""
    _REGISTRY.append(unpacker)


def registered() -> list[Unpacker]:
    return list(_REGISTRY)
