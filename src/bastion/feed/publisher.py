"""Run your own signed signature feed: a folder any static web server can serve, signed the way The
Update Framework specifies (python-tuf's metadata API; Ed25519 keys, one per role).

Layout of a feed folder::

    keys/<role>.pem              the private keys (0600; keep root's offline in real use)
    incoming/<file>, REMOVED     what ``add``/``remove`` set for the next release (not served)
    metadata/1.root.json         root (and N.root.json for each rotation), targets.json,
    metadata/root.json           snapshot.json, timestamp.json: what clients fetch
    metadata/staged/<role>.json  a release that waits for more signatures (not served to clients)
    targets/<file>               the signature files, and bastion-feed.json listing them

A role may need several signatures (``init --threshold N``: N keys per role).  Keys kept elsewhere
(``<role>.2.pem`` on a second person's machine) sign with ``bastion feed sign DIR --key FILE``:
``publish`` signs with the keys present and, when a role still lacks signatures, stages the new
targets, snapshot and timestamp versions under ``metadata/staged/``; clients keep getting the last
complete release until the missing key holders have signed, when the release goes live (targets,
then snapshot, then timestamp, each written atomically).

Only signature *data* may be published (:data:`DATA_EXTENSIONS`); a feed never carries program code,
and clients refuse one that tries.  Every ``publish`` raises the versions of targets, snapshot and
timestamp and re-signs them; expiry is set per role (root a year, targets and snapshot a month,
timestamp a day by default): a feed that stops publishing goes stale and clients say so.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
from datetime import UTC, datetime, timedelta

from cryptography.hazmat.primitives.serialization import load_pem_private_key
from securesystemslib.signer import CryptoSigner, SSlibKey
from tuf.api.exceptions import LengthOrHashMismatchError
from tuf.api.metadata import Metadata, MetaFile, Root, Snapshot, TargetFile, Targets, Timestamp
from tuf.api.serialization.json import JSONSerializer

from bastion.database.atomic import write_file_atomically

ROLES = ("root", "targets", "snapshot", "timestamp")
MANIFEST = "bastion-feed.json"
REMOVED = "REMOVED"  # in incoming/: the names the next release drops
DATA_EXTENSIONS = frozenset({
    ".hdb", ".hsb", ".hdu", ".hsu", ".mdb", ".msb", ".mdu", ".msu", ".ndb", ".ndu", ".ldb", ".ldu", ".cdb",
    ".ftm", ".fp", ".sfp", ".ign", ".ign2", ".imp", ".pdb", ".wdb", ".gdb", ".yar", ".yara", ".cvd", ".cld", ".cud",
})
EXPIRY_DAYS = {"root": 365, "targets": 30, "snapshot": 30, "timestamp": 1}


class FeedError(Exception):
    pass


def is_data(name: str) -> bool:
    """A signature file's name; anything else (scripts, programs, libraries) is never published."""
    return os.path.splitext(name)[1].lower() in DATA_EXTENSIONS and "/" not in name and not name.startswith(".")


def _expiry(role: str, days: dict[str, float] | None) -> datetime:
    span = (days or {}).get(role, EXPIRY_DAYS[role])
    return (datetime.now(UTC) + timedelta(days=span)).replace(microsecond=0)


