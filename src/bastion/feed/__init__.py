"""Signed signature feeds (TUF): publishing one (publisher.py) and fetching one (client.py)."""
