"""A ClamAV mirror as an update source: ``main``, ``daily`` and ``bytecode`` (or the databases
named) as signed CVD containers over HTTP.

For each database the first 512 bytes (an HTTP Range request) give the CVD header and so the
version, with no DNS TXT lookup; the container is downloaded only when that version is new, with a
size cap, and is verified exactly as the loader verifies it (MD5 and ClamAV's RSA signature, the
``.info`` member list) before it is kept.  Mirrors are tried in order (``url``, or freshclam.conf's
``PrivateMirror`` and ``DatabaseMirror`` lines).

A database already kept at an older version is brought up to date with the mirror's ``.cdiff``
files, one per version, into a ``<db>.cld`` (feed/cdiff.py, feed/cld.py), as freshclam does; when
any of them is missing or fails, the whole ``.cvd`` is downloaded instead, and the notes say so.
Not done: ``.cdiff.sign``/``.cvd.sign`` downloads (ClamAV 1.5's PKCS#7 signatures).
"""

from __future__ import annotations

import os
import tempfile
import urllib.error
import urllib.request
from dataclasses import dataclass

from bastion.clamconf import values_of
from bastion.database.atomic import write_file_atomically
from bastion.feed import cld
from bastion.feed.cdiff import CdiffError, apply_script, read_cdiff
from bastion.feed.progress import progress
from bastion.signatures.cvd import HEADER_SIZE, ContainerError, open_container, read_header

MAX_CVD_BYTES = 1 << 30
MAX_CDIFF_BYTES = 64 << 20
# Past this many versions behind, the whole CVD is fetched (freshclam has no limit; a daily cdiff is
# a few KiB to a few hundred, a whole daily.cvd tens of MiB: a choice, not a measurement).
MAX_CDIFFS = 100
DEFAULT_DATABASES = ("main", "daily", "bytecode")


class MirrorError(Exception):
    pass


def mirrors_from_freshclam(path: str) -> list[str]:
    """PrivateMirror lines first, then DatabaseMirror lines, as freshclam tries them."""
    private, public = values_of(path, "PrivateMirror"), values_of(path, "DatabaseMirror")
    return [m if "://" in m else f"https://{m}" for m in private + public]


def _get(url: str, head_only: bool = False, limit: int = MAX_CVD_BYTES) -> bytes:
    """The file, or (``head_only``) its first 512 bytes: asked with a Range header, and cut there
    when a server sends the whole file anyway."""
    headers = {"User-Agent": "Bastion"}
    if head_only:
        headers["Range"] = f"bytes=0-{HEADER_SIZE - 1}"
    request = urllib.request.Request(url, headers=headers)
    with urllib.request.urlopen(request, timeout=60) as response:  # noqa: S310 - http(s) mirrors only
        if head_only:
            return response.read(HEADER_SIZE)
        total = int(response.headers.get("Content-Length") or 0) or None
        data = bytearray()
        with progress(url.rsplit("/", 1)[-1], total) as advance:
            while len(data) <= limit:
                piece = response.read(1 << 20)
                if not piece:
                    break
                data += piece
                advance(len(piece))
    if len(data) > limit:
        raise MirrorError(f"{url}: larger than {limit} bytes")
    return bytes(data)


@dataclass(frozen=True, slots=True)
class _Local:
    """The copy of a database kept from the last update: ``<db>.cvd`` or ``<db>.cld``, and its version."""

    path: str
    version: int


def _local(into: str, db: str) -> _Local | None:
    found = []
    for ext in ("cvd", "cld"):
        path = os.path.join(into, f"{db}.{ext}")
        try:
            with open(path, "rb") as fh:
                found.append(_Local(path, read_header(fh.read(HEADER_SIZE), db).version))
        except (OSError, ContainerError):
            continue
    return max(found, key=lambda k: k.version, default=None)


