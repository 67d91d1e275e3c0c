"""``bastion api``: serve the REST API with uvicorn, on loopback unless told otherwise."""

from __future__ import annotations

import argparse
import os
import sys


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="bastion api", description="Serve Bastion's REST API (OpenAPI docs at /docs).")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: loopback only)")
    p.add_argument("--port", type=int, default=3310 + 1000, help="TCP port (default 4310)")
    p.add_argument("-d", "--database", action="append", default=[], metavar="DB", help="signature file or directory")
    p.add_argument("--api-key-file", metavar="FILE",
                   help="require 'Authorization: Bearer <key>' with the key in FILE (or $BASTION_API_KEY)")
    p.add_argument("--enable-path-scan", action="store_true", help="allow POST /v1/scan/path (server-side paths)")
    p.add_argument("--max-body", type=int, default=100 * 1024 * 1024, metavar="BYTES", help="largest upload")
    return p


def run(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    import uvicorn

    from bastion.api.app import ApiSettings, create_app
    from bastion.cli.common import SignatureError, load_database
    from bastion.engine import Engine, ScanOptions

    key = os.environ.get("BASTION_API_KEY")
    if args.api_key_file:
        with open(args.api_key_file, encoding="utf-8") as fh:
            key = fh.read().strip()
    try:
        db = load_database(args.database or None)
    except SignatureError as exc:
        sys.stderr.write(f"ERROR: cannot load the database: {exc}\n")
        return 2
    app = create_app(Engine(db, ScanOptions()), ApiSettings(key or None, args.enable_path_scan, args.max_body))
    if args.host not in ("127.0.0.1", "::1", "localhost") and not key:
        sys.stderr.write("WARNING: serving beyond loopback without an API key\n")
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning")
    return 0


if __name__ == "__main__":
    sys.exit(run())
