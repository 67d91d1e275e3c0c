"""The scanning engine: ``Engine(db).scan_file(path) -> ScanResult``."""

from bastion.engine.scanner import Engine, ScanOptions
from bastion.engine.verdict import Detection, Evidence, ScanResult

__all__ = ["Detection", "Engine", "Evidence", "ScanOptions", "ScanResult"]
