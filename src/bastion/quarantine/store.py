"""The quarantine: files taken out of reach, kept encrypted with everything needed to put them back.

Layout of a quarantine directory (mode 0700)::

    key              32 random bytes, this quarantine's AES-256 key (0600); without it nothing restores
    index.sqlite     one row per item: where it came from, its metadata, why it was taken
    vault/ID.bqv     the file's bytes, encrypted (quarantine/vault.py)

Moving a file in is crash-safe, in this order: encrypt a copy into ``vault/`` and fsync it; decrypt
it back and check its SHA-256 against what was read; rename it into place and fsync the directory;
record the row (state ``moving``) and commit; check the original is still the file that was read
(same inode, size and time) and remove it, fsync its directory; mark the row ``quarantined``.  A
``kill -9`` at any step leaves the file in place, or in quarantine, never neither: opening the
quarantine finishes or undoes an interrupted move (:meth:`Quarantine.recover`).

Restoring writes a temporary file beside the destination, checks its digest, sets mode, owner,
times and extended attributes, and links it into place, which fails rather than overwrite (unless
``force``).  Restoring needs only the key and the row, never the signature that caught the file.

Tests drive a real ``kill -9`` at each step through ``BASTION_FAULT_KILL_AT`` (names in
:data:`STEPS`): a fault-injection point, read only when set.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import signal
import sqlite3
import stat
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field

from bastion import events
from bastion.database.atomic import fsync_dir
from bastion.quarantine import vault

QUARANTINE_DIR_ENV = "BASTION_QUARANTINE_DIR"
FAULT_ENV = "BASTION_FAULT_KILL_AT"
STEPS = ("copied", "verified", "stored", "recorded", "removed")
STATES = ("moving", "quarantined", "restored", "deleted")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS items (
    id TEXT PRIMARY KEY,
    original_path TEXT NOT NULL,
    size INTEGER NOT NULL,
    sha256 TEXT NOT NULL,
    mode INTEGER NOT NULL,
    uid INTEGER NOT NULL,
    gid INTEGER NOT NULL,
    atime_ns INTEGER NOT NULL,
    mtime_ns INTEGER NOT NULL,
    inode INTEGER NOT NULL,
    device INTEGER NOT NULL,
    xattrs TEXT NOT NULL,
    verdict TEXT NOT NULL,
    signature TEXT NOT NULL,
    db_version TEXT NOT NULL,
    quarantined_at TEXT NOT NULL,
    state TEXT NOT NULL,
    restored_to TEXT,
    changed_at TEXT
)
"""


class QuarantineError(Exception):
    """An action that could not be done; nothing was lost (the message says where the file is)."""


@dataclass(slots=True)
class Item:
    """One quarantined file: its origin and metadata, why it was taken, and its state."""

    id: str
    original_path: str
    size: int
    sha256: str
    mode: int
    uid: int
    gid: int
    atime_ns: int
    mtime_ns: int
    inode: int
    device: int
    xattrs: dict[str, str] = field(default_factory=dict)  # name -> base64 value
    verdict: str = "infected"
    signature: str = ""
    db_version: str = ""
    quarantined_at: str = ""
    state: str = "moving"
    restored_to: str | None = None
    changed_at: str | None = None

    def as_json(self) -> dict[str, object]:
        out = asdict(self)
        out["mode"] = oct(self.mode)
        out["xattrs"] = sorted(self.xattrs)
        return out


def default_dir() -> str:
    """``$BASTION_QUARANTINE_DIR``, else /var/lib/bastion/quarantine for root, else under ~/.local/share."""
    from bastion.paths import located

    return located(QUARANTINE_DIR_ENV, "/var/lib/bastion/quarantine", "XDG_DATA_HOME", (".local", "share"),
                   "quarantine")


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def _fault(step: str) -> None:
    if os.environ.get(FAULT_ENV) == step:
        os.kill(os.getpid(), signal.SIGKILL)


def _read_xattrs(fd: int) -> dict[str, str]:
    out: dict[str, str] = {}
    try:
        names = os.listxattr(fd)
    except OSError:
        return out
    for name in names:
        with contextlib.suppress(OSError):
            out[name] = base64.b64encode(os.getxattr(fd, name)).decode()
    return out


