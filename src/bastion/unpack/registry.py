"""Which unpacker opens which file type: imports the plug-in modules (each registers itself in
``base.py``) once, under a lock, and answers lookups.  The engine asks only this module."""

from __future__ import annotations

import threading

from bastion.unpack.base import Unpacker, registered

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
        from bastion.unpack import archive, binhex, chm, compressed, html, mail, ole2, pdf, rtf, szdd, tnef  # noqa: F401 - for their registration

        _LOADED = True


def unpacker_for(file_type: str) -> Unpacker | None:
    load_plugins()
    for unpacker in registered():
        if file_type in unpacker.handles:
            return unpacker
    return None
