"""Where Bastion keeps its state by default (each overridable by an environment variable), in one
place so that every layer agrees: root gets /var/lib/bastion, other users ~/.local/state/bastion."""

from __future__ import annotations

import os

DB_STORE_ENV = "BASTION_DB_STORE"


def state_dir() -> str:
    if os.geteuid() == 0:
        return "/var/lib/bastion"
    base = os.environ.get("XDG_STATE_HOME") or os.path.join(os.path.expanduser("~"), ".local", "state")
    return os.path.join(base, "bastion")


def db_store() -> str:
    """The database store of `bastion db` (versions, the active link, the transparency log)."""
    return os.environ.get(DB_STORE_ENV) or os.path.join(state_dir(), "store")


def active_database() -> str:
    """The store's active version: what a scan loads when no database is named."""
    return os.path.join(db_store(), "active")
