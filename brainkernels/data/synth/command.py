"""``brainkernels synth cq500|brats|dhcp``: write a synthetic cohort.

Registered on the main parser by the CLI; importing this module imports nothing heavy, so the
other commands start as fast as before.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from brainkernels.options import at_least

KIND_HELP = {
    "cq500": "head CT with haemorrhages and fractures, reader labels and voxel masks (PPR)",
    "brats": "four-contrast brain MR with tumour labels 1/2/4 (PatchDDM)",
    "dhcp": "neonatal T2 MR at 26-45 weeks with brain masks, BIDS (INR)",
}


def register_command(subparsers: argparse._SubParsersAction) -> None:
    """Add ``synth`` and its kinds to the CLI's subcommands; each sets ``run``."""
    synth = subparsers.add_parser(
        "synth",
        help="write a synthetic cohort with known ground truth",
        description="Write a synthetic cohort, made from the MNI152 template, in the layout of a real "
        "data set (docs/data-layouts.md), with cohort.json recording how each subject was drawn.",
    )
    kinds = synth.add_subparsers(dest="kind", required=True, metavar="KIND")
    for kind, help_text in KIND_HELP.items():
        parser = kinds.add_parser(kind, help=help_text, description=f"Write a synthetic {kind} cohort: {help_text}.")
        parser.add_argument("--out", type=Path, required=True, help="folder to write the cohort into (empty or new)")
        parser.add_argument("--subjects", type=at_least(1, "--subjects"), default=20,
                            help="number of subjects (default 20)")
        parser.add_argument("--shape", type=at_least(16, "--shape"), default=96,
                            help="voxels per side of the cubic grid (default 96)")
        parser.add_argument("--seed", type=at_least(0, "--seed"), default=0,
                            help="random seed; equal seeds write equal files (default 0)")
        parser.add_argument("--overwrite", action="store_true",
                            help="replace a synthetic cohort already in --out (other files stay)")
        parser.add_argument("--quiet", action="store_true", help="no progress bar or summary")
        if kind == "dhcp":
            parser.add_argument("--rescanned", type=_share("--rescanned"), default=None,
                                help="share of babies scanned more than once (default 0.1, as in the dHCP; "
                                     "the INR's evaluation needs longitudinal subjects)")
        parser.set_defaults(run=run_synth)


def run_synth(arguments: argparse.Namespace) -> int:
    from tqdm.auto import tqdm

    from brainkernels.data.synth.cohort import write_cohort
    from brainkernels.errors import BrainkernelsError

    def progress(records):
        return tqdm(records, desc=f"synth {arguments.kind}", unit="subject", disable=arguments.quiet)

    try:
        cohort = write_cohort(
            arguments.kind, arguments.out, subjects=arguments.subjects, shape=arguments.shape,
            seed=arguments.seed, overwrite=arguments.overwrite, progress=progress,
            rescanned=getattr(arguments, "rescanned", None),
        )  # fmt: skip
    except FileExistsError:
        raise BrainkernelsError(
            f"{arguments.out}: folder is not empty; choose an empty folder, or pass --overwrite to replace "
            "the synthetic cohort in it"
        ) from None
    except NotADirectoryError as error:
        raise BrainkernelsError(str(error)) from None
    if not arguments.quiet:
        print(f"wrote {arguments.subjects} synthetic {arguments.kind} subjects to {arguments.out} "
              f"({cohort.name} records how each was drawn)")
    return 0


def _share(option: str):
    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{option} must be a number; got {text!r}") from None
        if not 0 <= value <= 1:
            raise argparse.ArgumentTypeError(f"{option} must be between 0 and 1; got {value}")
        return value

    return parse
