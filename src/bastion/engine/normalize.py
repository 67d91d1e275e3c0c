"""Normalized text, as ClamAV matches target types 3 (HTML) and 7 (ASCII text) against it.

Checked against clamscan 1.4.6 (tests/test_clamscan_parity.py): ASCII letters are lowercased and
every run of whitespace (space, tab, CR, LF, FF, VT) becomes one space.  ClamAV's HTML normalizer
does more (entities, scripts, comments); that comes with the HTML unpacker.
"""

from __future__ import annotations

import re

_UPPER = bytes(range(ord("A"), ord("Z") + 1))
_LOWER = bytes(range(ord("a"), ord("z") + 1))
_LOWER_TABLE = bytes.maketrans(_UPPER, _LOWER)
_WHITESPACE_RUN = re.compile(rb"[ \t\r\n\f\v]+")


def normalize_text(data: bytes | memoryview) -> bytes:
    return _WHITESPACE_RUN.sub(b" ", bytes(data).translate(_LOWER_TABLE))
