"""Fixtures shared by the test modules (plain helpers without fixtures live in tests/helpers.py)."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.helpers import run_clamscan_clone


@pytest.fixture(scope="session")
def shared_cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One compiled-database cache for the whole session (``BASTION_CACHE_DIR`` of child processes).

    The cache is keyed by the content of the signature files, so tests that load different
    databases can share it; tests about the cache itself should use their own directory.
    """
    return tmp_path_factory.mktemp("bastion-cache")


@pytest.fixture
def bastion_clamscan(shared_cache_dir: Path) -> Callable[..., subprocess.CompletedProcess[str]]:
    """Run ``bastion-clamscan`` as a process with the shared cache: ``bastion_clamscan([args...])``."""

    def run(args: list[str], stdin: bytes | None = None, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        return run_clamscan_clone(args, shared_cache_dir, stdin=stdin, timeout=timeout)

    return run


@pytest.fixture(scope="session")
def clamav_clamscan() -> str:
    """Path of ClamAV's own ``clamscan`` (the reference for differential tests); skips if absent."""
    path = shutil.which("clamscan")
    if path is None:
        pytest.skip("ClamAV's clamscan is not installed (Debian: apt-get install clamav)")
    return path


@pytest.fixture(scope="session")
def clamav_sigtool() -> str:
    """Path of ClamAV's ``sigtool``; skips if absent."""
    path = shutil.which("sigtool")
    if path is None:
        pytest.skip("ClamAV's sigtool is not installed (Debian: apt-get install clamav)")
    return path
