"""The daemon's settings, from clamd.conf or from Bastion's own ``bastion.toml``.

clamd.conf is read the way clamd reads it: ``Option value`` lines, ``#`` comments, sizes with K/M/G,
booleans yes/no/true/false/1/0, and the sample file's ``Example`` line refused.  Options Bastion acts
on are fields of :class:`DaemonConfig`; every other known clamd option is accepted and named in a
warning (one line each); an unknown option is an error naming its line.

``bastion.toml`` holds the same settings in its ``[daemon]`` table, each under the snake_case name of
its clamd option (``LocalSocket`` -> ``local_socket``, ``TCPAddr`` -> ``tcp_addr``, a list), with the
same meaning and the same value syntax (sizes as ``"100M"`` or a number of bytes, booleans as TOML
booleans, the socket mode as a string of octal digits).  An unknown key is an error naming it.
"""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass, field, fields

MiB = 1024 * 1024
_SIZE = re.compile(r"(\d+)([kKmMgG]?)")


class ConfigError(ValueError):
    def __init__(self, path: str, line: int, reason: str) -> None:
        super().__init__(f"{path}:{line}: {reason}")


@dataclass
class DaemonConfig:
    local_socket: str | None = None
    local_socket_mode: int = 0o666
    local_socket_group: str | None = None
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
    log_time: bool = False
    log_clean: bool = False
    user: str | None = None
    # seconds between checks of the database directory for changes (clamd's SelfCheck); 0 = never
    self_check: float = 600.0
    # no: stop serving while a new database loads, so that only one is ever in memory (clamd's option)
    concurrent_database_reload: bool = True
    # Bastion's own: processes that serve connections (each with max_threads / workers threads); they
    # share the loaded database copy-on-write.  clamd.conf has no such option: bastion.toml or --workers.
    workers: int = field(default_factory=lambda: default_workers())
    foreground: bool = False
    detect_pua: bool = False
    allow_all_match_scan: bool = True
    # clamd's heuristic switches: Heuristics.Broken.Executable, .Encrypted.*, .Limits.Exceeded.*
    alert_broken_executables: bool = False
    alert_encrypted: bool = False
    alert_exceeds_max: bool = False
    max_html_normalize: int = 40 * MiB
    max_embedded_pe: int = 40 * MiB
    ignored: list[str] = field(default_factory=list)


def default_workers() -> int:
    """One serving process per core, at most 4 (each costs about 20 MiB of its own)."""
    import os

    return max(1, min(4, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1))


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
    "LocalSocketGroup": ("local_socket_group", str, False),
    "User": ("user", str, False),
    "LogTime": ("log_time", _bool, False),
    "LogClean": ("log_clean", _bool, False),
    "SelfCheck": ("self_check", float, False),
    "ConcurrentDatabaseReload": ("concurrent_database_reload", _bool, False),
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
    "AlertBrokenExecutables": ("alert_broken_executables", _bool, False),
    "AlertEncrypted": ("alert_encrypted", _bool, False),
    "AlertEncryptedArchive": ("alert_encrypted", _bool, False),
    "AlertExceedsMax": ("alert_exceeds_max", _bool, False),
    "MaxHTMLNormalize": ("max_html_normalize", _size, False),
    "MaxEmbeddedPE": ("max_embedded_pe", _size, False),
}
# clamd options that load but that Bastion does not act on (yet): named in a warning
_IGNORED_NAMES = """
FixStaleSocket LogSyslog LogVerbose LogFileMaxSize LogFileUnlock
LogFacility LogRotate ExtendedDetectionInfo TemporaryDirectory OfficialDatabaseOnly
SendBufTimeout HeuristicAlerts HeuristicScanPrecedence
AlertEncryptedDoc AlertBrokenMedia AlertOLE2Macros
AlertPhishingSSLMismatch AlertPhishingCloak AlertPartitionIntersection ScanPE ScanELF ScanOLE2 ScanPDF ScanSWF
ScanHTML ScanXMLDOCS ScanHWP3 ScanOneNote ScanMail ScanArchive ScanImage ScanImageFuzzyHash
ScanPartialMessages PhishingSignatures PhishingScanURLs Bytecode BytecodeSecurity BytecodeUnsigned
BytecodeTimeout PCREMatchLimit PCRERecMatchLimit PCREMaxFileSize MaxScanTime
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


def _toml_key(option: str) -> str:
    """``TCPAddr`` -> ``tcp_addr``, ``MaxHTMLNormalize`` -> ``max_html_normalize``: clamd's name in snake_case."""
    return re.sub(r"(?<=[a-z0-9])(?=[A-Z])|(?<=[A-Z])(?=[A-Z][a-z])", "_", option).lower()


