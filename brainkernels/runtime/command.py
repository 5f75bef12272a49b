"""The ``train`` verb every method's command has: ``--data``, ``--out``, ``--cache``, ``--resume``,
``--overwrite``, ``--quiet`` and the options of the method's configuration dataclass."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any

from brainkernels.runtime import config, shipped
from brainkernels.runtime.inference import EVALUATED_SUBJECTS
from brainkernels.runtime.trainer import DEFAULT_WORKERS


def add_train_verb(verbs, config_class: type, train: Callable[..., Any], *, help: str, description: str,
                   data_help: str, summary: Callable[[Any, Any], str]) -> argparse.ArgumentParser:
    """Add ``train`` to ``verbs``: it runs ``train(data, out, settings, resume=, overwrite=, quiet=,
    cache=)`` and prints ``summary(settings, run_folder)``."""
    parser = verbs.add_parser("train", help=help, description=description)
    parser.add_argument("--data", required=True, help=data_help)
    parser.add_argument("--out", required=True, metavar="RUN", help="run folder")
    parser.add_argument("--cache", metavar="DIR", default=None,
                        help="prepared-volume cache folder, reusable by other runs (default RUN/cache)")
    parser.add_argument("--resume", action="store_true",
                        help="continue from the run's latest checkpoint, with the run's settings (options given "
                             "now change them)")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace the run in --out (removes only the files a run writes)")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    config.add_arguments(parser, config_class)

    def run(arguments: argparse.Namespace) -> int:
        settings = config.config_from_arguments(config_class, arguments,
                                                resumed_run=arguments.out if arguments.resume else None)
        folder = train(arguments.data, arguments.out, settings, resume=arguments.resume, overwrite=arguments.overwrite,
                       quiet=arguments.quiet, cache=arguments.cache)
        print(summary(settings, folder))
        return 0

    parser.set_defaults(run=run)
    return parser


def _worker_count(text: str) -> int:
    try:
        count = int(text)
    except ValueError:
        count = -1
    if count < 0:
        raise argparse.ArgumentTypeError(f"expected a number of processes (0 or more); got {text!r}")
    return count


def add_workers_option(parser: argparse.ArgumentParser) -> None:
    """``--workers N`` of a cohort-inference verb."""
    parser.add_argument("--workers", type=_worker_count, default=DEFAULT_WORKERS, metavar="N",
                        help=f"processes that load the next volumes during inference (default {DEFAULT_WORKERS})")


def add_subjects_option(parser: argparse.ArgumentParser) -> None:
    """``--subjects held-out|all`` of an ``evaluate`` verb."""
    parser.add_argument("--subjects", choices=EVALUATED_SUBJECTS, default="held-out",
                        help="held-out: those the run's split kept out of training (--data is the training cohort); "
                             "all: every one (a cohort the model never saw, e.g. a shipped model on a new "
                             "synthetic cohort)")


def add_cache_option(parser: argparse.ArgumentParser) -> None:
    """``--cache DIR`` of a cohort-inference verb."""
    parser.add_argument("--cache", metavar="DIR", default=None,
                        help="prepared-volume cache folder (default: the run's RUN/cache when it has one, so the "
                             "entries training built are read again; else OUT/cache)")


def add_model_option(parser: argparse.ArgumentParser, config_class: type, method: str) -> None:
    """``--model RUN|builtin:NAME`` of an inference verb."""
    names = ", ".join(shipped.PREFIX + name for name in shipped.shipped_models(config_class)) or "none in this version"
    parser.add_argument("--model", required=True, metavar="RUN",
                        help=f"run folder written by `{method} train` or `{method} export`, or a model shipped "
                             f"with brainkernels ({names}; trained on synthetic data, not for clinical use)")


def add_export_verb(verbs, *, method: str, method_files: tuple[str, ...]) -> None:
    """``export``: a run folder reduced to what inference reads, to share or ship."""
    parser = verbs.add_parser("export", help="a run's model without its optimiser state, to share",
                              description="Copy a run folder's configuration, its latest weights (no optimiser "
                                          "state) and the files inference reads into a new folder, usable as "
                                          "--model.")
    parser.add_argument("--model", required=True, metavar="RUN", help=f"run folder written by `{method} train`")
    parser.add_argument("--out", required=True, help="new folder")

    def run(arguments: argparse.Namespace) -> int:
        print(f"exported to {shipped.export(arguments.model, arguments.out, method=method, method_files=method_files)}")
        return 0

    parser.set_defaults(run=run)
