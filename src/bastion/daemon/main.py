"""``bastion daemon`` and ``bastion-clamd``: clamd's command line (``-c/--config-file``,
``-F/--foreground``, ``--debug``, ``-V``); ``-c`` takes clamd.conf or Bastion's ``bastion.toml``.
Bastion always stays in the foreground (run it under systemd, see ``packaging/systemd/``, or as a
container's main process); ``Foreground no`` is accepted and said so."""

from __future__ import annotations

import argparse
import sys

from bastion import CLAMAV_COMPAT_VERSION, __version__

DEFAULT_CONFIG = "/etc/clamav/clamd.conf"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="bastion-clamd", description="clamd-compatible scanning daemon.")
    p.add_argument("-c", "--config-file", default=DEFAULT_CONFIG, metavar="FILE",
                   help="clamd.conf, or bastion.toml (a name ending in .toml: its [daemon] table)")
    p.add_argument("-F", "--foreground", action="store_true", help="stay in the foreground (always the case)")
    p.add_argument("--workers", type=int, default=None, metavar="N",
                   help="serving processes (default: one per core, at most 4; bastion.toml: workers)")
    p.add_argument("--debug", action="store_true", help="log more")
    p.add_argument("-V", "--version", action="store_true", help="print the version and exit")
    return p


def run(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.version:
        print(f"ClamAV {CLAMAV_COMPAT_VERSION} (Bastion {__version__})")
        return 0
    from bastion.daemon.config import ConfigError, load_config
    from bastion.daemon.service import run_daemon

    try:
        cfg = load_config(args.config_file)
    except (OSError, ConfigError) as exc:
        sys.stderr.write(f"ERROR: {exc}\n")
        return 1
    for name in cfg.ignored:
        sys.stderr.write(f"WARNING: {args.config_file}: option {name} is accepted but not acted on by Bastion yet\n")
    if args.workers is not None:
        cfg.workers = max(1, args.workers)
    if not (cfg.foreground or args.foreground):
        sys.stderr.write("NOTICE: Bastion's daemon stays in the foreground; run it under systemd or a supervisor\n")
    try:
        return run_daemon(cfg)
    except Exception as exc:  # the database or a socket: said once, clearly
        sys.stderr.write(f"ERROR: {exc}\n")
        return 1


def main() -> None:
    sys.exit(run())


if __name__ == "__main__":
    main()