def _replace_copy(into: str, db: str, name: str, data: bytes) -> None:
    """Put the new ``<db>.cvd``/``<db>.cld`` in place, then remove the other kind (never before)."""
    write_file_atomically(os.path.join(into, name), data)
    for ext in ("cvd", "cld"):
        other = os.path.join(into, f"{db}.{ext}")
        if other != os.path.join(into, name) and os.path.exists(other):
            os.unlink(other)


def _by_cdiffs(base: str, db: str, local: _Local, remote: int, into: str) -> None:
    """Bring ``local`` to version ``remote`` with ``<db>-<N>.cdiff`` files (as freshclam does): each
    verified and applied to the unpacked container in a private folder, then ``<db>.cld`` rebuilt,
    verified like any container, and only then put in place.  Raises on any failure."""
    if remote - local.version > MAX_CDIFFS:
        raise MirrorError(f"{remote - local.version} versions behind (over {MAX_CDIFFS} cdiffs)")
    container = open_container(local.path)
    with tempfile.TemporaryDirectory(prefix=".cdiff-", dir=into) as work:
        cld.unpack(container, work)
        for version in range(local.version + 1, remote + 1):
            name = f"{db}-{version}.cdiff"
            try:
                data = _get(f"{base}/{name}", limit=MAX_CDIFF_BYTES)
                apply_script(read_cdiff(data, version).script, work)
            except (OSError, CdiffError, MirrorError) as exc:
                raise MirrorError(f"{name}: {exc}") from None
        data = cld.build_cld(work, db)
    built = open_container(f"{db}.cld", data)  # the .info signature and every member's size and SHA-256
    if built.header.version != remote:
        raise MirrorError(f"the patched {db}.cld is version {built.header.version}, not {remote}")
    _replace_copy(into, db, f"{db}.cld", data)


def fetch_mirror(mirrors: list[str], databases: list[str], into: str,
                 notes: list[str] | None = None) -> dict[str, int]:
    """Keep the newest verified copy of each database in ``into`` and return the versions.

    A database already there at version N with the mirror at M > N is patched with
    ``<db>-<N+1>.cdiff`` .. ``<db>-<M>.cdiff`` into ``<db>.cld``; when that fails (a cdiff missing,
    refused or not applying) the whole ``<db>.cvd`` is downloaded instead.  ``notes`` gets one line
    per database that changed, saying how."""
    if not mirrors:
        raise MirrorError("no mirror: give url or a freshclam.conf with DatabaseMirror")
    notes = notes if notes is not None else []
    versions: dict[str, int] = {}
    for db in databases:
        problems = []
        for mirror in mirrors:
            base = mirror.rstrip("/")
            url = f"{base}/{db}.cvd"
            if not url.startswith(("http://", "https://")):
                problems.append(f"{url}: only http and https mirrors")
                continue
            how = ""
            try:
                remote = read_header(_get(url, head_only=True), db).version
                local = _local(into, db)
                if local is not None and local.version >= remote:
                    versions[db] = local.version
                    break
                how = "downloaded whole"
                if local is not None:
                    try:
                        _by_cdiffs(base, db, local, remote, into)
                        count = remote - local.version
                        notes.append(f"{db} {local.version} -> {remote} by {count} cdiff{'s' * (count > 1)}")
                        versions[db] = remote
                        break
                    except (OSError, urllib.error.URLError, ContainerError, MirrorError, ValueError) as exc:
                        how = f"incremental update failed ({exc}): downloaded {db}.cvd whole"
                data = _get(url)
                container = open_container(f"{db}.cvd", data)  # MD5, signature, member list: or ContainerError
                _replace_copy(into, db, f"{db}.cvd", data)
                versions[db] = container.header.version
                notes.append(f"{db} {local.version if local else 'none'} -> {container.header.version}: {how}")
                break
            except (OSError, urllib.error.URLError, ContainerError, MirrorError, ValueError) as exc:
                problems.append(f"{url}: {exc}" + (f" (and before that, {how.split(': downloaded')[0]})"
                                                   if how.startswith("incremental") else ""))
        else:
            raise MirrorError("; ".join(problems))
    return versions
