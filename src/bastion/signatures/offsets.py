"""Body-signature offsets: field 3 of ``.ndb`` (ClamAV's ``cli_caloff`` semantics).

An offset constrains where the *first byte* of a match may start.  Every form but ``*`` may carry
``,maxshift``: the match may then start anywhere in ``[start, start + maxshift]``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import Enum


class Anchor(str, Enum):
    ANY = "*"                     # anywhere
    ABSOLUTE = "n"                # at n
    EOF = "EOF-n"                 # at filesize - n
    ENTRY_POINT = "EP+n"          # entry point (file offset) + n, n may be negative
    SECTION = "Sx+n"              # start of section x + n
    LAST_SECTION = "SL+n"         # start of the last section + n
    SECTION_ENTIRE = "SEx"        # anywhere inside section x
    VERSION_INFO = "VI"           # PE VersionInfo strings (not matched yet: reported at load)
    MACRO = "$n$"                 # member of macro group n (used only by .ldb macro subsignatures)


# Anchors that need an executable's headers; ClamAV accepts them only for PE, ELF and Mach-O targets.
EXECUTABLE_ANCHORS = frozenset({Anchor.ENTRY_POINT, Anchor.SECTION, Anchor.LAST_SECTION, Anchor.SECTION_ENTIRE})
EXECUTABLE_TARGETS = frozenset({1, 6, 9})


@dataclass(frozen=True, slots=True)
class Offset:
    """A parsed offset.  ``value`` is n (signed for EP), ``section`` is x, ``maxshift`` the window."""

    anchor: Anchor
    value: int = 0
    section: int = 0
    maxshift: int = 0

    def __str__(self) -> str:
        a = self.anchor
        if a is Anchor.ANY:
            return "*"
        text = {
            Anchor.ABSOLUTE: f"{self.value}",
            Anchor.EOF: f"EOF-{self.value}",
            Anchor.ENTRY_POINT: f"EP{self.value:+d}",
            Anchor.SECTION: f"S{self.section}+{self.value}",
            Anchor.LAST_SECTION: f"SL+{self.value}",
            Anchor.SECTION_ENTIRE: f"SE{self.section}",
            Anchor.VERSION_INFO: "VI",
            Anchor.MACRO: f"${self.value}$",
        }[a]
        return f"{text},{self.maxshift}" if self.maxshift else text


ANY = Offset(Anchor.ANY)

_NUM = r"(\d+)"
_FORMS: list[tuple[re.Pattern[str], Anchor]] = [
    (re.compile(_NUM), Anchor.ABSOLUTE),
    (re.compile(r"EOF-" + _NUM), Anchor.EOF),
    (re.compile(r"EP([+-])" + _NUM), Anchor.ENTRY_POINT),
    (re.compile(r"S" + _NUM + r"\+" + _NUM), Anchor.SECTION),
    (re.compile(r"SL\+" + _NUM), Anchor.LAST_SECTION),
    (re.compile(r"SE" + _NUM), Anchor.SECTION_ENTIRE),
    (re.compile(r"VI"), Anchor.VERSION_INFO),
    (re.compile(r"\$" + _NUM + r"\$?"), Anchor.MACRO),  # clamscan 1.4.6 takes $n and $n$
]

MAX_MACRO_GROUP = 32


def parse_offset(text: str) -> Offset:
    """Parse an offset field; raise ``ValueError`` with a reason on anything ClamAV would refuse."""
    if text == "*":
        return ANY
    body, sep, shift_text = text.partition(",")
    maxshift = 0
    if sep:
        if not shift_text.isdigit():
            raise ValueError(f"bad maxshift in offset {text!r}")
        maxshift = int(shift_text)
    for pattern, anchor in _FORMS:
        m = pattern.fullmatch(body)
        if not m:
            continue
        g = m.groups()
        if anchor is Anchor.ABSOLUTE or anchor is Anchor.EOF or anchor is Anchor.LAST_SECTION:
            return Offset(anchor, int(g[0]), 0, maxshift)
        if anchor is Anchor.ENTRY_POINT:
            n = int(g[1])
            return Offset(anchor, -n if g[0] == "-" else n, 0, maxshift)
        if anchor is Anchor.SECTION:
            return Offset(anchor, int(g[1]), int(g[0]), maxshift)
        if anchor is Anchor.SECTION_ENTIRE:
            return Offset(anchor, 0, int(g[0]), maxshift)
        if anchor is Anchor.MACRO:
            group = int(g[0])
            if group >= MAX_MACRO_GROUP:
                raise ValueError(f"macro group {group} out of range (0-31)")
            return Offset(anchor, group, 0, 0)
        return Offset(anchor, 0, 0, maxshift)
    raise ValueError(f"invalid offset {text!r}")
