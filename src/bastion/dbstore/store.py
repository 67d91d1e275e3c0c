"""Database versions: staged beside the active one, self-tested, switched atomically, kept, rolled
back, and every switch recorded in the transparency log (tlog.py).

Layout of the store (``$BASTION_DB_STORE``, default /var/lib/bastion/store for root, else
~/.local/state/bastion/store)::

    versions/<id>/sources/      the signature files of this version (copied, never linked)
    versions/<id>/version.json  its inputs and their SHA-256, the inputs digest, signature count
    active                      symlink -> versions/<id>/sources: what scans, the daemon and the API
                                load (the default database path points here; see ``active_path``)
    log.jsonl, log.head         the transparency log

A version's id is the first 16 hex digits of its *inputs digest* (SHA-256 over the sorted names and
SHA-256s of its files), so the same inputs give the same id on any machine.

Staging copies the sources into a temporary directory, renames it into ``versions/``, compiles it
(which fills the compiled-database cache) and self-tests it: the EICAR test file and Bastion's
canary must be detected, and every file of the known-clean corpus must stay clean.  Only then is
``active`` switched, by renaming a new symlink over the old one: a reader sees the old version or
the new one, and ``kill -9`` at any moment leaves the previous version fully working.  Bastion's
built-in signatures (EICAR, canary) are part of every version, so the self-test always means
something.  The last ``KEEP`` versions are kept.

Tests kill the process at each step through ``BASTION_FAULT_KILL_AT`` (names in :data:`STEPS`).
"""

from __future__ import annotations

import getpass
import hashlib
import json
import os
import shutil
import signal
import tempfile
from dataclasses import dataclass
from typing import Any

from bastion.database.atomic import fsync_dir, write_file_atomically
from bastion.dbstore.tlog import TransparencyLog

FAULT_ENV = "BASTION_FAULT_KILL_AT"
STEPS = ("copied", "stored", "compiled", "tested", "switched")
KEEP = 5
EICAR = b"X5O!P%@AP[4\\PZX54(P^)7CC)7}$EICAR-STANDARD-ANTIVIRUS-TEST-FILE!$H+H*"
CANARY = b"BASTION-TEST-CANARY-7f3a9c1e"
# files that must stay clean under every version (besides the user's own allow-list corpus)
DEFAULT_CLEAN = ("/bin/true", "/bin/ls", "/etc/os-release")


class StoreError(Exception):
    """A version that was refused; the active version is untouched."""


@dataclass
class Version:
    id: str
    inputs_digest: str
    created: str
    files: dict[str, str]        # name -> sha256
    signatures: int
    compiled_version: str        # the compiled database's cache key
    compiled_digest: str = ""    # database.compiled.compiled_digest: the same inputs and toolchain give
    #                              the same digest on any machine (x86-64)
    toolchain: str = ""          # database.compiled.toolchain(): the libraries that compiled it

    @classmethod
    def load(cls, directory: str) -> Version:
        with open(os.path.join(directory, "version.json"), encoding="utf-8") as fh:
            return cls(**json.load(fh))


def default_store() -> str:
    from bastion.paths import db_store

    return db_store()


def _fault(step: str) -> None:
    if os.environ.get(FAULT_ENV) == step:
        os.kill(os.getpid(), signal.SIGKILL)


