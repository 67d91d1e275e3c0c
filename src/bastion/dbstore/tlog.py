"""The transparency log: an append-only Merkle tree over database activations, in the style of
Certificate Transparency (RFC 6962 / RFC 9162).

* A leaf is one record, as canonical JSON (sorted keys, no spaces); its hash is
  ``SHA-256(0x00 || leaf)``; an inner node is ``SHA-256(0x01 || left || right)``; the tree over
  ``n`` leaves splits at the largest power of two below ``n`` (RFC 6962 section 2.1).
* ``log.jsonl`` holds one line per record: ``{"record": {...}, "size": n, "root": hex}``, the tree
  head right after the record was appended, so every line commits to all the lines before it.
* ``log.head`` (written atomically) holds the latest tree head; a copy kept elsewhere (printed by
  ``bastion db log --head``) lets anyone check later that the log only grew.

:func:`verify` recomputes every head, checks each against the next with a consistency proof and
every record with an inclusion proof in the final tree, and compares the final head with
``log.head`` and with any head the caller kept: an edited, reordered, removed or truncated record is
found.  The proof functions are the RFC's and work offline.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from typing import Any

from bastion.database.atomic import write_file_atomically


def leaf_hash(leaf: bytes) -> bytes:
    return hashlib.sha256(b"\x00" + leaf).digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    return hashlib.sha256(b"\x01" + left + right).digest()


def _split(n: int) -> int:
    """The largest power of two smaller than n (n > 1)."""
    k = 1
    while k * 2 < n:
        k *= 2
    return k


def root(hashes: list[bytes]) -> bytes:
    """The Merkle tree hash over leaf hashes (RFC 6962 MTH); the empty tree is SHA-256 of nothing."""
    if not hashes:
        return hashlib.sha256(b"").digest()
    if len(hashes) == 1:
        return hashes[0]
    k = _split(len(hashes))
    return node_hash(root(hashes[:k]), root(hashes[k:]))


def inclusion_proof(index: int, hashes: list[bytes]) -> list[bytes]:
    """The audit path of leaf ``index`` in the tree over ``hashes`` (RFC 6962 PATH)."""
    if len(hashes) <= 1:
        return []
    k = _split(len(hashes))
    if index < k:
        return [*inclusion_proof(index, hashes[:k]), root(hashes[k:])]
    return [*inclusion_proof(index - k, hashes[k:]), root(hashes[:k])]


def verify_inclusion(leaf: bytes, index: int, size: int, proof: list[bytes], expected_root: bytes) -> bool:
    """RFC 9162 2.1.3.2: does ``proof`` put this leaf at ``index`` of the tree of ``size``?"""
    if index >= size:
        return False
    fn, sn, r = index, size - 1, leaf_hash(leaf)
    for p in proof:
        if sn == 0:
            return False
        if fn & 1 or fn == sn:
            r = node_hash(p, r)
            if not fn & 1:
                while fn and not fn & 1:
                    fn >>= 1
                    sn >>= 1
        else:
            r = node_hash(r, p)
        fn >>= 1
        sn >>= 1
    return sn == 0 and r == expected_root


def consistency_proof(m: int, hashes: list[bytes]) -> list[bytes]:
    """The proof that the tree of the first ``m`` leaves is a prefix of the tree over ``hashes``."""
    def subproof(m: int, leaves: list[bytes], complete: bool) -> list[bytes]:
        n = len(leaves)
        if m == n:
            return [] if complete else [root(leaves)]
        k = _split(n)
        if m <= k:
            return [*subproof(m, leaves[:k], complete), root(leaves[k:])]
        return [*subproof(m - k, leaves[k:], False), root(leaves[:k])]

    if m == 0 or m > len(hashes):
        return []
    return subproof(m, hashes, True)


def verify_consistency(m: int, n: int, root_m: bytes, root_n: bytes, proof: list[bytes]) -> bool:
    """RFC 9162 2.1.4.2: is the tree of size ``m`` (``root_m``) a prefix of the one of size ``n``?"""
    if m == n:
        return root_m == root_n and not proof
    if m == 0 or m > n:
        return False
    path = list(proof)
    if m & (m - 1) == 0:  # m is a power of two: its root starts the path
        path.insert(0, root_m)
    if not path:
        return False
    fn, sn = m - 1, n - 1
    while fn & 1:
        fn >>= 1
        sn >>= 1
    fr = sr = path[0]
    for c in path[1:]:
        if sn == 0:
            return False
        if fn & 1 or fn == sn:
            fr = node_hash(c, fr)
            sr = node_hash(c, sr)
            if not fn & 1:
                while fn and not fn & 1:
                    fn >>= 1
                    sn >>= 1
        else:
            sr = node_hash(sr, c)
        fn >>= 1
        sn >>= 1
    return fr == root_m and sr == root_n and sn == 0


def canonical(record: dict[str, Any]) -> bytes:
    return json.dumps(record, sort_keys=True, separators=(",", ":")).encode()


@dataclass(frozen=True)
class Head:
    size: int
    root: str  # hex

    def as_json(self) -> dict[str, Any]:
        return {"size": self.size, "root": self.root}


class LogError(Exception):
    pass


class TransparencyLog:
    def __init__(self, directory: str) -> None:
        self.path = os.path.join(directory, "log.jsonl")
        self.head_path = os.path.join(directory, "log.head")

    def entries(self) -> list[dict[str, Any]]:
        try:
            with open(self.path, encoding="utf-8") as fh:
                return [json.loads(line) for line in fh if line.strip()]
        except FileNotFoundError:
            return []

    def records(self) -> list[dict[str, Any]]:
        return [e["record"] for e in self.entries()]

    def head(self) -> Head:
        try:
            with open(self.head_path, encoding="utf-8") as fh:
                doc = json.load(fh)
            return Head(int(doc["size"]), str(doc["root"]))
        except FileNotFoundError:
            return Head(0, root([]).hex())

    def append(self, record: dict[str, Any]) -> Head:
        """Add a record: one line (written and fsynced with O_APPEND), then the new head (atomically)."""
        hashes = [leaf_hash(canonical(r)) for r in self.records()]
        hashes.append(leaf_hash(canonical(record)))
        head = Head(len(hashes), root(hashes).hex())
        line = json.dumps({"record": record, **head.as_json()}, sort_keys=True) + "\n"
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, line.encode())
            os.fsync(fd)
        finally:
            os.close(fd)
        write_file_atomically(self.head_path, json.dumps(head.as_json()).encode())
        return head

    def verify(self, kept: Head | None = None) -> list[str]:
        """Every problem found (empty: the log is whole and only ever grew)."""
        problems: list[str] = []
        entries = self.entries()
        hashes: list[bytes] = []
        previous: Head | None = None
        heads: list[Head] = []
        for i, entry in enumerate(entries):
            hashes.append(leaf_hash(canonical(entry.get("record", {}))))
            got = Head(len(hashes), root(hashes).hex())
            stated = Head(int(entry.get("size", -1)), str(entry.get("root", "")))
            if stated != got:
                problems.append(f"record {i + 1}: its tree head does not match the records up to it "
                                "(a record was edited, removed or reordered)")
            if previous is not None and not verify_consistency(
                    previous.size, got.size, bytes.fromhex(previous.root), bytes.fromhex(got.root),
                    consistency_proof(previous.size, hashes)):
                problems.append(f"record {i + 1}: the log is not an extension of itself at {previous.size}")
            previous = got
            heads.append(stated)
        final = Head(len(hashes), root(hashes).hex())
        for i, entry in enumerate(entries):
            if not verify_inclusion(canonical(entry.get("record", {})), i, final.size,
                                    inclusion_proof(i, hashes), bytes.fromhex(final.root)):
                problems.append(f"record {i + 1}: not included in the final tree")
        for label, other in (("log.head", self.head()), ("the head you kept", kept)):
            if other is None:
                continue
            if other.size > final.size:
                problems.append(f"{label} has {other.size} records, the log {final.size}: it was truncated")
            elif other.size == final.size and other.root != final.root:
                problems.append(f"{label} does not match the log's tree head: records were changed")
            elif other.size < final.size and other.size > 0:
                older = Head(other.size, root(hashes[:other.size]).hex())
                if older.root != other.root:
                    problems.append(f"{label} (size {other.size}) is not a prefix of the log: records were changed")
        return problems
