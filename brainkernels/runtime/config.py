"""Run configurations: dataclasses with defaults, read from a TOML file, overridden key by key
on the command line, and written back as the resolved TOML of a run.

A method ships named presets (``paper``, ``small``) as TOML files in the folder its config class
names in ``PRESETS``; ``--config`` takes such a name or a file's path.

Unknown keys and values of the wrong type are refused with the key's name. A renamed key
(field metadata ``formerly``) is still read under its former name, from files and checkpoints
written before the rename.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import typing
from pathlib import Path
from typing import Any, Literal, TypeVar

import tomli_w

from brainkernels.atomic import atomic_path
from brainkernels.errors import BrainkernelsError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

Config = TypeVar("Config")


class ConfigError(BrainkernelsError):
    pass


def _describe(kind: Any) -> str:
    if typing.get_origin(kind) is Literal:
        return "one of " + ", ".join(repr(choice) for choice in typing.get_args(kind))
    if typing.get_origin(kind) is tuple:
        return f"a list of {typing.get_args(kind)[0].__name__}"
    return kind.__name__


def _coerce(kind: Any, value: Any, key: str, source: str) -> Any:
    """``value`` as ``kind``, or a ConfigError naming ``key``. Strings (command line) are parsed."""
    origin = typing.get_origin(kind)
    error = ConfigError(f"{source}: key '{key}' must be {_describe(kind)}; got {value!r}")
    if origin is Literal:
        if value not in typing.get_args(kind):
            raise error
        return value
    if origin is tuple:
        items = value.split(",") if isinstance(value, str) else value
        if not isinstance(items, (list, tuple)):
            raise error
        try:
            return tuple(_coerce(typing.get_args(kind)[0], item, key, source) for item in items)
        except ConfigError:
            raise error from None
    if kind is bool:
        if isinstance(value, str) and value.lower() in ("true", "false", "1", "0", "yes", "no"):
            return value.lower() in ("true", "1", "yes")
        if isinstance(value, bool):
            return value
        raise error
    if kind in (int, float):
        if isinstance(value, bool):
            raise error
        if isinstance(value, str):
            try:
                return kind(value)
            except ValueError:
                raise error from None
        if isinstance(value, int) or (kind is float and isinstance(value, float)):
            return kind(value)
        raise error
    if kind is str:
        if not isinstance(value, str):
            raise error
        return value
    raise TypeError(f"unsupported config field type {kind!r} for key '{key}'")


def field_types(config_class: type) -> dict[str, Any]:
    hints = typing.get_type_hints(config_class)
    return {field.name: hints[field.name] for field in dataclasses.fields(config_class)}


def renamed_keys(config_class: type) -> dict[str, str]:
    """Former key: current key."""
    return {field.metadata["formerly"]: field.name for field in dataclasses.fields(config_class)
            if "formerly" in field.metadata}


def from_mapping(config_class: type[Config], values: dict[str, Any], source: str, base: Config | None = None) -> Config:
    """``base`` (default: the class defaults) with ``values`` applied, each checked."""
    types = field_types(config_class)
    for former, current in renamed_keys(config_class).items():
        if former in values and current in values:
            raise ConfigError(f"{source}: '{former}' is the former name of '{current}'; give only '{current}'")
    values = {renamed_keys(config_class).get(key, key): value for key, value in values.items()}
    unknown = sorted(set(values) - set(types))
    if unknown:
        raise ConfigError(f"{source}: unknown key '{unknown[0]}' (known keys: {', '.join(types)})")
    checked = {key: _coerce(types[key], value, key, source) for key, value in values.items()}
    config = base if base is not None else config_class()
    try:
        return dataclasses.replace(config, **checked)
    except ValueError as error:  # __post_init__ range checks
        raise ConfigError(f"{source}: {error}") from None


def read_toml(path: str | os.PathLike) -> dict[str, Any]:
    path = Path(path)
    try:
        with path.open("rb") as handle:
            return tomllib.load(handle)
    except FileNotFoundError:
        raise ConfigError(f"{path}: config file not found") from None
    except OSError as error:  # a folder, say
        raise ConfigError(f"{path}: cannot read the config file ({error.strerror or error})") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as error:
        raise ConfigError(f"{path}: not valid TOML ({error})") from None


def preset_names(config_class: type) -> list[str]:
    """The presets shipped with ``config_class``'s method."""
    folder = getattr(config_class, "PRESETS", None)
    return sorted(path.stem for path in folder.glob("*.toml")) if folder is not None else []


