"""clamd.conf, read the way clamd reads it: ``Option value`` lines, ``#`` comments, sizes with K/M/G,
booleans yes/no/true/false/1/0, and the sample file's ``Example`` line refused.

Options Bastion acts on are fields of :class:`DaemonConfig`; every other known clamd option is
accepted and named in a warning (one line each); an unknown option is an error naming its line.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

MiB = 1024 * 1024
_SIZE = re.compile(r"(\d+)([kKmMgG]?)")


class ConfigError(ValueError):
    def __init__(self, path: str, line: int, reason: str) -> None:
        super().__init__(f"{path}:{line}: {reason}")


@dataclass
class DaemonConfig:
    local_socket: str | None = None
    local_socket_mode: int = 0o666
    tcp_socket: int | None = None
    tcp_addrs: list[str] = field(default_factory=list)
    max_threads: int = 10
    max_queue: int = 100
    max_connection_queue_length: int = 200
    stream_max_length: int = 100 * MiB
    read_timeout: float = 120.0
    command_read_timeout: float = 30.0
    idle_timeout: float = 30.0
    database_directory: str | None = None
    max_file_size: int = 100 * MiB
    max_scan_size: int = 400 * MiB
    max_files: int = 10_000
    max_recursion: int = 17
    max_directory_recursion: int = 15
    exclude_path: list[str] = field(default_factory=list)
    pid_file: str | None = None
    log_file: str | None = None
    foreground: bool = False
    detect_pua: bool = False
    allow_all_match_scan: bool = True
    ignored: list[str] = field(default_factory=list)


def _size(text: str) -> int:
    m = _SIZE.fullmatch(text.strip())
    if not m:
        raise ValueError(f"bad size {text!r}")
    return int(m.group(1)) * {"": 1, "k": 1024, "m": MiB, "g": 1024 * MiB}[m.group(2).lower()]


def _bool(text: str) -> bool:
    low = text.strip().lower()
    if low in ("yes", "true", "1"):
        return True
    if low in ("no", "false", "0"):
        return False
    raise ValueError(f"bad boolean {text!r}")


# option -> (field, converter, repeatable)
_ACTED_ON = {
    "LocalSocket": ("local_socket", str, False),
    "LocalSocketMode": ("local_socket_mode", lambda v: int(v, 8), False),
    "TCPSocket": ("tcp_socket", int, False),
    "TCPAddr": ("tcp_addrs", str, True),
    "MaxThreads": ("max_threads", int, False),
    "MaxQueue": ("max_queue", int, False),
    "MaxConnectionQueueLength": ("max_connection_queue_length", int, False),
    "StreamMaxLength": ("stream_max_length", _size, False),
    "ReadTimeout": ("read_timeout", float, False),
    "CommandReadTimeout": ("command_read_timeout", float, False),
    "IdleTimeout": ("idle_timeout", float, False),
    "DatabaseDirectory": ("database_directory", str, False),
    "MaxFileSize": ("max_file_size", _size, False),
    "MaxScanSize": ("max_scan_size", _size, False),
    "MaxFiles": ("max_files", int, False),
    "MaxRecursion": ("max_recursion", int, False),
    "MaxDirectoryRecursion": ("max_directory_recursion", int, False),
    "ExcludePath": ("exclude_path", str, True),
    "PidFile": ("pid_file", str, False),
    "LogFile": ("log_file", str, False),
    "Foreground": ("foreground", _bool, False),
    "DetectPUA": ("detect_pua", _bool, False),
    "AllowAllMatchScan": ("allow_all_match_scan", _bool, False),
}
# clamd options that load but that Bastion does not act on (yet): named in a warning
_IGNORED_NAMES = """
LocalSocketGroup FixStaleSocket User LogTime LogSyslog LogVerbose LogClean LogFileMaxSize LogFileUnlock
LogFacility LogRotate ExtendedDetectionInfo TemporaryDirectory OfficialDatabaseOnly ConcurrentDatabaseReload
SelfCheck SendBufTimeout HeuristicAlerts HeuristicScanPrecedence AlertEncrypted AlertEncryptedArchive
AlertEncryptedDoc AlertBrokenExecutables AlertBrokenMedia AlertOLE2Macros AlertExceedsMax
AlertPhishingSSLMismatch AlertPhishingCloak AlertPartitionIntersection ScanPE ScanELF ScanOLE2 ScanPDF ScanSWF
ScanHTML ScanXMLDOCS ScanHWP3 ScanOneNote ScanMail ScanArchive ScanImage ScanImageFuzzyHash
ScanPartialMessages PhishingSignatures PhishingScanURLs Bytecode BytecodeSecurity BytecodeUnsigned
BytecodeTimeout PCREMatchLimit PCRERecMatchLimit PCREMaxFileSize MaxScanTime MaxEmbeddedPE MaxHTMLNormalize
MaxHTMLNoTags MaxScriptNormalize MaxZipTypeRcg MaxPartitions MaxIconsPE MaxRecHWP3 FollowDirectorySymlinks
FollowFileSymlinks CrossFilesystems VirusEvent ExitOnOOM DisableCache DisableCertCheck LeaveTemporaryFiles
GenerateMetadataJson Debug StatsEnabled StatsHostID StatsPEDisabled StatsTimeout ExcludePUA IncludePUA
StructuredDataDetection StructuredMinCreditCardCount StructuredCCOnly StructuredMinSSNCount
StructuredSSNFormatNormal StructuredSSNFormatStripped OnAccessIncludePath OnAccessExcludePath
OnAccessMaxFileSize OnAccessPrevention OnAccessExtraScanning OnAccessExcludeUname OnAccessExcludeUID
OnAccessExcludeRootUID OnAccessMountPath OnAccessDisableDDD OnAccessMaxThreads OnAccessCurlTimeout
OnAccessRetryAttempts OnAccessDenyOnError ForceToDisk FIPSCryptoHashLimits
"""
_KNOWN_IGNORED = frozenset(_IGNORED_NAMES.split())  # noqa: SIM905 - a table, kept readable


def parse_clamd_conf(path: str, text: str | None = None) -> DaemonConfig:
    if text is None:
        with open(path, encoding="utf-8", errors="replace") as fh:
            text = fh.read()
    cfg = DaemonConfig()
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        name, _, value = line.partition(" ")
        value = value.strip().strip('"')
        if name == "Example":
            raise ConfigError(path, number, "remove the 'Example' line of the sample configuration")
        if name in _ACTED_ON:
            attr, convert, repeatable = _ACTED_ON[name]
            try:
                converted = convert(value)
            except ValueError as exc:
                raise ConfigError(path, number, f"{name}: {exc}") from None
            if repeatable:
                getattr(cfg, attr).append(converted)
            else:
                setattr(cfg, attr, converted)
        elif name in _KNOWN_IGNORED:
            cfg.ignored.append(name)
        else:
            raise ConfigError(path, number, f"unknown option {name!r}")
    if cfg.local_socket is None and cfg.tcp_socket is None:
        raise ConfigError(path, 0, "Please define server type (local and/or TCP).")
    return cfg
