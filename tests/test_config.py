"""Run configuration: TOML files, command-line overrides, and errors that name the key."""

import argparse
import dataclasses
from typing import Literal

import pytest

from brainkernels.runtime import TrainerConfig, config
from brainkernels.runtime.config import ConfigError


@dataclasses.dataclass(frozen=True)
class ToyConfig:
    patch: int = 31
    lr: float = 1e-4
    mode: Literal["dense", "patchwise"] = "dense"
    shape: tuple[int, ...] = (64, 64, 64)
    amp: bool = False
    name: str = "run"


def parse(*argv: str) -> ToyConfig:
    parser = argparse.ArgumentParser()
    config.add_arguments(parser, ToyConfig)
    return config.config_from_arguments(ToyConfig, parser.parse_args(list(argv)))


def test_defaults_file_and_command_line_in_that_order(tmp_path):
    path = tmp_path / "run.toml"
    path.write_text('patch = 15\nlr = 0.001\nmode = "patchwise"\nshape = [32, 32, 16]\n')
    assert parse() == ToyConfig()
    resolved = parse("--config", str(path), "--patch", "9", "--amp", "true", "--shape", "8,8,8")
    assert resolved == ToyConfig(patch=9, lr=0.001, mode="patchwise", shape=(8, 8, 8), amp=True)


def test_resolved_config_round_trips_through_toml(tmp_path):
    original = ToyConfig(patch=7, lr=0.5, mode="patchwise", shape=(1, 2, 3), amp=True, name="x")
    config.write_toml(original, tmp_path / "config.toml")
    assert config.load_config(ToyConfig, tmp_path / "config.toml") == original


@pytest.mark.parametrize(
    "text,message",
    [
        ("pacth = 3\n", "unknown key 'pacth'"),
        ('patch = "big"\n', "key 'patch' must be int; got 'big'"),
        ("patch = 3.5\n", "key 'patch' must be int"),
        ("lr = true\n", "key 'lr' must be float"),
        ('mode = "fast"\n', "key 'mode' must be one of 'dense', 'patchwise'"),
        ('shape = "x"\n', "key 'shape' must be a list of int"),
        ("patch = [\n", "not valid TOML"),
    ],
)
def test_bad_config_files_name_the_key(tmp_path, text, message):
    path = tmp_path / "bad.toml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=message):
        config.load_config(ToyConfig, path)


def test_bad_command_line_values_name_the_key(tmp_path):
    with pytest.raises(ConfigError, match="command line: key 'patch' must be int; got 'x'"):
        parse("--patch", "x")
    with pytest.raises(ConfigError, match="config file not found"):
        parse("--config", str(tmp_path / "missing.toml"))


def test_range_checks_name_the_key():
    with pytest.raises(ConfigError, match="key 'micro_batches' must be at least 1"):
        config.load_config(TrainerConfig, overrides={"micro_batches": "0"})


@dataclasses.dataclass(frozen=True)
class PresetConfig(ToyConfig):
    PRESETS = None  # set per test to a folder of presets


@pytest.fixture
def presets(tmp_path, monkeypatch):
    folder = tmp_path / "presets"
    folder.mkdir()
    (folder / "paper.toml").write_text("# the paper's settings\npatch = 15\nlr = 0.001\n")
    (folder / "small.toml").write_text("patch = 5\n")
    monkeypatch.setattr(PresetConfig, "PRESETS", folder)
    return folder


def test_config_takes_a_shipped_preset_by_name_and_options_override_it(presets, tmp_path, monkeypatch):
    assert config.preset_names(PresetConfig) == ["paper", "small"]
    parser = argparse.ArgumentParser()
    config.add_arguments(parser, PresetConfig)
    assert "shipped preset (paper, small" in parser.format_help()
    resolved = config.config_from_arguments(PresetConfig, parser.parse_args(["--config", "paper", "--lr", "0.5"]))
    assert resolved == PresetConfig(patch=15, lr=0.5)
    # A file of that name in the working folder does not shadow the preset; a path reaches it.
    monkeypatch.chdir(tmp_path)
    (tmp_path / "paper").write_text("patch = 3\n")
    assert config.load_config(PresetConfig, "paper").patch == 15
    assert config.load_config(PresetConfig, "./paper").patch == 3


def test_an_unknown_preset_names_the_shipped_ones(presets):
    with pytest.raises(ConfigError, match=r"--config 'papr': neither a preset \(shipped: paper, small\) nor a file"):
        config.load_config(PresetConfig, "papr")
    with pytest.raises(ConfigError, match="config file not found"):
        config.load_config(PresetConfig, "missing.toml")
