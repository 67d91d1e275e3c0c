"""Normalized text, as ClamAV matches target types 3 (HTML) and 7 (ASCII text) against it.

Checked against clamscan 1.4.6 (tests/test_clamscan_parity.py): ASCII letters are lowercased and
every run of whitespace (space, tab, CR, LF, FF, VT) becomes one space.  ClamAV's HTML normalizer
does more (entities, scripts, comments); that comes with the HTML unpacker.
"""

from __future__ import annotations

_UPPER = bytes(range(ord("A"), ord("Z") + 1))
_LOWER = bytes(range(ord("a"), ord("z") + 1))
_LOWER_TABLE = bytes.maketrans(_UPPER, _LOWER)


# Normalize this many bytes at a time: the word list of one piece costs ~10x its size in Python objects.
_CHUNK = 1 << 16


class TextNormalizer:
    """Streaming normalizer: feed raw chunks, get normalized chunks.

    Lowercases ASCII letters and collapses each whitespace run (leading and trailing ones too) to one
    space.  ``bytes.split()`` splits on exactly those whitespace bytes, in C: an order of magnitude
    faster than a regex substitution.  A run spanning two chunks stays one space and a word spanning
    two chunks stays one word, so the output does not depend on how the input was cut.
    """

    __slots__ = ("after_space",)

    def __init__(self) -> None:
        self.after_space = False

    def feed(self, chunk: bytes | memoryview) -> bytes:
        out = bytearray()
        view = memoryview(chunk)
        for start in range(0, len(view), _CHUNK):
            lowered = bytes(view[start:start + _CHUNK]).translate(_LOWER_TABLE)
            words = lowered.split()
            if lowered[:1].isspace() and not self.after_space:
                out += b" "
            if not words:
                self.after_space = True
                continue
            out += b" ".join(words)
            self.after_space = lowered[-1:].isspace()
            if self.after_space:
                out += b" "
        return bytes(out)


def normalize_text(data: bytes | memoryview) -> bytes:
    """The normalized form of a whole buffer."""
    return TextNormalizer().feed(data)
