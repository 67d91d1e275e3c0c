"""freshclam's ``DatabaseCustomURL``: single database files (``.ndb``, ``.hdb``, ``.ldb``, ``.yar``,
``.cvd``, ...) fetched from ``http://``, ``https://`` or ``file://`` URLs.

Each file is downloaded only when it changed, as freshclam does: over HTTP with ``If-None-Match``
(the ETag the server gave last time) and ``If-Modified-Since`` (its ``Last-Modified``), a ``304``
meaning unchanged; a ``file://`` source by its modification time and size.  A new copy is checked
before it is kept (a container verifies as the loader verifies it; any other file parses with
Bastion's own parsers), then moved atomically into the folder under the URL's file name.  Each URL
stands alone: one that fails is reported and its last good copy stays; the others still update.
A URL no longer listed has its file removed.
"""

from __future__ import annotations

import os
import re
import tempfile
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass, field

from bastion.clamconf import values_of
from bastion.database.atomic import write_file_atomically
from bastion.signatures.cvd import ContainerError, open_container
from bastion.signatures.errors import SignatureError
from bastion.signatures.loader import SUPPORTED, discover, extension, parse_sources

MAX_CUSTOM_BYTES = 1 << 30
DATABASE_EXTENSIONS = frozenset(set(SUPPORTED) - {".info"})  # the kinds Bastion loads
_FILE_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]*")


class CustomURLError(ValueError):
    pass


@dataclass
class CustomResult:
    """What fetching the custom URLs gave: ``cache`` (per URL: its file name and the ETag,
    Last-Modified or mtime/size it had), one note per file that changed, one problem per URL that
    failed."""

    cache: dict[str, dict] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)


def urls_from_freshclam(path: str) -> list[str]:
    """freshclam.conf's ``DatabaseCustomURL`` lines, in order."""
    return values_of(path, "DatabaseCustomURL")


def file_name(url: str) -> str:
    """The database file name a URL gives (its last path part), or :class:`CustomURLError`."""
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("http", "https", "file"):
        raise CustomURLError("only http://, https:// and file:// URLs")
    name = urllib.parse.unquote(parts.path.rsplit("/", 1)[-1])
    if not _FILE_NAME.fullmatch(name) or extension(name) not in DATABASE_EXTENSIONS:
        raise CustomURLError(f"{name!r} is not the name of a signature database file")
    return name


def fetch_custom_urls(urls: list[str], into: str, cache: dict[str, dict]) -> CustomResult:
    """Bring ``into`` up to date with ``urls``; ``cache`` is the previous result's cache."""
    result = CustomResult()
    os.makedirs(into, exist_ok=True)
    taken: dict[str, str] = {}
    for url in urls:
        try:
            name = file_name(url)
            if name in taken:
                raise CustomURLError(f"the same file name as {taken[name]}")
            taken[name] = url
            before = dict(cache.get(url) or {})
            if before.get("file") != name or not os.path.isfile(os.path.join(into, name)):
                before = {}
            after, data = (_fetch_file if url.startswith("file:") else _fetch_http)(url, before)
            if data is not None:
                _keep(into, name, data)
                result.notes.append(f"{name} {'updated' if before else 'added'}")
            result.cache[url] = {**after, "file": name}
        except (OSError, urllib.error.URLError, CustomURLError, ContainerError, SignatureError, ValueError) as exc:
            result.problems.append(f"{url}: {exc}")
            if url in cache:
                result.cache[url] = cache[url]  # the last good copy stays
                taken.setdefault(cache[url].get("file", ""), url)
    for name in os.listdir(into):
        if not name.startswith(".") and name not in taken and os.path.isfile(os.path.join(into, name)):
            os.unlink(os.path.join(into, name))
            result.notes.append(f"{name} removed (its URL is no longer listed)")
    return result


def _fetch_http(url: str, before: dict) -> tuple[dict, bytes | None]:
    headers = {"User-Agent": "Bastion"}
    if before.get("etag"):
        headers["If-None-Match"] = before["etag"]
    if before.get("last_modified"):
        headers["If-Modified-Since"] = before["last_modified"]
    request = urllib.request.Request(url, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=60) as response:  # noqa: S310 - http(s) checked
            data = response.read(MAX_CUSTOM_BYTES + 1)
            etag, modified = response.headers.get("ETag"), response.headers.get("Last-Modified")
    except urllib.error.HTTPError as exc:
        if exc.code == 304 and before:
            return before, None
        raise
    if len(data) > MAX_CUSTOM_BYTES:
        raise CustomURLError(f"larger than {MAX_CUSTOM_BYTES} bytes")
    return {k: v for k, v in (("etag", etag), ("last_modified", modified)) if v}, data


def _fetch_file(url: str, before: dict) -> tuple[dict, bytes | None]:
    parts = urllib.parse.urlsplit(url)
    if parts.netloc not in ("", "localhost"):
        raise CustomURLError("a file:// URL names a file on this machine")
    path = urllib.parse.unquote(parts.path)
    st = os.stat(path)
    seen = {"mtime_ns": st.st_mtime_ns, "size": st.st_size}
    if before and all(before.get(k) == v for k, v in seen.items()):
        return before, None
    if st.st_size > MAX_CUSTOM_BYTES:
        raise CustomURLError(f"larger than {MAX_CUSTOM_BYTES} bytes")
    with open(path, "rb") as fh:
        data = fh.read(MAX_CUSTOM_BYTES + 1)
    return seen, data


def _keep(into: str, name: str, data: bytes) -> None:
    """Check a new copy in a private folder, then move it into place (one rename)."""
    with tempfile.TemporaryDirectory(prefix=".custom-", dir=into) as work:
        path = os.path.join(work, name)
        write_file_atomically(path, data)
        if extension(name) in (".cvd", ".cld", ".cud"):
            open_container(path)
        else:
            parse_sources(discover([path], pua=True), pua=True)
        os.replace(path, os.path.join(into, name))
