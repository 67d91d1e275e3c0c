"""The PE import table text behind ``.imp`` signatures, and its behaviour on hostile input."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from bastion.formats.executable import parse_executable
from bastion.formats.pe_imports import import_text
from tests.test_section_hash_parity import build_pe_with_imports

PE = build_pe_with_imports()


def test_names_ordinals_and_extensions() -> None:
    info = parse_executable(PE)
    assert info is not None
    assert import_text(PE, info) == "kernel32.exitprocess,kernel32.gettickcount,widgets.makewidget,widgets.ord7"


def test_no_table_gives_none() -> None:
    info = parse_executable(build_pe_with_imports(0))
    assert info is not None and import_text(build_pe_with_imports(0), info) is None


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(st.integers(0, len(PE) - 1), st.integers(0, 255)), min_size=1, max_size=12))
def test_corrupted_tables_never_raise(edits: list[tuple[int, int]]) -> None:
    data = bytearray(PE)
    for at, value in edits:
        data[at] = value
    info = parse_executable(bytes(data))
    if info is not None:
        text = import_text(bytes(data), info)
        assert text is None or isinstance(text, str)
