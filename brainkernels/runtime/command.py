"""The ``train`` verb every method's command has: ``--data``, ``--out``, ``--resume``,
``--overwrite``, ``--quiet`` and the options of the method's configuration dataclass."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any

from brainkernels.runtime import config


def add_train_verb(verbs, config_class: type, train: Callable[..., Any], *, help: str, description: str,
                   data_help: str, summary: Callable[[Any, Any], str]) -> argparse.ArgumentParser:
    """Add ``train`` to ``verbs``: it runs ``train(data, out, settings, resume=, overwrite=, quiet=)`` and
    prints ``summary(settings, run_folder)``."""
    parser = verbs.add_parser("train", help=help, description=description)
    parser.add_argument("--data", required=True, help=data_help)
    parser.add_argument("--out", required=True, metavar="RUN", help="run folder")
    parser.add_argument("--resume", action="store_true", help="continue from the run's latest checkpoint")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace the run in --out (removes only the files a run writes)")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    config.add_arguments(parser, config_class)

    def run(arguments: argparse.Namespace) -> int:
        settings = config.config_from_arguments(config_class, arguments)
        folder = train(arguments.data, arguments.out, settings, resume=arguments.resume, overwrite=arguments.overwrite,
                       quiet=arguments.quiet)
        print(summary(settings, folder))
        return 0

    parser.set_defaults(run=run)
    return parser