class Quarantine:
    """A quarantine directory (created on first use).  Not for concurrent use: callers serialize."""

    def __init__(self, root: str | None = None) -> None:
        self.root = os.path.abspath(root or default_dir())
        self.vault_dir = os.path.join(self.root, "vault")
        os.makedirs(self.vault_dir, mode=0o700, exist_ok=True)
        os.chmod(self.root, 0o700)
        self.key = self._key()
        # callers serialize their use (one at a time); the connection may move between threads
        self.db = sqlite3.connect(os.path.join(self.root, "index.sqlite"), isolation_level=None,
                                  check_same_thread=False)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=FULL")
        self.db.execute(_SCHEMA)
        self.recovered = self.recover()

    def close(self) -> None:
        self.db.close()

    def __enter__(self) -> Quarantine:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------ key and paths
    def _key(self) -> bytes:
        path = os.path.join(self.root, "key")
        try:
            with open(path, "rb") as fh:
                key = fh.read()
        except FileNotFoundError:
            fd, tmp = tempfile.mkstemp(prefix=".key-", dir=self.root)
            with os.fdopen(fd, "wb") as fh:
                fh.write(vault.new_key())
                fh.flush()
                os.fsync(fh.fileno())
            try:
                os.link(tmp, path)  # never replaces a key another process made meanwhile
            except FileExistsError:
                pass
            os.unlink(tmp)
            fsync_dir(self.root)
            with open(path, "rb") as fh:
                key = fh.read()
        if len(key) != 32:
            raise QuarantineError(f"{path}: not a quarantine key (32 bytes expected)")
        return key

    def _blob(self, item_id: str) -> str:
        return os.path.join(self.vault_dir, f"{item_id}.bqv")

    # ------------------------------------------------------------------ rows
    def _row(self, item: Item) -> tuple:
        d = asdict(item)
        d["xattrs"] = json.dumps(item.xattrs, sort_keys=True)
        return tuple(d.values())

    def _item(self, row: tuple) -> Item:
        item = Item(*row)
        item.xattrs = json.loads(row[11])
        return item

    def _set_state(self, item_id: str, state: str, restored_to: str | None = None) -> None:
        self.db.execute("UPDATE items SET state = ?, restored_to = COALESCE(?, restored_to), changed_at = ? "
                        "WHERE id = ?", (state, restored_to, _now(), item_id))

    def items(self, states: tuple[str, ...] = ("quarantined",)) -> list[Item]:
        marks = ",".join("?" * len(states))
        rows = self.db.execute(f"SELECT * FROM items WHERE state IN ({marks}) ORDER BY quarantined_at, id",
                               states).fetchall()
        return [self._item(r) for r in rows]

    def get(self, ref: str) -> Item:
        """An item by its id or a unique prefix of it (at least 4 characters)."""
        if len(ref) < 4:
            raise QuarantineError(f"{ref!r}: give at least 4 characters of the id")
        rows = self.db.execute("SELECT * FROM items WHERE id LIKE ? || '%'", (ref,)).fetchall()
        if not rows:
            raise QuarantineError(f"{ref}: no such quarantine item")
        if len(rows) > 1:
            raise QuarantineError(f"{ref}: matches {len(rows)} items, give more of the id")
        return self._item(rows[0])

    # ------------------------------------------------------------------ moving in
    def add(self, path: str, *, verdict: str = "infected", signature: str = "", db_version: str = "") -> Item:
        """Move the regular file at ``path`` into the quarantine (see the module docstring for the steps)."""
        path = os.path.abspath(path)
        item_id = uuid.uuid4().hex
        blob = self._blob(item_id)
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
        except OSError as exc:
            raise QuarantineError(f"{path}: cannot open: {exc.strerror}; left in place") from None
        tmp = None
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                raise QuarantineError(f"{path}: not a regular file; left in place")
            xattrs = _read_xattrs(fd)
            tfd, tmp = tempfile.mkstemp(prefix=".in-", dir=self.vault_dir)
            with os.fdopen(tfd, "wb") as out, os.fdopen(os.dup(fd), "rb") as src:
                sha256, size = vault.encrypt(self.key, src, out)
                out.flush()
                os.fsync(out.fileno())
        except BaseException:
            if tmp:
                with contextlib.suppress(OSError):
                    os.unlink(tmp)
            raise
        finally:
            os.close(fd)
        _fault("copied")
        try:
            if vault.decrypt(self.key, tmp) != (sha256, size):
                raise QuarantineError(f"{path}: the encrypted copy does not read back; left in place")
        except (vault.VaultError, QuarantineError):
            os.unlink(tmp)
            raise
        _fault("verified")
        os.rename(tmp, blob)
        fsync_dir(self.vault_dir)
        _fault("stored")
        item = Item(item_id, path, size, sha256, st.st_mode, st.st_uid, st.st_gid, st.st_atime_ns, st.st_mtime_ns,
                    st.st_ino, st.st_dev, xattrs, verdict, signature, db_version, _now(), "moving")
        self.db.execute(f"INSERT INTO items VALUES ({','.join('?' * 19)})", self._row(item))
        _fault("recorded")
        self._remove_original(item)
        _fault("removed")
        self._set_state(item_id, "quarantined")
        item.state = "quarantined"
        events.record("quarantine", f"{path} moved to quarantine as {item_id}", path=path, sha256=sha256, size=size,
                      rule=signature or None, quarantine_id=item_id, verdict=verdict, db_version=db_version)
        return item

    def _remove_original(self, item: Item) -> None:
        """Remove the original if it is still the file that was copied; else undo the move."""
        try:
            st = os.lstat(item.original_path)
        except FileNotFoundError:
            return  # already gone (an earlier, interrupted run removed it)
        same = (st.st_ino, st.st_dev, st.st_size, st.st_mtime_ns) == (item.inode, item.device, item.size,
                                                                        item.mtime_ns)
        if not same:
            self._undo(item)
            raise QuarantineError(f"{item.original_path}: changed while being quarantined; left in place")
        try:
            os.unlink(item.original_path)
        except OSError as exc:
            self._undo(item)
            raise QuarantineError(f"{item.original_path}: cannot remove: {exc.strerror}; left in place") from None
        fsync_dir(os.path.dirname(item.original_path))

    def _undo(self, item: Item) -> None:
        self.db.execute("DELETE FROM items WHERE id = ?", (item.id,))
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self._blob(item.id))

    def recover(self) -> list[str]:
        """Finish or undo what a crash interrupted; returns one line per thing done."""
        done: list[str] = []
        known = set()
        for item in self.items(("moving",)):
            known.add(item.id)
            try:
                self._remove_original(item)
            except QuarantineError as exc:
                done.append(f"undone: {exc}")
                continue
            self._set_state(item.id, "quarantined")
            done.append(f"finished moving {item.original_path} into quarantine ({item.id})")
        for (item_id,) in self.db.execute("SELECT id FROM items WHERE state IN ('restored', 'deleted')").fetchall():
            blob = self._blob(item_id)
            if os.path.exists(blob):
                os.unlink(blob)
                done.append(f"removed the stored copy of {item_id} (restored or deleted before a crash)")
        live = {r[0] for r in self.db.execute("SELECT id FROM items").fetchall()}
        for name in os.listdir(self.vault_dir):
            stem = name.removesuffix(".bqv")
            if name.startswith(".in-") or (name.endswith(".bqv") and stem not in live):
                os.unlink(os.path.join(self.vault_dir, name))  # a copy whose original was never removed
                done.append(f"removed an unfinished copy {name} (its original was left in place)")
        return done

    # ------------------------------------------------------------------ getting out
    def restore(self, ref: str, dest: str | None = None, force: bool = False) -> tuple[Item, str, list[str]]:
        """Put a quarantined file back, byte for byte with its metadata.  Returns the item, where it
        went and warnings (metadata that could not be set)."""
        item = self.get(ref)
        if item.state != "quarantined":
            raise QuarantineError(f"{item.id}: {item.state}, nothing to restore")
        target = os.path.abspath(dest or item.original_path)
        if os.path.lexists(target) and not force:
            try:
                newer = os.lstat(target).st_mtime_ns > item.mtime_ns
            except OSError:
                newer = False
            raise QuarantineError(f"{target}: exists{' and is newer than the quarantined file' if newer else ''}; "
                                  "not overwritten (use --force, or --to another path)")
        directory = os.path.dirname(target)
        os.makedirs(directory, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".bastion-restore-", dir=directory)
        warnings: list[str] = []
        try:
            with os.fdopen(fd, "wb") as out:
                got = vault.decrypt(self.key, self._blob(item.id), out)
                out.flush()
                os.fsync(out.fileno())
            if got != (item.sha256, item.size):
                raise QuarantineError(f"{item.id}: the stored copy does not match its digest; not restored")
            warnings += _apply_metadata(tmp, item)
            if force:
                os.replace(tmp, target)
            else:
                os.link(tmp, target)  # fails if something appeared there meanwhile: never overwrites
                os.unlink(tmp)
        except FileExistsError:
            os.unlink(tmp)
            raise QuarantineError(f"{target}: appeared while restoring; not overwritten") from None
        except vault.VaultError as exc:
            os.unlink(tmp)
            raise QuarantineError(f"{item.id}: {exc}; still in quarantine") from None
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            raise
        fsync_dir(directory)
        self._set_state(item.id, "restored", target)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self._blob(item.id))
        item.state, item.restored_to = "restored", target
        events.record("restore", f"{item.id} restored to {target}", path=target, sha256=item.sha256, size=item.size,
                      quarantine_id=item.id, original_path=item.original_path, warnings=warnings)
        return item, target, warnings

    def delete(self, ref: str) -> Item:
        """Destroy the stored copy for good (the row stays, marked deleted, as a record)."""
        item = self.get(ref)
        if item.state != "quarantined":
            raise QuarantineError(f"{item.id}: {item.state}, nothing to delete")
        self._set_state(item.id, "deleted")
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self._blob(item.id))
        item.state = "deleted"
        events.record("quarantine-delete", f"{item.id} deleted for good ({item.original_path})",
                      path=item.original_path, sha256=item.sha256, quarantine_id=item.id)
        return item

    def export(self, ref: str, zip_path: str, password: bytes = b"infected") -> Item:
        """Write the file and its metadata into an AES-encrypted zip (password ``infected`` by default,
        the convention for sharing samples), for a vendor or an analyst.  Written atomically."""
        import pyzipper

        item = self.get(ref)
        if item.state != "quarantined":
            raise QuarantineError(f"{item.id}: {item.state}, nothing to export")
        directory = os.path.dirname(os.path.abspath(zip_path))
        fd, tmp = tempfile.mkstemp(prefix=".bastion-export-", dir=directory)
        os.close(fd)
        try:
            with pyzipper.AESZipFile(tmp, "w", compression=pyzipper.ZIP_DEFLATED,
                                     encryption=pyzipper.WZ_AES) as zf:
                zf.setpassword(password)
                zf.writestr(f"{item.sha256}.json", json.dumps(item.as_json(), indent=2))
                with open(self._blob(item.id), "rb") as src, zf.open(f"{item.sha256}.bin", "w") as dst:
                    for piece in vault.decrypt_chunks(self.key, src, os.fstat(src.fileno()).st_size):
                        dst.write(piece)
            with open(tmp, "rb") as fh:
                os.fsync(fh.fileno())
            os.replace(tmp, zip_path)
            events.record("quarantine-export", f"{item.id} exported to {zip_path}", path=item.original_path,
                          sha256=item.sha256, quarantine_id=item.id, export=os.path.abspath(zip_path))
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            raise
        return item

    def stored(self, item: Item) -> Iterator[bytes]:
        """The plaintext of a quarantined item, chunk by chunk (for ``show --hexdump`` and tests)."""
        with open(self._blob(item.id), "rb") as src:
            yield from vault.decrypt_chunks(self.key, src, os.fstat(src.fileno()).st_size)


def _apply_metadata(path: str, item: Item) -> list[str]:
    warnings = []
    if os.geteuid() == 0 or (item.uid, item.gid) == (os.geteuid(), os.getegid()):
        try:
            os.chown(path, item.uid, item.gid)
        except OSError as exc:
            warnings.append(f"owner {item.uid}:{item.gid} not set: {exc.strerror}")
    else:
        warnings.append(f"owner {item.uid}:{item.gid} not set: restoring as another user")
    for name, value in item.xattrs.items():
        try:
            os.setxattr(path, name, base64.b64decode(value))
        except OSError as exc:
            warnings.append(f"extended attribute {name} not set: {exc.strerror}")
    os.chmod(path, stat.S_IMODE(item.mode))  # after chown, which clears set-id bits
    os.utime(path, ns=(item.atime_ns, item.mtime_ns))
    return warnings
