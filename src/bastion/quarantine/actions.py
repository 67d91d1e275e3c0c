"""clamscan's actions on an infected file, done so that nothing is lost: ``--copy=DIR``, ``--move=DIR``
and ``--remove``.  Each runs only because the user named it on the command line.

A copy is written to a temporary file in DIR, fsynced, checked against the original's SHA-256 and
linked into place under the original's name, or ``NAME.001``, ``NAME.002``... as clamscan names
them (a link never overwrites).  A move within one file system is a link plus an unlink of the
original (a crash leaves both names, never neither); across file systems it is a copy, then the
original is removed only if it is still the file that was copied.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import tempfile

from bastion.database.atomic import fsync_dir


class ActionError(Exception):
    pass


def _free_name(directory: str, name: str) -> str:
    target = os.path.join(directory, name)
    n = 0
    while os.path.lexists(target):
        n += 1
        if n > 999:
            raise ActionError(f"no free name for {name} in {directory}")
        target = os.path.join(directory, f"{name}.{n:03d}")
    return target


def _link_free(src: str, directory: str, name: str) -> str:
    """Give ``src`` a new, unused name in ``directory``; retry if another process takes it first."""
    while True:
        target = _free_name(directory, name)
        try:
            os.link(src, target)
            return target
        except FileExistsError:
            continue


def _digest(path: str) -> tuple[str, os.stat_result]:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        st = os.fstat(fh.fileno())
        for piece in iter(lambda: fh.read(1 << 20), b""):
            h.update(piece)
    return h.hexdigest(), st


def copy_to(path: str, directory: str) -> str:
    """Copy the file at ``path`` (its real path) into ``directory``; returns the copy's path."""
    real = os.path.realpath(path)
    digest, st = _digest(real)
    fd, tmp = tempfile.mkstemp(prefix=".bastion-copy-", dir=directory)
    try:
        with os.fdopen(fd, "wb") as out, open(real, "rb") as src:
            shutil.copyfileobj(src, out, 1 << 20)
            out.flush()
            os.fsync(out.fileno())
        if _digest(tmp)[0] != digest:
            raise ActionError(f"{real} changed while being copied")
        os.chmod(tmp, st.st_mode & 0o7777)
        os.utime(tmp, ns=(st.st_atime_ns, st.st_mtime_ns))
        target = _link_free(tmp, directory, os.path.basename(real))
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
    fsync_dir(directory)
    return target


def move_to(path: str, directory: str) -> str:
    """Move the file at ``path`` (its real path) into ``directory``; returns its new path."""
    real = os.path.realpath(path)
    st = os.lstat(real)
    if st.st_dev == os.stat(directory).st_dev:
        target = _link_free(real, directory, os.path.basename(real))
        fsync_dir(directory)
        os.unlink(real)
        fsync_dir(os.path.dirname(real))
        return target
    target = copy_to(real, directory)
    now = os.lstat(real)
    if (now.st_ino, now.st_size, now.st_mtime_ns) != (st.st_ino, st.st_size, st.st_mtime_ns):
        raise ActionError(f"{real} changed while being moved; the copy is {target}, the original is left")
    os.unlink(real)
    fsync_dir(os.path.dirname(real))
    return target


def remove(path: str) -> None:
    real = os.path.realpath(path)
    os.unlink(real)
    fsync_dir(os.path.dirname(real))
