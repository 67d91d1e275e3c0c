"""YARA rules through yara-x: loading, errors, externals, evidence, cache, and the real peers
(Debian's clamscan for the rules ClamAV supports, the ``yara`` CLI for match offsets)."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from bastion.database.compiled import open_database
from bastion.engine.scanner import Engine, ScanOptions
from bastion.signatures.errors import SignatureError
from tests.helpers import bastion_env, write
from tests.test_clamscan_parity import UNOFFICIAL, run_both

RULES = r"""
rule plain_string { strings: $a = "quartzlynx" condition: $a }
rule regex_string { strings: $r = /ab[0-9]{3}cd/ condition: $r }
rule size_cond { strings: $a = "sizeword" condition: $a and filesize < 100 }
rule two_strings : pair { meta: author = "bastion" score = 70
    strings: $a = "alpha1" $b = "beta2" condition: all of them }
rule nocase_wide { strings: $a = "WideWord" wide nocase condition: $a }
rule hex_single_bytes { strings: $h = { 4D 5A ?? 00 [2-4] FF } condition: $h }
rule no_strings { condition: uint16(0) == 0x4B50 and filesize < 64 }
private rule hidden { strings: $p = "privword" condition: $p }
rule uses_private { condition: hidden }
"""
FILES = {
    "a1": b"xx quartzlynx yy\n", "a3": b"zz ab123cd zz\n", "a4": b"sizeword here\n",
    "a7": b"alpha1 and beta2\n", "a8": "wideword".encode("utf-16-le") + b"\n",
    "b1": b"MZ\x01\x00\x02\x03\xff rest of data here\n", "b2": b"PK\x03\x04 not really a zip\n",
    "b3": b"privword here and there\n", "clean": b"nothing to see in this file\n",
}
# ClamAV 1.4.6 skips rules with single-byte hex subpatterns, rules without strings and rules that
# only use other rules; yara-x runs them all
CLAMAV_SKIPS = {"b1": "hex_single_bytes", "b2": "no_strings", "b3": "uses_private"}
EXPECT = {"a1": "plain_string", "a3": "regex_string", "a4": "size_cond", "a7": "two_strings", "a8": "nocase_wide"}


@pytest.fixture(scope="module")
def tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("yara")
    write(root / "rules" / "t.yar", RULES)
    for name, data in FILES.items():
        write(root / "files" / name, data)
    return root


def test_same_verdicts_as_clamscan_where_clamav_supports_the_rule(tree: Path, shared_cache_dir: Path) -> None:
    pair = run_both(["-z", "--no-summary", "-d", str(tree / "rules" / "t.yar"), str(tree / "files")], tree,
                    shared_cache_dir)
    for name in FILES:
        path = str(tree / "files" / name)
        want = [f"YARA.{EXPECT[name]}{UNOFFICIAL}"] if name in EXPECT else []
        assert pair.clam.names(path) == want, pair.report(path)
        if name in CLAMAV_SKIPS:
            assert pair.bastion.names(path) == [f"YARA.{CLAMAV_SKIPS[name]}{UNOFFICIAL}"], pair.report(path)
        else:
            assert pair.bastion.names(path) == want, pair.report(path)


def test_offsets_match_the_yara_cli(tree: Path) -> None:
    yara = shutil.which("yara")
    if yara is None:
        pytest.skip("the yara CLI is not installed (Debian: apt-get install yara)")
    db = open_database([str(tree / "rules" / "t.yar")], use_cache=False)
    engine = Engine(db, ScanOptions(allmatch=True))
    for name in EXPECT:
        out = subprocess.run([yara, "-s", str(tree / "rules" / "t.yar"), str(tree / "files" / name)],
                             capture_output=True, text=True, check=True).stdout
        cli = sorted(int(m.group(1), 16) for m in re.finditer(r"^0x([0-9a-f]+):", out, re.MULTILINE))
        (det,) = engine.scan_file(str(tree / "files" / name)).detections
        assert list(det.evidence.offsets) == cli, (name, out)


def test_evidence_and_json(tree: Path) -> None:
    r = subprocess.run([sys.executable, "-m", "bastion.cli.main", "scan", "--json", "--no-progress", "-d",
                        str(tree / "rules"), str(tree / "files" / "a7")], capture_output=True, text=True,
                       env=bastion_env(tree / "cache"), timeout=120)
    doc = json.loads(r.stdout.splitlines()[0])
    (det,) = doc["detections"]
    assert det["name"] == "YARA.two_strings.UNOFFICIAL" and det["kind"] == "yara"
    assert det["source"] == str(tree / "rules" / "t.yar") and det["line"] == 5
    assert det["yara"] == {"namespace": "t", "tags": ["pair"], "metadata": {"author": "bastion", "score": 70},
                           "strings": {"$a": [0], "$b": [11]}}


def test_rules_option_errors_and_strict_mode(tmp_path: Path) -> None:
    write(tmp_path / "rules" / "good" / "ok.yara", 'rule ok_rule { strings: $a = "goodword" condition: $a }')
    write(tmp_path / "rules" / "bad.yar", "rule fine { condition: true }\nrule broken { condition: nosuch }\n")
    target = write(tmp_path / "f", b"a goodword here\n")
    env = bastion_env(tmp_path / "cache")
    cmd = [sys.executable, "-m", "bastion.cli.main", "scan", "-z", "--no-progress", "--rules", str(tmp_path / "rules"),
           str(target)]
    write(tmp_path / "rules" / "syntax.yar", "rule half { condition: (( }\n")
    r = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=120)
    assert r.returncode == 1 and "YARA.ok_rule" in r.stdout
    # a rule yara-x cannot compile is left out with its line; the other rules of its file still load
    assert f"{tmp_path}/rules/bad.yar:2" in r.stderr and "rule broken left out" in r.stderr
    assert f"{tmp_path}/rules/syntax.yar:1" in r.stderr
    db = open_database([str(tmp_path / "rules" / "bad.yar")], use_cache=False)
    assert [d.name for d in Engine(db).scan_bytes(b"anything at all\n").detections] == ["YARA.fine.UNOFFICIAL"]
    r = subprocess.run([*cmd[:5], "--yara-strict", *cmd[5:]], capture_output=True, text=True, env=env, timeout=120)
    assert r.returncode == 2 and f"{tmp_path}/rules/bad.yar:2:" in r.stderr
    with pytest.raises(SignatureError):
        open_database([str(tmp_path / "rules" / "bad.yar")], use_cache=False, yara_strict=True)


LOKI = r"""
rule loki_style {
    condition: filename == "evil.exe" and extension == ".exe" and filetype == "EXE"
        and filepath contains "!" and owner == ""
}
rule owner_known { strings: $a = "ownerword" condition: $a and owner != "" and filepath endswith "/o.txt" }
"""


def test_loki_external_variables(tmp_path: Path) -> None:
    write(tmp_path / "loki.yar", LOKI)
    db = open_database([str(tmp_path / "loki.yar")], use_cache=False)
    mz = b"MZ" + b"\x00" * 100
    buf = tmp_path / "a.zip"
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("dir/evil.exe", mz)
        zf.writestr("dir/good.exe", mz)
    result = Engine(db, ScanOptions(allmatch=True)).scan_file(str(buf))
    assert [(d.name, d.evidence.container_path) for d in result.detections] == \
        [("YARA.loki_style.UNOFFICIAL", f"{buf}!dir/evil.exe")]
    assert Engine(db).scan_file(str(write(tmp_path / "o.txt", b"an ownerword here\n"))).detections


def test_compiled_once_and_cached(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BASTION_CACHE_DIR", str(tmp_path / "cache"))
    write(tmp_path / "r.yar", 'rule cached_rule { strings: $a = "cacheword" condition: $a }')
    first = open_database([str(tmp_path / "r.yar")])
    second = open_database([str(tmp_path / "r.yar")])
    assert not first.from_cache and second.from_cache and second.yara is not None
    assert second.signature_count == 1
    hit = Engine(second).scan_bytes(b"has cacheword inside\n")
    assert [d.name for d in hit.detections] == ["YARA.cached_rule.UNOFFICIAL"]
