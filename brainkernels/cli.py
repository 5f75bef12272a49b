"""The `brainkernels` command: `brainkernels <command> [<verb>] [options]`, `--help` on every level."""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import warnings

from brainkernels.errors import BrainkernelsError

# Errors of the user's input (files, folders, values) and of the machine (a read-only or full disk,
# memory) are shown as one line; --debug shows the traceback.
USER_ERRORS = (BrainkernelsError, OSError, ValueError, MemoryError)


def describe(error: BaseException) -> str:
    """One line for the user: an OSError names its file and says what the system reported."""
    if isinstance(error, OSError) and error.strerror:
        return f"{error.filename}: {error.strerror}" if error.filename else error.strerror
    if isinstance(error, MemoryError):
        return f"out of memory ({error})" if str(error) else "out of memory"
    return str(error).splitlines()[0] if str(error) else type(error).__name__


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
    parser.add_argument("--debug", action="store_true", help="show the full traceback of errors")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    info_parser = commands.add_parser("info", help="versions, available backends and devices",
                                      description="Versions, available backends and devices.")
    info_parser.add_argument("--json", action="store_true", help="print the report as JSON")
    info_parser.set_defaults(run=_info)
    from brainkernels.data.dicom_command import register_command as register_import_dicom
    from brainkernels.data.preprocess_command import register_command as register_preprocess
    from brainkernels.data.registration_command import register_command as register_registration
    from brainkernels.data.synth.command import register_command as register_synth
    from brainkernels.demo.command import register_command as register_demo
    from brainkernels.inr.command import register_command as register_inr
    from brainkernels.patchddm.command import register_command as register_patchddm
    from brainkernels.ppr.command import register_command as register_ppr

    register_import_dicom(commands)
    register_registration(commands)
    register_preprocess(commands)
    register_synth(commands)
    register_ppr(commands)
    register_patchddm(commands)
    register_inr(commands)
    register_demo(commands)
    return parser


def main(argv: list[str] | None = None) -> int:
    arguments = build_parser().parse_args(argv)
    from brainkernels.runtime.distributed import is_main_process

    with contextlib.ExitStack() as silenced:
        if not is_main_process():  # under torchrun every rank runs the command: rank 0 alone prints its result
            silenced.enter_context(contextlib.redirect_stdout(silenced.enter_context(open(os.devnull, "w"))))
        try:
            with warnings.catch_warnings():
                if not arguments.debug:  # one line each, as errors are
                    warnings.showwarning = lambda message, *_, **__: print(
                        f"brainkernels {arguments.command}: warning: {message}", file=sys.stderr)
                return arguments.run(arguments)
        except USER_ERRORS as error:
            if arguments.debug:
                raise
            print(f"brainkernels {arguments.command}: error: {describe(error)}", file=sys.stderr)
            return 2
        except KeyboardInterrupt:
            print("brainkernels: interrupted", file=sys.stderr)
            return 130


if __name__ == "__main__":
    sys.exit(main())
