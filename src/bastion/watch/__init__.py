"""On-access scanning (``bastion watch``): fanotify permission events or inotify, see watcher.py."""