# bastion.toml key -> clamd option, for every option clamd.conf knows (acted on or not)
# bastion.toml [daemon] keys with no clamd.conf option
BASTION_ONLY_KEYS = ("workers",)
TOML_KEYS = {_toml_key(name): name for name in [*_ACTED_ON, *sorted(_KNOWN_IGNORED)]}


def _toml_text(key: str, value: object) -> str:
    """A TOML value as the text its clamd.conf line would hold, so both go through one converter."""
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int | float | str):
        return str(value)
    raise ValueError(f"{key}: expected a string, number or boolean, got {type(value).__name__}")


def parse_bastion_toml(path: str, text: str | None = None) -> DaemonConfig:
    """The ``[daemon]`` table of ``bastion.toml`` as a :class:`DaemonConfig` (see the module's docstring)."""
    if text is None:
        with open(path, "rb") as fh:
            raw = fh.read()
        text = raw.decode("utf-8", errors="replace")
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        line = int(m.group(1)) if (m := re.search(r"line (\d+)", str(exc))) else 0
        raise ConfigError(path, line, f"not valid TOML: {exc}") from None
    table = doc.get("daemon", {})
    if not isinstance(table, dict):
        raise ConfigError(path, 0, "[daemon] must be a table")
    lines = []
    own: dict[str, int] = {}
    for key, value in table.items():
        if key in BASTION_ONLY_KEYS:
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ConfigError(path, _line_of(text, key), f"[daemon]: {key} must be a positive integer")
            own[key] = value
            continue
        option = TOML_KEYS.get(key)
        if option is None:
            raise ConfigError(path, _line_of(text, key), f"[daemon]: unknown key {key!r}")
        values = value if isinstance(value, list) else [value]
        try:
            lines += [f"{option} {_toml_text(key, v)}" for v in values]
        except ValueError as exc:
            raise ConfigError(path, _line_of(text, key), f"[daemon]: {exc}") from None
    try:
        cfg = parse_clamd_conf(path, "\n".join(lines) + "\n")
        for key, value in own.items():
            setattr(cfg, key, value)
        return cfg
    except ConfigError as exc:
        # name the TOML key, not the line of the clamd.conf text made from it
        reason = str(exc).split(": ", 1)[1] if ": " in str(exc) else str(exc)
        option = reason.split(":", 1)[0]
        key = next((k for k, o in TOML_KEYS.items() if o == option), None)
        raise ConfigError(path, _line_of(text, key) if key else 0, f"[daemon]: {reason}") from None


def _line_of(text: str, key: str) -> int:
    for number, line in enumerate(text.splitlines(), 1):
        if re.match(rf"\s*{re.escape(key)}\s*=", line):
            return number
    return 0


def load_config(path: str) -> DaemonConfig:
    """clamd.conf, or bastion.toml when the file name ends in ``.toml``."""
    return parse_bastion_toml(path) if path.endswith(".toml") else parse_clamd_conf(path)


def config_fields() -> list[str]:
    """The settings Bastion acts on (DaemonConfig's fields), for documentation and tests."""
    return [f.name for f in fields(DaemonConfig) if f.name != "ignored"]


def toml_entry(option: str, value: str) -> tuple[str, object, bool] | None:
    """One clamd.conf line as bastion.toml holds it: (key, typed value, repeatable), for
    ``bastion migrate``; None for an option Bastion does not act on.  Raises ValueError for a value
    clamd would refuse.  Booleans and plain numbers keep their TOML type; sizes ("100M") and the
    socket mode (octal digits) stay text, as parse_bastion_toml reads them."""
    acted = _ACTED_ON.get(option)
    if acted is None:
        return None
    _attr, convert, repeatable = acted
    converted = convert(value)
    typed = converted if convert in (_bool, int, float) else value
    return _toml_key(option), typed, repeatable


def known_but_ignored(option: str) -> bool:
    return option in _KNOWN_IGNORED
