"""A ClamAV mirror as an update source: ``main``, ``daily`` and ``bytecode`` (or the databases
named) as signed CVD containers over HTTP.

For each database the first 512 bytes (an HTTP Range request) give the CVD header and so the
version, with no DNS TXT lookup; the container is downloaded only when that version is new, with a
size cap, and is verified exactly as the loader verifies it (MD5 and ClamAV's RSA signature, the
``.info`` member list) before it is kept.  Mirrors are tried in order (``url``, or freshclam.conf's
``PrivateMirror`` and ``DatabaseMirror`` lines).  Not done yet: ``.cdiff`` incremental updates.
"""

from __future__ import annotations

import contextlib
import os
import sys
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator

from bastion.signatures.cvd import HEADER_SIZE, ContainerError, open_container, read_header

MAX_CVD_BYTES = 1 << 30
DEFAULT_DATABASES = ("main", "daily", "bytecode")


class MirrorError(Exception):
    pass


def mirrors_from_freshclam(path: str) -> list[str]:
    """PrivateMirror lines first, then DatabaseMirror lines, as freshclam tries them."""
    private, public = [], []
    with open(path, encoding="utf-8", errors="replace") as fh:
        for raw in fh:
            name, _, value = raw.strip().partition(" ")
            value = value.strip().strip('"')
            if name == "PrivateMirror" and value:
                private.append(value)
            elif name == "DatabaseMirror" and value:
                public.append(value)
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
        with _progress(url.rsplit("/", 1)[-1], total) as advance:
            while len(data) <= limit:
                piece = response.read(1 << 20)
                if not piece:
                    break
                data += piece
                advance(len(piece))
    if len(data) > limit:
        raise MirrorError(f"{url}: larger than {limit} bytes")
    return bytes(data)


@contextlib.contextmanager
def _progress(label: str, total: int | None) -> Iterator[Callable[[int], None]]:
    """A download progress bar on a terminal (stderr); nothing otherwise."""
    if not sys.stderr.isatty():
        yield lambda n: None
        return
    from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TransferSpeedColumn

    with Progress(TextColumn(label), BarColumn(), DownloadColumn(), TransferSpeedColumn(), transient=True) as bar:
        task = bar.add_task(label, total=total)
        yield lambda n: bar.update(task, advance=n)


def fetch_mirror(mirrors: list[str], databases: list[str], into: str, known: dict[str, int]) -> dict[str, int]:
    """Put the newest verified ``<db>.cvd`` of each database into ``into`` (a kept copy when the
    version is unchanged: ``known`` maps database -> version kept there).  Returns the versions."""
    if not mirrors:
        raise MirrorError("no mirror: give url or a freshclam.conf with DatabaseMirror")
    versions: dict[str, int] = {}
    for db in databases:
        problems = []
        for mirror in mirrors:
            url = f"{mirror.rstrip('/')}/{db}.cvd"
            if not url.startswith(("http://", "https://")):
                problems.append(f"{url}: only http and https mirrors")
                continue
            try:
                head = _get(url, head_only=True)
                version = read_header(head, db).version
                target = os.path.join(into, f"{db}.cvd")
                if known.get(db) == version and os.path.exists(target):
                    versions[db] = version
                    break
                data = _get(url)
                open_container(f"{db}.cvd", data)  # MD5, signature, member list: or ContainerError
                tmp = target + ".part"
                with open(tmp, "wb") as fh:
                    fh.write(data)
                os.replace(tmp, target)
                versions[db] = version
                break
            except (OSError, urllib.error.URLError, ContainerError, MirrorError, ValueError) as exc:
                problems.append(f"{url}: {exc}")
        else:
            raise MirrorError("; ".join(problems))
    return versions


