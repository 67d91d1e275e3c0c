"""Normalized text, as ClamAV matches target types 3 (HTML) and 7 (ASCII text) against it.

Checked against clamscan 1.4.6 (tests/test_clamscan_parity.py): ASCII letters are lowercased and
every run of whitespace (space, tab, CR, LF, FF, VT) becomes one space.  ClamAV's HTML normalizer
does more (entities, scripts, comments); that comes with the HTML unpacker.
"""

from __future__ import annotations

_UPPER = bytes(range(ord("A"), ord("Z") + 1))
_LOWER = bytes(range(ord("a"), ord("z") + 1))
_LOWER_TABLE = bytes.maketrans(_UPPER, _LOWER)


def normalize_text(data: bytes | memoryview) -> bytes:
    """Lowercase ASCII letters and collapse each whitespace run (leading and trailing ones too) to one space.

    ``bytes.split()`` splits on exactly those whitespace bytes, in C: an order of magnitude faster
    than a regex substitution on large text files.
    """
    lowered = bytes(data).translate(_LOWER_TABLE)
    words = lowered.split()
    out = b" ".join(words)
    if lowered[:1].isspace():
        out = b" " + out
    if words and lowered[-1:].isspace():
        out += b" "
    return out