def _now() -> str:
    from datetime import UTC, datetime

    return datetime.now(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


def inputs_digest(files: dict[str, str]) -> str:
    h = hashlib.sha256()
    for name in sorted(files):
        h.update(f"{name}\0{files[name]}\n".encode())
    return h.hexdigest()


def _copy_hashing(src: str, dest: str) -> str:
    """Copy a file (fsynced) and return the SHA-256 of what was written, in one pass."""
    h = hashlib.sha256()
    with open(src, "rb") as fh, open(dest, "wb") as out:
        for piece in iter(lambda: fh.read(1 << 20), b""):
            h.update(piece)
            out.write(piece)
        out.flush()
        os.fsync(out.fileno())
    return h.hexdigest()


class DatabaseStore:
    def __init__(self, root: str | None = None) -> None:
        self.root = os.path.abspath(root or default_store())
        self.versions_dir = os.path.join(self.root, "versions")
        os.makedirs(self.versions_dir, exist_ok=True)
        self.active_link = os.path.join(self.root, "active")
        self.log = TransparencyLog(self.root)

    # ------------------------------------------------------------------ reading
    def active_id(self) -> str | None:
        try:
            target = os.readlink(self.active_link)
        except OSError:
            return None
        return os.path.basename(os.path.dirname(target.rstrip("/")))

    def versions(self) -> list[Version]:
        out = []
        for name in os.listdir(self.versions_dir):
            d = os.path.join(self.versions_dir, name)
            if not name.startswith(".") and os.path.isfile(os.path.join(d, "version.json")):
                out.append(Version.load(d))
        return sorted(out, key=lambda v: (v.created, v.id))

    def version(self, version_id: str) -> Version:
        return Version.load(os.path.join(self.versions_dir, version_id))

    def sources_dir(self, version_id: str) -> str:
        return os.path.join(self.versions_dir, version_id, "sources")

    # ------------------------------------------------------------------ staging
    def stage(self, sources: list[str], clean_corpus: list[str] | None = None) -> Version:
        """Copy, compile and self-test a new version from signature files and folders; returns it
        (not yet active).  Raises StoreError with the reason when it is refused."""
        from bastion.signatures.loader import builtin_database_dir

        files: dict[str, str] = {}
        tmp = tempfile.mkdtemp(prefix=".stage-", dir=self.versions_dir)
        try:
            target = os.path.join(tmp, "sources")
            os.makedirs(target)
            builtin = builtin_database_dir()
            picked = [os.path.join(builtin, n) for n in sorted(os.listdir(builtin))]
            for src in sources:
                if os.path.isdir(src):
                    picked += [os.path.join(src, n) for n in sorted(os.listdir(src))
                               if not n.startswith(".") and os.path.isfile(os.path.join(src, n))]
                elif os.path.isfile(src):
                    picked.append(src)
                else:
                    raise StoreError(f"{src}: no such file or folder")
            for path in picked:
                name = os.path.basename(path)
                if path.startswith(builtin + os.sep):
                    name = f"bastion-builtin-{name}"
                if name in files:
                    raise StoreError(f"{path}: two sources are named {name}")
                files[name] = _copy_hashing(path, os.path.join(target, name))
            fsync_dir(target)
            _fault("copied")
            digest = inputs_digest(files)
            version_id = digest[:16]
            final = os.path.join(self.versions_dir, version_id)
            if os.path.isfile(os.path.join(final, "version.json")):
                shutil.rmtree(tmp, ignore_errors=True)
                return Version.load(final)  # the same inputs: the same version
            shutil.rmtree(final, ignore_errors=True)  # an unfinished one from an interrupted run
            os.rename(tmp, final)
            tmp = ""
            fsync_dir(self.versions_dir)
        finally:
            if tmp:
                shutil.rmtree(tmp, ignore_errors=True)
        _fault("stored")
        try:
            version = self._compile_and_test(version_id, files, digest, clean_corpus or [])
        except StoreError:
            shutil.rmtree(final, ignore_errors=True)
            raise
        return version

    def _compile_and_test(self, version_id: str, files: dict[str, str], digest: str,
                          clean_corpus: list[str]) -> Version:
        from bastion.database.compiled import compiled_digest, open_database, toolchain
        from bastion.engine import Engine, ScanOptions
        from bastion.signatures.errors import SignatureError

        sources = self.sources_dir(version_id)
        try:
            db = open_database([sources], yara_strict=False)
        except SignatureError as exc:
            raise StoreError(f"does not load: {exc}") from None
        _fault("compiled")
        engine = Engine(db, ScanOptions())
        for label, sample in (("the EICAR test file", EICAR), ("Bastion's canary", b"x " + CANARY + b" x")):
            if not engine.scan_bytes(sample, label).detections:
                raise StoreError(f"self-test failed: {label} is not detected")
        for path in [p for p in (*DEFAULT_CLEAN, *clean_corpus) if os.path.isfile(p)]:
            result = engine.scan_file(path)
            if result.detections:
                raise StoreError(f"self-test failed: known-clean {path} is detected as {result.detections[0].name}")
        _fault("tested")
        version = Version(version_id, digest, _now(), files, db.signature_count, db.version,
                          compiled_digest(db.path) if db.path else "", toolchain())
        write_file_atomically(os.path.join(self.versions_dir, version_id, "version.json"),
                              json.dumps(version.__dict__, indent=2, sort_keys=True).encode())
        return version

    # ------------------------------------------------------------------ switching
    def activate(self, version_id: str, action: str = "activate", trigger: str = "") -> dict[str, Any]:
        """Point ``active`` at a version (one rename), then log it; returns the log record."""
        directory = os.path.join(self.versions_dir, version_id)
        if not os.path.isfile(os.path.join(directory, "version.json")):
            raise StoreError(f"{version_id}: no such version (bastion db list)")
        version = Version.load(directory)
        previous = self.active_id()
        tmp_link = os.path.join(self.root, f".active-{os.getpid()}")
        if os.path.lexists(tmp_link):
            os.unlink(tmp_link)
        os.symlink(os.path.join("versions", version_id, "sources"), tmp_link)
        os.replace(tmp_link, self.active_link)
        fsync_dir(self.root)
        _fault("switched")
        record = self._record(action, version, previous, trigger)
        self.log.append(record)
        self.prune()
        return record

    def _record(self, action: str, version: Version, previous: str | None, trigger: str) -> dict[str, Any]:
        return {"time": _now(), "action": action, "version": version.id, "previous": previous,
                "inputs_digest": version.inputs_digest, "inputs": version.files,
                "compiled_database": version.compiled_version, "compiled_digest": version.compiled_digest,
                "toolchain": version.toolchain,
                "signatures": version.signatures,
                "trigger": trigger or f"{getpass.getuser()} (pid {os.getpid()})"}

    def rollback(self, version_id: str | None = None) -> dict[str, Any]:
        """Go back to ``version_id``, or to the version active before the current one."""
        current = self.active_id()
        if version_id is None:
            for record in reversed(self.log.records()):
                if record.get("version") == current and record.get("previous"):
                    version_id = record["previous"]
                    break
            if version_id is None:
                raise StoreError("no earlier version to roll back to")
        matches = [v.id for v in self.versions() if v.id.startswith(version_id)]
        if len(matches) != 1:
            raise StoreError(f"{version_id}: {'no such version' if not matches else 'ambiguous'} (bastion db list)")
        return self.activate(matches[0], action="rollback")

    def reconcile(self) -> dict[str, Any] | None:
        """After an interruption between the switch and its log record: log what is active."""
        current = self.active_id()
        records = self.log.records()
        if self.log.head().size != len(records):
            return None  # the log does not match its head: never paper over that (verify-log says why)
        last = records[-1]["version"] if records else None
        if current is None or current == last:
            return None
        directory = os.path.join(self.versions_dir, current)
        if not os.path.isfile(os.path.join(directory, "version.json")):
            return None
        record = self._record("activate", Version.load(directory), last, "recorded after an interrupted switch")
        self.log.append(record)
        return record

    def prune(self, keep: int = KEEP) -> list[str]:
        active = self.active_id()
        versions = self.versions()
        removed = []
        for v in versions[:-keep] if len(versions) > keep else []:
            if v.id != active:
                shutil.rmtree(os.path.join(self.versions_dir, v.id), ignore_errors=True)
                removed.append(v.id)
        for name in os.listdir(self.versions_dir):  # left by an interrupted stage
            path = os.path.join(self.versions_dir, name)
            unfinished = not os.path.isfile(os.path.join(path, "version.json"))
            if name.startswith(".stage-") or (name != active and unfinished):
                shutil.rmtree(path, ignore_errors=True)
        return removed
