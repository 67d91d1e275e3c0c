"""Fetching a signed Bastion feed with python-tuf's client (``tuf.ngclient``), which enforces what
TUF specifies: signatures by the roles' keys and thresholds from the trusted root, expiry, version
numbers that never go back (rollback and freeze attacks), snapshot/targets consistency (mix and
match), and every target's length and hashes (an endless or altered download stops and fails).

The trusted ``root.json`` is given once (``--trust``) and kept with the feed's state; key rotations
then arrive as signed new root versions.  The feed's ``bastion-feed.json`` lists its files; every
one must be a signature file (publisher.DATA_EXTENSIONS): a feed that lists anything else, program
code above all, is refused whole.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import IO

from bastion.feed.publisher import MANIFEST, is_data


class FeedError(Exception):
    """The feed was refused; the message says why.  Nothing was staged or activated."""


@dataclass
class Fetched:
    name: str
    directory: str          # the verified files, ready to stage
    files: list[str]
    targets_version: int


def _explain(exc: Exception) -> str:
    from tuf.api import exceptions as tx

    kinds = [
        (tx.ExpiredMetadataError, "its metadata has expired (a frozen or abandoned feed)"),
        (tx.BadVersionNumberError, "a metadata version is older than, or not the one, the signed metadata "
                                   "requires (rollback or mix-and-match)"),
        (tx.UnsignedMetadataError, "its metadata is not signed by the trusted keys"),
        (tx.LengthOrHashMismatchError, "a file does not match its signed length or hash"),
        (tx.DownloadLengthMismatchError, "a download is longer than its signed length"),
        (tx.DownloadError, "it could not be downloaded"),
        (tx.RepositoryError, "its metadata is inconsistent"),
    ]
    for kind, text in kinds:
        if isinstance(exc, kind):
            return f"{text}: {exc}"
    return str(exc)


def _progress_fetcher() -> object | None:
    """python-tuf's own fetcher, with a progress bar per signature file on a terminal (None: the
    default fetcher, no bar).  Metadata downloads are small and get no bar; a target's bar has its
    signed length as total (``download_file`` is given exactly that length for targets)."""
    import sys

    if not sys.stderr.isatty():
        return None
    from tuf.ngclient import Urllib3Fetcher

    from bastion.feed.progress import progress

    def nothing(n: int) -> None:
        pass

    class ProgressFetcher(Urllib3Fetcher):
        def __init__(self) -> None:
            super().__init__()
            self.advance: Callable[[int], None] = nothing

        @contextlib.contextmanager
        def download_file(self, url: str, max_length: int) -> Iterator[IO[bytes]]:
            if "/targets/" not in url:
                with super().download_file(url, max_length) as fh:
                    yield fh
                return
            label = re.sub(r"^[0-9a-f]{64}\.", "", url.rsplit("/", 1)[-1])  # without a consistent-snapshot hash
            with progress(label, max_length) as advance:
                self.advance = advance
                try:
                    with super().download_file(url, max_length) as fh:
                        yield fh
                finally:
                    self.advance = nothing

        def _fetch(self, url: str) -> Iterator[bytes]:
            for chunk in super()._fetch(url):
                self.advance(len(chunk))
                yield chunk

    return ProgressFetcher()


def fetch(name: str, url: str, state_dir: str, trusted_root: str | None = None) -> Fetched:
    """Refresh the feed ``name`` at ``url`` and download its files into a private folder."""
    from tuf.api.exceptions import DownloadError, RepositoryError
    from tuf.ngclient import Updater

    base = os.path.join(state_dir, "feeds", name)
    metadata_dir = os.path.join(base, "metadata")
    os.makedirs(metadata_dir, exist_ok=True)
    if not os.path.exists(os.path.join(metadata_dir, "root.json")):
        if not trusted_root:
            raise FeedError(f"{name}: no trusted root yet; give the feed's root.json once with --trust")
        shutil.copyfile(trusted_root, os.path.join(metadata_dir, "root.json"))
    download_dir = os.path.join(base, "download")
    shutil.rmtree(download_dir, ignore_errors=True)
    os.makedirs(download_dir)
    url = url.rstrip("/")
    try:
        updater = Updater(metadata_dir=metadata_dir, metadata_base_url=f"{url}/metadata/",
                          target_dir=download_dir, target_base_url=f"{url}/targets/", bootstrap=None,
                          fetcher=_progress_fetcher())
        updater.refresh()
        manifest_info = updater.get_targetinfo(MANIFEST)
        if manifest_info is None:
            raise FeedError(f"{name}: the feed has no {MANIFEST}")
        with open(updater.download_target(manifest_info), encoding="utf-8") as fh:
            files = list(json.load(fh).get("files", []))
        refused = [f for f in files if not isinstance(f, str) or not is_data(f)]
        if refused:
            raise FeedError(f"{name}: the feed lists {', '.join(map(str, refused))}: not signature data; "
                            "Bastion never downloads, installs or runs program code")
        for file_name in files:
            info = updater.get_targetinfo(file_name)
            if info is None:
                raise FeedError(f"{name}: {file_name} is listed but not signed")
            updater.download_target(info, os.path.join(download_dir, file_name))
        # the verified targets metadata the updater keeps (python-tuf persists what it trusts)
        with open(os.path.join(metadata_dir, "targets.json"), encoding="utf-8") as fh:
            version = int(json.load(fh)["signed"]["version"])
    except (RepositoryError, DownloadError) as exc:
        shutil.rmtree(download_dir, ignore_errors=True)
        raise FeedError(f"{name}: refused: {_explain(exc)}") from None
    except (OSError, ValueError) as exc:
        shutil.rmtree(download_dir, ignore_errors=True)
        raise FeedError(f"{name}: refused: {exc}") from None
    os.unlink(os.path.join(download_dir, MANIFEST))
    return Fetched(name, download_dir, sorted(files), version)
