"""A layered compiled database: a compiled database plus small layers compiled on top of it.

Why it exists: compiling a whole database peaks at several times the memory of serving it
(Hyperscan's compile costs ~7.5 KB per body signature: 50,000 of them ~380 MiB), and a daemon that
recompiles on every reload needs that much headroom (bench/README.md, daemon reload).  When only
some signature files changed (a custom ``.ndb`` added, one container member replaced), the reload
compiles just those into a new layer (database/delta.py) and tombstones the sources below that
disappeared or changed; the engine scans with every layer.

Layout of a layered database (a cache directory like any other, named by the same cache key a
whole compile would have, so every process opening those sources finds it)::

    manifest.json    "layers": ["layer0", "layer1", ...], "starts": [[body id, logical id], ...],
                     "dead_sources": [...], "sources": every source of every layer, by index,
                     the merged load report, the signature count
    layer0/ ...      a complete compiled database directory (hard links to the one it came from)
    layer1/ ...      the signatures of the files added or changed since, compiled on their own

Ids are global: layer k was compiled with its source indexes, body signature ids (its Hyperscan
pattern ids) and logical signature ids starting where the layers below it end, so a hit or a
record read from any layer needs no translation; reading a record only needs to find its layer.
A tombstoned source's signatures stay in their layer and are filtered here: hash hits from it
are dropped, its body signatures get target -1 (which fits no object), its logical signatures
leave the ``always`` list, its file type magic and container rules are left out.

Layers stack up to database/delta.py's MAX_LAYERS; then a reload compiles the whole database.
"""

from __future__ import annotations

import bisect
import dataclasses
import os
from typing import TypeVar

import hyperscan

from bastion.database.bodymatcher import BodyEntry, BodyMatcher
from bastion.database.hashtable import HashHit, HashTable
from bastion.database.linetable import LineMap
from bastion.database.logicmatcher import LogicMatcher
from bastion.signatures.model import ContainerRule, FileTypeMagic, HashKind, HashPurpose

# what a layered database carries over from its layers by source and line
T = TypeVar("T", FileTypeMagic, ContainerRule)

# a body signature of a tombstoned source: fits no file type, so it is never confirmed
DEAD_TARGET = -1


class Liveness:
    """Where a signature compiled in a layer below stands now: gone, or on which source and line.

    ``dead``: sources whose every signature is gone (a file removed).  ``remap``: sources an older
    version of a changed file was compiled as, with the source index of the current version and
    where that older version's lines are in it (database/linetable.py LineMap)."""

    def __init__(self, dead: frozenset[int], remap: dict[int, tuple[int, LineMap]]) -> None:
        self.dead = dead
        self.remap = remap
        self.touched = dead | frozenset(remap)

    def where(self, source: int, line: int) -> tuple[int, int] | None:
        """(source, line) of a signature now, or None when it is gone."""
        if source not in self.touched:
            return source, line
        moved = self.remap.get(source)
        if moved is None:
            return None
        owner, lines = moved
        now = lines[line]
        return (owner, now) if now else None

    def kept(self, items: list[T]) -> list[T]:
        """The file type magic or container rules still there, on the source and line they are on now."""
        out = []
        for item in items:
            now = self.where(item.source_index, item.line)
            if now is not None:
                out.append(dataclasses.replace(item, source_index=now[0], line=now[1]))
        return out


class LayeredHashTable:
    """The tables of one (hash kind, purpose) in every layer, answering as one table."""

    def __init__(self, tables: list[HashTable], live: Liveness) -> None:
        self.tables = tables
        self.live = live

    def __len__(self) -> int:
        return sum(len(t) for t in self.tables)

    def may_hold_size(self, size: int) -> bool:
        return any(t.may_hold_size(size) for t in self.tables)

    def lookup(self, digest: bytes, size: int) -> list[HashHit]:
        hits = []
        for t in self.tables:
            for hit in t.lookup(digest, size):
                if hit.source_index in self.live.touched:
                    now = self.live.where(hit.source_index, hit.line)
                    if now is None:
                        continue
                    hit = HashHit(hit.name, now[0], now[1])
                hits.append(hit)
        return hits