class Feed:
    def __init__(self, directory: str) -> None:
        self.dir = os.path.abspath(directory)
        self.keys_dir = os.path.join(self.dir, "keys")
        self.meta_dir = os.path.join(self.dir, "metadata")
        self.targets_dir = os.path.join(self.dir, "targets")
        # what the next publish brings: added or replaced files, and REMOVED listing names to drop
        self.incoming_dir = os.path.join(self.dir, "incoming")

    # ------------------------------------------------------------------ keys
    def _key_paths(self, role: str) -> list[str]:
        """``<role>.pem``, then ``<role>.2.pem``, ``<role>.3.pem``... (one per signature the role needs)."""
        names = [n for n in os.listdir(self.keys_dir) if n == f"{role}.pem" or re.fullmatch(rf"{role}\.\d+\.pem", n)]
        return [os.path.join(self.keys_dir, n) for n in sorted(names, key=lambda n: (len(n), n))]

    def _signers(self, role: str) -> list[CryptoSigner]:
        out = []
        for path in self._key_paths(role):
            with open(path, "rb") as fh:
                private = load_pem_private_key(fh.read(), password=None)
            out.append(CryptoSigner(private, SSlibKey.from_crypto(private.public_key())))
        return out

    def _new_keys(self, role: str, count: int) -> list[CryptoSigner]:
        for old in self._key_paths(role):
            os.unlink(old)
        signers = []
        for i in range(count):
            signer = CryptoSigner.generate_ed25519()
            name = f"{role}.pem" if i == 0 else f"{role}.{i + 1}.pem"
            fd = os.open(os.path.join(self.keys_dir, name), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "wb") as fh:
                fh.write(signer.private_bytes)
            signers.append(signer)
        return signers

    def _write(self, name: str, md: Metadata) -> None:
        write_file_atomically(os.path.join(self.meta_dir, name), md.to_bytes(JSONSerializer(compact=False)))

    def _load(self, name: str) -> Metadata:
        return Metadata.from_file(os.path.join(self.meta_dir, name))

    # ------------------------------------------------------------------ actions
    def init(self, days: dict[str, float] | None = None, threshold: int = 1) -> str:
        """Make the keys (``threshold`` per role: that many signatures are needed) and the first
        signed metadata; returns root.json's path (give it to clients)."""
        if os.path.exists(os.path.join(self.meta_dir, "root.json")):
            raise FeedError(f"{self.dir} is a feed already")
        if threshold < 1:
            raise FeedError("a threshold is at least 1")
        for d in (self.keys_dir, self.meta_dir, self.targets_dir):
            os.makedirs(d, exist_ok=True)
        os.chmod(self.keys_dir, 0o700)
        signers = {role: self._new_keys(role, threshold) for role in ROLES}
        root = Metadata(Root(expires=_expiry("root", days), consistent_snapshot=False))
        for role in ROLES:
            for signer in signers[role]:
                root.signed.add_key(signer.public_key, role)
            root.signed.roles[role].threshold = threshold
        for signer in signers["root"]:
            root.sign(signer, append=True)
        self._write("1.root.json", root)
        self._write("root.json", root)
        write_file_atomically(os.path.join(self.targets_dir, MANIFEST), json.dumps({"files": []}).encode())
        targets = Metadata(Targets(expires=_expiry("targets", days)))
        self._publish(targets, days, signers)
        return os.path.join(self.meta_dir, "root.json")

    def add(self, files: list[str]) -> list[str]:
        """Copy signature files into ``incoming/``: served from the next release on (what clients
        download never changes under the metadata that describes it)."""
        added = []
        for path in files:
            name = os.path.basename(path)
            if not is_data(name):
                raise FeedError(f"{name}: not a signature file; a feed carries data only, never program code")
            os.makedirs(self.incoming_dir, exist_ok=True)
            shutil.copyfile(path, os.path.join(self.incoming_dir, name))
            self._set_removed(self._removed() - {name})
            added.append(name)
        return added

    def remove(self, names: list[str]) -> None:
        """Drop published (or incoming) files from the next release on."""
        current = set(self._next_files())
        missing = [n for n in names if n not in current]
        if missing:
            raise FeedError(f"not in the feed: {', '.join(missing)}")
        for name in names:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(os.path.join(self.incoming_dir, name))
        self._set_removed(self._removed() | set(names))

    def _removed(self) -> set[str]:
        try:
            with open(os.path.join(self.incoming_dir, REMOVED), encoding="utf-8") as fh:
                return set(json.load(fh))
        except FileNotFoundError:
            return set()

    def _set_removed(self, names: set[str]) -> None:
        os.makedirs(self.incoming_dir, exist_ok=True)
        write_file_atomically(os.path.join(self.incoming_dir, REMOVED), json.dumps(sorted(names)).encode())

    def _next_files(self) -> dict[str, str]:
        """The next release's files: the served ones, less the removed, with incoming ones over them."""
        files = {n: os.path.join(self.targets_dir, n) for n in os.listdir(self.targets_dir)
                 if n != MANIFEST and is_data(n)}
        if os.path.isdir(self.incoming_dir):
            files.update({n: os.path.join(self.incoming_dir, n) for n in os.listdir(self.incoming_dir)
                          if n != REMOVED and is_data(n)})
        for name in self._removed():
            files.pop(name, None)
        return dict(sorted(files.items()))

    def publish(self, days: dict[str, float] | None = None) -> int:
        """Sign the current files: new targets, snapshot and timestamp versions.  Returns the version
        (live, or staged when a role still needs signatures: see :meth:`waiting`)."""
        signers = {role: self._signers(role) for role in ("targets", "snapshot", "timestamp")}
        targets = self._load("targets.json")
        targets.signed.version += 1
        targets.signed.expires = _expiry("targets", days)
        return self._publish(targets, days, signers)

    def _publish(self, targets: Metadata, days: dict[str, float] | None,
                 signers: dict[str, list[CryptoSigner]]) -> int:
        paths = self._next_files()
        manifest = json.dumps({"files": list(paths)}, indent=2).encode()
        targets.signed.targets = {name: TargetFile.from_file(name, path, ["sha256"]) for name, path in paths.items()}
        targets.signed.targets[MANIFEST] = TargetFile.from_data(MANIFEST, manifest, ["sha256"])
        snapshot = self._next("snapshot", Snapshot, days)
        snapshot.signed.meta["targets.json"] = MetaFile(version=targets.signed.version)
        timestamp = self._next("timestamp", Timestamp, days)
        timestamp.signed.snapshot_meta = MetaFile(version=snapshot.signed.version)
        release = {"targets": targets, "snapshot": snapshot, "timestamp": timestamp}
        for role, md in release.items():
            md.signatures.clear()
            for signer in signers[role]:
                md.sign(signer, append=True)
        shutil.rmtree(self.staged_dir, ignore_errors=True)  # a new release replaces one still waiting
        os.makedirs(self.staged_dir)
        write_file_atomically(os.path.join(self.staged_dir, MANIFEST), manifest)
        for role, md in release.items():
            write_file_atomically(os.path.join(self.staged_dir, f"{role}.json"),
                                  md.to_bytes(JSONSerializer(compact=False)))
        if not self.waiting():
            self._release()
        return targets.signed.version

    def _release(self) -> None:
        """Serve the staged release: the file list, then targets, snapshot and timestamp (last: the
        one clients start from), each written atomically; until then clients get the previous one."""
        staged = Metadata.from_file(os.path.join(self.staged_dir, "targets.json"))
        for name, info in staged.signed.targets.items():  # incoming files must be what was signed
            path = os.path.join(self.incoming_dir, name)
            if name != MANIFEST and os.path.exists(path):
                with open(path, "rb") as fh:
                    try:
                        info.verify_length_and_hashes(fh.read())
                    except LengthOrHashMismatchError:
                        raise FeedError(f"incoming/{name} changed since it was signed: publish again") from None
        for name in staged.signed.targets:
            path = os.path.join(self.incoming_dir, name)
            if name != MANIFEST and os.path.exists(path):
                os.replace(path, os.path.join(self.targets_dir, name))
        for name in self._removed():
            with contextlib.suppress(FileNotFoundError):
                os.unlink(os.path.join(self.targets_dir, name))
        shutil.rmtree(self.incoming_dir, ignore_errors=True)
        with open(os.path.join(self.staged_dir, MANIFEST), "rb") as fh:
            write_file_atomically(os.path.join(self.targets_dir, MANIFEST), fh.read())
        for role in ("targets", "snapshot", "timestamp"):
            self._write(f"{role}.json", Metadata.from_file(os.path.join(self.staged_dir, f"{role}.json")))
        shutil.rmtree(self.staged_dir)

    @property
    def staged_dir(self) -> str:
        return os.path.join(self.meta_dir, "staged")

    def _missing(self, role: str, md: Metadata) -> int:
        """How many more signatures by the role's keys (as the current root names them) ``md`` needs."""
        root = self._load("root.json").signed
        result = root.get_verification_result(role, md.signed_bytes, md.signatures)
        return 0 if result.verified else result.missing

    def waiting(self) -> dict[str, int]:
        """The staged release's roles that still need signatures, with how many each needs."""
        out = {}
        for role in ("targets", "snapshot", "timestamp"):
            path = os.path.join(self.staged_dir, f"{role}.json")
            if os.path.exists(path):
                missing = self._missing(role, Metadata.from_file(path))
                if missing:
                    out[role] = missing
        return out

    def sign(self, key_file: str) -> dict[str, int]:
        """Add the signature of the private key in ``key_file`` to every role of the staged release it
        is a key of; when no role needs more, the release goes live.  Returns what still waits."""
        if not os.path.isdir(self.staged_dir):
            raise FeedError("nothing is waiting for signatures (publish first)")
        with open(key_file, "rb") as fh:
            private = load_pem_private_key(fh.read(), password=None)
        signer = CryptoSigner(private, SSlibKey.from_crypto(private.public_key()))
        root = self._load("root.json").signed
        signed_any = False
        for role in ("targets", "snapshot", "timestamp"):
            path = os.path.join(self.staged_dir, f"{role}.json")
            if not os.path.exists(path) or signer.public_key.keyid not in root.roles[role].keyids:
                continue
            md = Metadata.from_file(path)
            md.sign(signer, append=True)
            write_file_atomically(path, md.to_bytes(JSONSerializer(compact=False)))
            signed_any = True
        if not signed_any:
            raise FeedError(f"{key_file} is not a key of any role waiting for a signature")
        waiting = self.waiting()
        if not waiting:
            self._release()
        return waiting

    def _next(self, role: str, kind: type, days: dict[str, float] | None) -> Metadata:
        """The role's metadata with its version raised (or its first version) and a fresh expiry."""
        if os.path.exists(os.path.join(self.meta_dir, f"{role}.json")):
            md = self._load(f"{role}.json")
            md.signed.version += 1
        else:
            md = Metadata(kind())
        md.signed.expires = _expiry(role, days)
        return md

    def rotate_key(self, role: str) -> None:
        """Replace a role's keys (revoking the old ones): a new root version signed by the old root
        keys (and the new ones when root's are replaced), then everything re-signed."""
        root = self._load("root.json")
        old_root_signers = self._signers("root")
        for keyid in list(root.signed.roles[role].keyids):
            root.signed.revoke_key(keyid, role)
        new = self._new_keys(role, root.signed.roles[role].threshold)
        for signer in new:
            root.signed.add_key(signer.public_key, role)
        root.signed.version += 1
        root.signatures.clear()
        for signer in [*old_root_signers, *(new if role == "root" else [])]:
            root.sign(signer, append=True)
        self._write(f"{root.signed.version}.root.json", root)
        self._write("root.json", root)
        self.publish()
