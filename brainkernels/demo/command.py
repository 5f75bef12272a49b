"""``brainkernels demo``: registered on the main parser by the CLI."""

from __future__ import annotations

import argparse


def _demo(arguments: argparse.Namespace) -> int:
    from brainkernels.demo.run import run_demo
    from brainkernels.demo.settings import DEFAULT, QUICK

    report = run_demo(arguments.out, QUICK if arguments.quick else DEFAULT, device=arguments.device,
                      overwrite=arguments.overwrite, quiet=arguments.quiet, debug=arguments.debug)
    print(f"report: {report} (and {report.with_suffix('.md').name} beside it)")
    return 0


def register_command(commands) -> None:
    parser = commands.add_parser(
        "demo", help="all three methods end to end on synthetic cohorts, one report",
        description="Generate the synthetic cohorts, train and evaluate PPR, PatchDDM and the INR, measure the "
                    "memory table at the papers' sizes, and write DIR/report.html and DIR/report.md.")
    parser.add_argument("--out", default="brainkernels-demo", metavar="DIR",
                        help="folder for the cohorts, runs and report (default ./brainkernels-demo)")
    parser.add_argument("--quick", action="store_true",
                        help="small models, about 7 minutes on a 2-core CPU, longer on a busy one (default: "
                             "better models, about an hour)")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto",
                        help="where to train and infer (auto: a GPU if there is one)")
    parser.add_argument("--overwrite", action="store_true", help="replace an earlier demo's outputs in DIR")
    parser.add_argument("--quiet", action="store_true", help="no progress output")
    parser.set_defaults(run=_demo)
