"""Update sources as ``bastion.toml`` declares them, and what the updater remembers of each.

``[update]`` holds the default ``policy`` (``auto``, ``notify`` or ``manual``) and ``silent_days``
(after how long without a successful update a source is reported as gone silent); each
``[[update.sources]]`` table is one source::

    name = "community"          # unique; its files are staged as "<name>--<file>"
    kind = "feed"               # feed | folder | hashlist | clamav-mirror
    url = "https://..."         # feed: the feed's address
    trust = "root.json"         # feed: its root.json, the first time
    path = "/srv/rules"         # folder: signature files or YARA rules; hashlist: the list file
    freshclam = "/etc/clamav/freshclam.conf"   # clamav-mirror: its mirrors and DatabaseCustomURL lines
    mirrors = ["https://a", "https://b"]       # clamav-mirror: mirrors tried in order (or url = one)
    databases = ["main", "daily"]              # clamav-mirror: default main, daily, bytecode
    custom_urls = ["https://x/extra.ndb"]      # clamav-mirror: single files, as DatabaseCustomURL
    policy = "notify"           # this source's policy (default: [update] policy)
    priority = 10               # higher first in the staged version

A hash list is a plain text export (one MD5, SHA1 or SHA256 per line, optionally followed by a name)
or a CSV export with a header (a ``sha256``/``sha256_hash``/``md5``/``sha1`` column, and a
``signature`` or ``name`` column if there is one, as MalwareBazaar's exports have); it becomes an
any-size hash database.  ``[update]`` may also hold ``private_mirrors``, ``mirrors`` and
``custom_urls`` as ``bastion migrate`` writes them from freshclam.conf: they make one clamav-mirror
source named ``freshclam`` (private mirrors first, as freshclam tries them).  The state of each
source (last attempt, last success, version, error) is kept in the store, for ``bastion status``.
"""

from __future__ import annotations

import csv
import io
import json
import os
import re
import time
import tomllib
from dataclasses import dataclass

from bastion.database.atomic import write_file_atomically
from bastion.signatures.hashdb import any_size_line, is_hash_hex, name_part

KINDS = ("feed", "folder", "hashlist", "clamav-mirror")
POLICIES = ("auto", "notify", "manual")
STRICTNESS = {"auto": 0, "notify": 1, "manual": 2}


class SourceError(ValueError):
    pass


@dataclass
class Source:
    name: str
    kind: str
    url: str = ""
    trust: str = ""
    path: str = ""
    policy: str = "auto"
    priority: int = 0
    freshclam: str = ""                 # clamav-mirror: read its mirrors from this freshclam.conf
    databases: list[str] | None = None  # clamav-mirror: default main, daily, bytecode
    mirrors: list[str] | None = None    # clamav-mirror: several mirrors, tried in order
    custom_urls: list[str] | None = None  # clamav-mirror: single database files (DatabaseCustomURL)


@dataclass
class UpdateConfig:
    sources: list[Source]
    policy: str = "auto"
    silent_days: float = 7.0


def load_config(path: str) -> UpdateConfig:
    with open(path, "rb") as fh:
        doc = tomllib.load(fh)
    update = doc.get("update", {})
    policy = update.get("policy", "auto")
    if policy not in POLICIES:
        raise SourceError(f"{path}: [update] policy must be one of {', '.join(POLICIES)}")
    sources = []
    names = set()
    for i, raw in enumerate(update.get("sources", []), 1):
        where = f"{path}: [[update.sources]] #{i}"
        unknown = set(raw) - {"name", "kind", "url", "trust", "path", "policy", "priority", "freshclam", "databases",
                              "mirrors", "custom_urls"}
        if unknown:
            raise SourceError(f"{where}: unknown key(s) {', '.join(sorted(unknown))}")
        src = Source(**{"policy": policy, **raw})
        if not re.fullmatch(r"[A-Za-z0-9_.-]+", src.name or "") or src.name in names:
            raise SourceError(f"{where}: a unique name of letters, digits, '.', '_' or '-' is needed")
        if src.kind not in KINDS:
            raise SourceError(f"{where}: kind must be one of {', '.join(KINDS)}")
        if src.policy not in POLICIES:
            raise SourceError(f"{where}: policy must be one of {', '.join(POLICIES)}")
        if src.kind == "feed" and not src.url:
            raise SourceError(f"{where}: a feed needs url")
        if src.kind == "clamav-mirror" and not (src.url or src.freshclam or src.mirrors or src.custom_urls):
            raise SourceError(f"{where}: a clamav-mirror needs url, mirrors, freshclam or custom_urls")
        for key in ("databases", "mirrors", "custom_urls"):
            value = getattr(src, key)
            if value is not None and not (isinstance(value, list) and all(isinstance(v, str) for v in value)):
                raise SourceError(f"{where}: {key} must be a list of strings")
        if src.kind in ("folder", "hashlist") and not src.path:
            raise SourceError(f"{where}: a {src.kind} needs path")
        names.add(src.name)
        sources.append(src)
    migrated = _migrated_source(update, policy, names)
    if migrated is not None:
        sources.append(migrated)
    return UpdateConfig(sorted(sources, key=lambda s: -s.priority), policy, float(update.get("silent_days", 7)))


