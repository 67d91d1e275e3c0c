"""Any signature line either loads or fails with file:line: reason; nothing else ever escapes."""

from __future__ import annotations

import tempfile
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bastion.signatures.errors import SignatureError
from bastion.signatures.hexpattern import translate
from bastion.signatures.loader import discover, parse_sources

HEXISH = st.text(alphabet="0123456789abcdefABCDEF?*{}()[]|!-,BLW ", max_size=60)
FIELD = st.text(alphabet="0123456789abcdefEOFPSLV+-,*$:.xyz", max_size=12)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(HEXISH)
def test_hex_translation_raises_only_value_error(text: str) -> None:
    import re

    try:
        tr = translate(text)
    except ValueError:
        return
    re.compile(tr.regex, re.DOTALL)  # whatever is accepted compiles


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(["a.ndb", "a.hdb", "a.hsb", "a.fp", "a.ign2"]),
       st.lists(st.one_of(HEXISH, FIELD), min_size=1, max_size=6))
def test_database_lines_load_or_name_their_line(name: str, fields: list[str]) -> None:
    line = ":".join(fields)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / name
        path.write_text(f"Good.Sig:0:*:41424344\n{line}\n" if name.endswith("ndb") else f"{line}\n",
                        encoding="latin-1")
        try:
            parse_sources(discover([str(path)]))
        except SignatureError as exc:
            assert str(exc).startswith(f"{path}:")
            assert exc.line in (0, 1, 2)
