"""The quarantine: files moved out of reach, encrypted, and restorable byte for byte (store.py)."""

from bastion.quarantine.store import Item, Quarantine, QuarantineError, default_dir

__all__ = ["Item", "Quarantine", "QuarantineError", "default_dir"]
