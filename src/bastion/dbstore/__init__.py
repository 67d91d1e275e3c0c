"""Database versions (store.py) and the transparency log of their activations (tlog.py)."""