class LayeredBodies:
    """Every layer's body signatures: one Hyperscan database per layer and view, global ids."""

    def __init__(self, layers: list[BodyMatcher], starts: list[int], live: Liveness) -> None:
        self.layers = layers
        self.starts = starts
        self.live = live
        self.raw_dbs: list[hyperscan.Database] = [db for m in layers for db in m.raw_dbs]
        self.normalized_dbs: list[hyperscan.Database] = [db for m in layers for db in m.normalized_dbs]
        self._moved: dict[int, BodyEntry] = {}

    def __len__(self) -> int:
        return self.starts[-1] + len(self.layers[-1])

    def entry(self, sid: int) -> BodyEntry:
        k = bisect.bisect_right(self.starts, sid) - 1
        found = self.layers[k].entry(sid - self.starts[k])
        if found.source_index in self.live.touched:
            moved = self._moved.get(sid)
            if moved is None:
                now = self.live.where(found.source_index, found.line)
                moved = self._moved[sid] = dataclasses.replace(found, target=DEAD_TARGET) if now is None else \
                    dataclasses.replace(found, source_index=now[0], line=now[1])
            found = moved
        return found

    def entries(self) -> list[BodyEntry]:
        return [self.entry(i) for i in range(len(self))]

    def mode_counts(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for m in self.layers:
            for mode, n in m.mode_counts().items():
                counts[mode] = counts.get(mode, 0) + n
        return counts


class LayeredLogic:
    """Every layer's logical signatures, by global id; tombstoned ones are never evaluated."""

    def __init__(self, layers: list[LogicMatcher], starts: list[int], live: Liveness) -> None:
        self.layers = layers
        self.starts = starts
        self.live = live
        self._moved: dict[int, tuple] = {}
        self.always = [lsig for m in layers for lsig in m.always if self.record(lsig)[1] != DEAD_TARGET]
        self.vacuous = frozenset(v for m in layers for v in m.vacuous)
        self.macros: dict[int, list[tuple[str, str, bytes]]] = {}
        for m in layers:
            for group, members in m.macros.items():
                self.macros.setdefault(group, []).extend(members)

    def __len__(self) -> int:
        return self.starts[-1] + len(self.layers[-1])

    def record(self, lsig: int) -> tuple:
        """``(name, target, ..., source_index, line, text)``: logicmatcher.py; a gone one has target -1."""
        k = bisect.bisect_right(self.starts, lsig) - 1
        found = self.layers[k].record(lsig - self.starts[k])
        if found[6] in self.live.touched:
            moved = self._moved.get(lsig)
            if moved is None:
                now = self.live.where(found[6], found[7])
                moved = self._moved[lsig] = (found[0], DEAD_TARGET, *found[2:]) if now is None else \
                    (*found[:6], now[0], now[1], *found[8:])
            found = moved
        return found


def load_layered(directory: str, manifest: dict) -> object:
    """The :class:`~bastion.database.compiled.Database` of a layered cache directory."""
    from bastion.database.compiled import Database, SourceInfo, report_from_json

    layers = [Database.load(os.path.join(directory, name)) for name in manifest["layers"]]
    dead = frozenset(int(i) for i in manifest["dead_sources"])
    remap = {int(x): (int(owner), LineMap.load(os.path.join(directory, f"remap.{x}")))
             for x, owner in manifest.get("remap", {}).items()}
    live = Liveness(dead, remap)
    body_starts = [int(b) for b, _ in manifest["starts"]]
    logic_starts = [int(lg) for _, lg in manifest["starts"]]
    keys: list[tuple[HashKind, HashPurpose]] = []
    for layer in layers:
        keys += [k for k in layer.hash_tables if k not in keys]
    tables: dict[tuple[HashKind, HashPurpose], object] = {}
    for key in keys:
        present = [layer.hash_tables[key] for layer in layers if key in layer.hash_tables]
        tables[key] = present[0] if len(present) == 1 and not live.touched else LayeredHashTable(present, live)
    filetypes = live.kept([m for layer in layers for m in layer.filetypes])
    container_rules = live.kept([r for layer in layers for r in layer.container_rules])
    yara = next((layer.yara for layer in layers if layer.yara is not None), None)
    return Database(
        version=manifest["version"],
        sources=[SourceInfo(p, d, o) for p, d, o in manifest["sources"]],
        hash_tables=tables,  # type: ignore[arg-type]
        bodies=LayeredBodies([layer.bodies for layer in layers], body_starts, live),  # type: ignore[arg-type]
        logical=LayeredLogic([layer.logical for layer in layers], logic_starts, live),  # type: ignore[arg-type]
        report=report_from_json(manifest["report"]),
        body_signatures=int(manifest["body_signatures"]),
        filetypes=filetypes,
        container_rules=container_rules,
        yara=yara,
        path=directory,
        from_cache=True,
        pua=bool(manifest.get("pua")),
        source_counts={int(i): int(n) for i, n in manifest.get("source_counts", [])},
        dead_sources=live.touched,
        counted=int(manifest["signature_count"]),
    )
