"""The named character references Bastion's HTML normalizer decodes: HTML 4.01's 252 entities (the
W3C's HTMLlat1, HTMLsymbol and HTMLspecial sets, as Python's ``html.entities.name2codepoint`` holds
them), case-sensitive, each with its code point.

ClamAV 1.4's normalizer knows more names (743: the SGML/ISO 8879 sets, e.g. ``&half;``, ``&lpar;``,
``&apos;``); a name outside HTML 4's sets stays as written (lowercased) here, where clamscan decodes
it.  Names of HTML5's additions (``&AMP;``) are not decoded by either.
"""

from __future__ import annotations

from html.entities import name2codepoint

ENTITIES: dict[bytes, int] = {name.encode("ascii"): cp for name, cp in name2codepoint.items()}
