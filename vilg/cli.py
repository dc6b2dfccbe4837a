"""The `vilg` command."""

from __future__ import annotations

import argparse
import json


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="vilg", description=__doc__)
    sub = parser.add_subparsers(dest="cmd", required=True)
    sub.add_parser("info", help="print what this build of vilg holds")
    args = parser.parse_args(argv)
    if args.cmd == "info":
        from vilg import build_info

        print(json.dumps(build_info(), indent=2))
    return 0