def config_file(config_class: type, preset_or_path: str | os.PathLike) -> Path:
    """The TOML file of a shipped preset named ``preset_or_path``, else that path."""
    if str(preset_or_path) in preset_names(config_class):
        return config_class.PRESETS / f"{preset_or_path}.toml"
    path = Path(preset_or_path)
    if not path.exists() and path.suffix != ".toml" and len(path.parts) == 1:
        names = ", ".join(preset_names(config_class)) or "none"
        raise ConfigError(f"--config {str(preset_or_path)!r}: neither a preset (shipped: {names}) nor a file")
    return path


def load_config(config_class: type[Config], preset_or_path: str | os.PathLike | None = None,
                overrides: dict[str, Any] | None = None) -> Config:
    """Defaults, then a shipped preset or the TOML file at ``preset_or_path``, then ``overrides``
    (the command line)."""
    config = config_class()
    if preset_or_path is not None:
        path = config_file(config_class, preset_or_path)
        config = from_mapping(config_class, read_toml(path), str(path), config)
    return from_mapping(config_class, overrides or {}, "command line", config)


def to_dict(config: Any) -> dict[str, Any]:
    return {key: list(value) if isinstance(value, tuple) else value
            for key, value in dataclasses.asdict(config).items()}


def write_toml(config: Any, path: str | os.PathLike) -> None:
    with atomic_path(path) as temporary:
        temporary.write_text(tomli_w.dumps(to_dict(config)))


def add_arguments(parser: argparse.ArgumentParser, config_class: type) -> None:
    """One ``--key`` option per field; only options given on the command line are kept."""
    group = parser.add_argument_group("configuration (also settable in --config PRESET or FILE.toml)")
    names = preset_names(config_class)
    shipped = f"a shipped preset ({', '.join(names)}; see docs/presets.md) or " if names else ""
    group.add_argument("--config", metavar="PRESET|FILE", default=None,
                       help=f"{shipped}a TOML file with any of the keys below; options given here override it")
    types = field_types(config_class)
    for field in dataclasses.fields(config_class):
        group.add_argument(
            "--" + field.name.replace("_", "-"), dest=f"config.{field.name}", metavar=field.name.upper(),
            default=argparse.SUPPRESS,
            help=f"{field.metadata.get('help', '')} ({_describe(types[field.name])}; default {field.default!r})",
        )
        if "formerly" in field.metadata:  # still accepted, no longer shown
            group.add_argument("--" + field.metadata["formerly"], dest=f"config.{field.name}",
                               default=argparse.SUPPRESS, help=argparse.SUPPRESS)


def config_from_arguments(config_class: type[Config], arguments: argparse.Namespace,
                          resumed_run: str | os.PathLike | None = None) -> Config:
    """The command line's settings. Resuming the run in ``resumed_run`` without ``--config``
    starts from the run's own ``config.toml``, so only the options given now change it."""
    overrides = {key.removeprefix("config."): value for key, value in vars(arguments).items()
                 if key.startswith("config.")}
    if arguments.config is None and resumed_run is not None and (Path(resumed_run) / "config.toml").is_file():
        try:
            return load_config(config_class, Path(resumed_run) / "config.toml", overrides)
        except ConfigError:
            pass  # another method's run (or a damaged file): resuming refuses it with the reason
    return load_config(config_class, arguments.config, overrides)
