"""Command lines as the README gives them under torchrun: torchrun's own parser (which accepts
abbreviations of its options anywhere on the line) must pass every method option through to
brainkernels untouched, and only rank 0 prints a command's result."""

from __future__ import annotations

import argparse
import re
import shlex
from pathlib import Path

import pytest
import torch
from torch.distributed.run import get_args_parser

from brainkernels import cli
from brainkernels.errors import BrainkernelsError
from brainkernels.ppr.train import PPRConfig
from brainkernels.runtime import checkpoint, config

README = Path(__file__).parents[1] / "README.md"
TORCHRUN = ["--nproc-per-node", "2", "-m", "brainkernels"]


def _subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    return next(action.choices for action in parser._actions if isinstance(action, argparse._SubParsersAction))


def _verbs() -> dict[tuple[str, ...], argparse.ArgumentParser]:
    """Every command (and verb) of the `brainkernels` parser."""
    verbs = {}
    for command, parser in _subparsers(cli.build_parser()).items():
        try:
            verbs |= {(command, verb): sub for verb, sub in _subparsers(parser).items()}
        except StopIteration:
            verbs[(command,)] = parser
    return verbs


def _torchrun(arguments: list[str]) -> list[str]:
    """What torchrun hands to `python -m brainkernels`; fails the test where its parser refuses."""
    try:
        parsed = get_args_parser().parse_args(arguments)
    except SystemExit:
        pytest.fail(f"torchrun refuses: {shlex.join(arguments)}")
    assert parsed.module and parsed.training_script == "brainkernels"
    return parsed.training_script_args


def test_the_readmes_torchrun_lines_reach_brainkernels_whole():
    lines = [line for line in README.read_text().splitlines() if line.startswith("torchrun ")]
    assert lines, "the README shows no torchrun line"
    for line in lines:
        arguments = shlex.split(line)[1:]
        passed = _torchrun(arguments)
        assert passed == arguments[arguments.index("brainkernels") + 1:]
        cli.build_parser().parse_args(passed)  # and brainkernels takes them


@pytest.mark.parametrize("verb", sorted(_verbs()), ids=" ".join)
def test_every_shown_option_passes_through_torchrun(verb):
    options = [option for action in _verbs()[verb]._actions if action.help != argparse.SUPPRESS
               for option in action.option_strings if option.startswith("--")]
    for option in options:
        tail = [*verb, option, "1"]
        assert _torchrun(TORCHRUN + tail) == tail


def test_the_former_ppr_option_m_is_hidden_and_still_read(tmp_path):
    train = _verbs()[("ppr", "train")]
    assert "--network-size" in train.format_help() and not re.search(r"--m\b", train.format_help())
    old = argparse.Namespace(**vars(train.parse_args(["--data", "d", "--out", "o", "--m", "4"])))
    assert config.config_from_arguments(PPRConfig, old).network_size == 4
    (tmp_path / "run.toml").write_text("m = 2\n")  # a config file (or run folder) written before the rename
    assert config.load_config(PPRConfig, tmp_path / "run.toml").network_size == 2
    with pytest.raises(config.ConfigError, match="'m' is the former name of 'network_size'"):
        config.from_mapping(PPRConfig, {"m": 2, "network_size": 4}, "run.toml")
    model = torch.nn.Linear(1, 1)
    saved = checkpoint.save_checkpoint(tmp_path / "step-00000001.pt", method="ppr", config={"m": 2}, step=1,
                                       model=model, optimizer=torch.optim.Adam(model.parameters()), scaler=None)
    renamed = config.renamed_keys(PPRConfig)
    assert checkpoint.load_checkpoint(saved, method="ppr", config={"network_size": 2}, renamed=renamed,
                                      architecture_keys=("network_size",))["step"] == 1
    with pytest.raises(BrainkernelsError, match="network_size=2 in the checkpoint but 4 now"):
        checkpoint.load_checkpoint(saved, method="ppr", config={"network_size": 4}, renamed=renamed,
                                   architecture_keys=("network_size",))


@pytest.mark.parametrize(("rank", "printed"), [("0", True), ("1", False)])
def test_only_rank_0_prints_the_result(monkeypatch, capsys, rank, printed):
    monkeypatch.setenv("RANK", rank)
    assert cli.main(["info"]) == 0
    assert bool(capsys.readouterr().out) == printed
