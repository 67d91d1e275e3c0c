"""``bastion feed``: run your own signed signature feed from a folder served by any static web server.

    bastion feed init DIR                  keys (Ed25519, one per TUF role) and the first metadata
    bastion feed add DIR FILE...           signature files to publish (data only)
    bastion feed remove DIR NAME...
    bastion feed publish DIR               sign: new targets, snapshot and timestamp versions
    bastion feed sign DIR --key FILE       add a co-signer's signature to a release that waits for it
    bastion feed rotate-key DIR ROLE       replace (revoke) a role's key: a new signed root
"""

from __future__ import annotations

import argparse
import sys

from bastion.cli.common import parse_command_line
from bastion.feed.publisher import ROLES, Feed, FeedError


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="bastion feed", description="Publish a signed signature feed.")
    sub = p.add_subparsers(dest="action", required=True, metavar="ACTION")
    init = sub.add_parser("init", help="create a feed")
    init.add_argument("dir")
    init.add_argument("--threshold", type=int, default=1, metavar="N",
                      help="keys per role, all needed to sign (default 1)")
    add = sub.add_parser("add", help="add signature files")
    add.add_argument("dir")
    add.add_argument("files", nargs="+")
    rm = sub.add_parser("remove", help="remove published files")
    rm.add_argument("dir")
    rm.add_argument("names", nargs="+")
    sub.add_parser("publish", help="sign and publish what is in the feed").add_argument("dir")
    sign = sub.add_parser("sign", help="add a signature to a release waiting for more (threshold roles)")
    sign.add_argument("dir")
    sign.add_argument("--key", required=True, metavar="FILE", help="a role's private key (PEM)")
    rot = sub.add_parser("rotate-key", help="replace a role's key")
    rot.add_argument("dir")
    rot.add_argument("role", choices=ROLES)
    return p


def _needs(waiting: dict[str, int], folder: str) -> str:
    roles = ", ".join(f"{role} needs {n} more" for role, n in waiting.items())
    return f"{roles}: `bastion feed sign {folder} --key FILE` by each other key holder"


def run(argv: list[str] | None = None) -> int:
    args = parse_command_line(build_parser(), argv)
    if isinstance(args, int):
        return args
    feed = Feed(args.dir)
    try:
        if args.action == "init":
            root = feed.init(threshold=args.threshold)
            print(f"feed created in {feed.dir}; clients trust {root} (give it to `bastion update --trust`)")
            print(f"serve {feed.dir} with any static web server; keep {feed.keys_dir} private")
        elif args.action == "add":
            print(f"added {', '.join(feed.add(args.files))}; run `bastion feed publish {args.dir}`")
        elif args.action == "remove":
            feed.remove(args.names)
            print(f"removed {', '.join(args.names)}; run `bastion feed publish {args.dir}`")
        elif args.action == "publish":
            version = feed.publish()
            waiting = feed.waiting()
            if waiting:
                print(f"staged targets version {version}: not served until signed; " + _needs(waiting, args.dir))
            else:
                print(f"published targets version {version}")
        elif args.action == "sign":
            waiting = feed.sign(args.key)
            print(("signed; " + _needs(waiting, args.dir)) if waiting else "signed; the release is published")
        else:
            feed.rotate_key(args.role)
            print(f"{args.role} key replaced; the new root is published")
    except (FeedError, OSError) as exc:
        sys.stderr.write(f"error: {exc}\n")
        return 1
    return 0