def _migrated_source(update: dict, policy: str, names: set[str]) -> Source | None:
    """The clamav-mirror source that ``[update]``'s freshclam.conf keys (``bastion migrate``) describe."""
    lists = {}
    for key in ("private_mirrors", "mirrors", "custom_urls"):
        value = update.get(key, [])
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise SourceError(f"[update] {key} must be a list of strings")
        lists[key] = value
    if not any(lists.values()):
        return None
    if "freshclam" in names:
        raise SourceError("[update] mirrors/custom_urls make a source named freshclam, and another has that name")
    mirrors = [m if "://" in m else f"https://{m}" for m in lists["private_mirrors"] + lists["mirrors"]]
    return Source("freshclam", "clamav-mirror", policy=policy, mirrors=mirrors, custom_urls=lists["custom_urls"])


def hashlist_to_hsb(text: str, source: str) -> tuple[str, int, int]:
    """A hash list export as ``.hsb`` lines (``hash:*:name:73``); returns (text, taken, skipped)."""
    lines, skipped = [], 0
    first = next((x for x in text.splitlines() if x.strip() and not x.startswith("#")), "")
    is_csv = "," in first and not is_hash_hex(first.split(",")[0].strip().strip('"'))  # a header row
    if is_csv:
        reader = csv.DictReader(io.StringIO("\n".join(x for x in text.splitlines() if not x.startswith("#"))),
                                skipinitialspace=True)
        fields = {f.lower().strip(' "'): f for f in (reader.fieldnames or [])}
        hash_col = next((fields[c] for c in ("sha256_hash", "sha256", "sha1_hash", "sha1", "md5_hash", "md5")
                         if c in fields), None)
        name_col = next((fields[c] for c in ("signature", "name", "malware", "family") if c in fields), None)
        if hash_col is None:
            raise SourceError("a CSV hash list needs a sha256, sha1 or md5 column")
        rows = ((r.get(hash_col, ""), r.get(name_col, "") if name_col else "") for r in reader)
    else:
        rows = ((parts[0], parts[1] if len(parts) > 1 else "") for parts in
                (line.replace(",", " ").replace(";", " ").split(None, 1) for line in text.splitlines()
                 if line.strip() and not line.lstrip().startswith("#")))
    for n, (digest, label) in enumerate(rows, 1):
        digest = (digest or "").strip().strip('"')
        if not is_hash_hex(digest):
            skipped += 1
            continue
        label = name_part((label or "").strip().strip('"'))
        lines.append(any_size_line(digest, f"HashList.{source}.{label}.{n}"))
    return "".join(lines), len(lines), skipped


class SourceState:
    """Per source: last attempt, last success, what it gave, the last error (``bastion status``)."""

    def __init__(self, store_root: str) -> None:
        self.dir = os.path.join(store_root, "sources")
        os.makedirs(self.dir, exist_ok=True)

    def get(self, name: str) -> dict:
        try:
            with open(os.path.join(self.dir, f"{name}.json"), encoding="utf-8") as fh:
                return json.load(fh)
        except FileNotFoundError:
            return {}

    def all(self) -> dict[str, dict]:
        return {n[:-5]: self.get(n[:-5]) for n in sorted(os.listdir(self.dir)) if n.endswith(".json")}

    def remember(self, name: str, **facts: object) -> None:
        """Keep facts about a source (a mirror's database versions) beside its state."""
        state = self.get(name)
        state.update(facts)
        write_file_atomically(os.path.join(self.dir, f"{name}.json"), json.dumps(state, indent=2).encode())

    def record(self, name: str, ok: bool, detail: str) -> None:
        state = self.get(name)
        now = time.time()
        state["last_attempt"] = now
        if ok:
            state.update(last_success=now, detail=detail, error=None)
        else:
            state["error"] = detail
        write_file_atomically(os.path.join(self.dir, f"{name}.json"), json.dumps(state, indent=2).encode())
