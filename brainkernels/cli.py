"""The `brainkernels` command."""

from __future__ import annotations

import argparse
import json
import sys


def _info(arguments: argparse.Namespace) -> int:
    from brainkernels import info

    report = info.collect()
    print(json.dumps(report, indent=2) if arguments.json else info.format_report(report))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="brainkernels",
        description="Memory-efficient deep learning for 3D brain MRI and CT.",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    info_parser = commands.add_parser("info", help="versions, available backends and devices")
    info_parser.add_argument("--json", action="store_true", help="print the report as JSON")
    info_parser.set_defaults(run=_info)
    return parser


def main(argv: list[str] | None = None) -> int:
    arguments = build_parser().parse_args(argv)
    return arguments.run(arguments)


if __name__ == "__main__":
    sys.exit(main())
