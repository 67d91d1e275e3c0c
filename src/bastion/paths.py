"""Where Bastion keeps its state by default (each overridable by an environment variable), in one
place so that every layer agrees: root gets /var/lib/bastion, other users ~/.local/state/bastion."""

from __future__ import annotations

import os

DB_STORE_ENV = "BASTION_DB_STORE"


def located(env: str, system: str, user_base_env: str, user_default: tuple[str, ...], *tail: str) -> str:
    """``$env`` if set; else ``system`` for root; else ``$user_base_env`` (or ``~/<user_default>``)
    joined with ``bastion`` and ``tail``."""
    given = os.environ.get(env)
    if given:
        return given
    if os.geteuid() == 0:
        return system
    base = os.environ.get(user_base_env) or os.path.join(os.path.expanduser("~"), *user_default)
    return os.path.join(base, "bastion", *tail)


def user_state(env: str, system: str, *tail: str) -> str:
    """A state file or folder: ``$env``, /var/... for root, else under ~/.local/state/bastion."""
    return located(env, system, "XDG_STATE_HOME", (".local", "state"), *tail)


BASTION_TOML = "/etc/bastion/bastion.toml"


def bastion_toml(given: str | None) -> str | None:
    """The bastion.toml to read: the one given, else /etc/bastion/bastion.toml if there is one."""
    return given or (BASTION_TOML if os.path.isfile(BASTION_TOML) else None)


def state_dir() -> str:
    return user_state("", "/var/lib/bastion")


def db_store() -> str:
    """The database store of `bastion db` (versions, the active link, the transparency log)."""
    return user_state(DB_STORE_ENV, "/var/lib/bastion/store", "store")


def active_database() -> str:
    """The store's active version: what a scan loads when no database is named."""
    return os.path.join(db_store(), "active")
