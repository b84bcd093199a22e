"""One loader for every typed YAML config (run, study, debate, evaluation): a YAML file, then
``key.sub=value`` overrides, then pydantic validation, with one error format naming the file and
key, and one way an entry point fails on input the user must fix (``exit_on_error``). The bottom of
the package: it knows no config type.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, NoReturn, TypeVar

import yaml
from pydantic import BaseModel, ValidationError


class ConfigError(ValueError):
    """A config that cannot run; the message names the offending key(s)."""


_Loaded = TypeVar("_Loaded")


def exit_on_error(err: BaseException) -> NoReturn:
    """How every entry point fails on input the user must fix: one ``error: ...`` line on stderr and
    exit code 2 (``or_exit``, and the CLI for all its commands)."""
    print(f"error: {err}", file=sys.stderr)
    raise SystemExit(2) from None


def or_exit(load: Callable[..., _Loaded], *args: Any) -> _Loaded:
    """``load(*args)`` at an entry point (a ray_jobs script, ``python -m magdi_dist.launch.rank``): a
    ConfigError (it names the key) ends the process through ``exit_on_error``, before any rank or Ray
    worker starts."""
    try:
        return load(*args)
    except ConfigError as err:
        exit_on_error(err)


def apply_override(tree: dict, item: str) -> None:
    """Apply one ``a.b.c=value`` (value parsed as YAML: 1e-3, true, [1, 2], null) in place."""
    if "=" not in item:
        raise ConfigError(f"override {item!r} must look like key.sub=value")
    key, raw = item.split("=", 1)
    parts = key.strip().split(".")
    if not all(parts):
        raise ConfigError(f"override {item!r}: empty key component")
    node = tree
    for depth, part in enumerate(parts[:-1]):
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            where = ".".join(parts[: depth + 1])
            raise ConfigError(f"override {item!r}: {where} is a value ({child!r}), not a section")
        node = child
    try:
        node[parts[-1]] = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError as err:
        raise ConfigError(f"override {item!r}: the value is not YAML ({_one_line(err)})") from None


def _one_line(text: object) -> str:
    return " ".join(str(text).split())


def _format_errors(err: ValidationError, kind: str, source: str | None) -> str:
    """The one error format of every config: its kind, where it came from, then each bad key and why,
    all on one line, so every entry point reports it as a single ``error: ...`` line."""
    problems = []
    for e in err.errors():
        key = ".".join(str(p) for p in e["loc"]) or "<root>"
        msg = "unknown key" if e["type"] == "extra_forbidden" else e["msg"].removeprefix("Value error, ")
        problems.append(f"{key}: {_one_line(msg)}")
    where = f" ({source})" if source else ""
    return f"invalid {kind}{where}: " + "; ".join(problems)


_Model = TypeVar("_Model", bound=BaseModel)
# Validation context key of load_yaml_config: the folder of the config file (None without a file), so a
# validator can resolve a relative path where the file's author sees it (a study's base_config).
CONFIG_DIR = "config_dir"


def validate_config(model_type: type[_Model], tree: Any, *, kind: str = "config", source: str | None = None,
                    context: dict[str, Any] | None = None) -> _Model:
    """``tree`` validated as ``model_type``; a ValidationError becomes one ConfigError that names the
    ``kind`` of config, its ``source`` (a file, "command-line flags") and every bad key."""
    try:
        return model_type.model_validate(tree, context=context)
    except ValidationError as err:
        raise ConfigError(_format_errors(err, kind, source)) from None


def load_yaml_config(model_type: type[_Model], path: str | Path | None, overrides: Sequence[str] = (), *,
                     kind: str = "config", values: Mapping[str, Any] | None = None) -> _Model:
    """The config loader of every command: YAML file ``path`` (None: nothing, only defaults), then the
    ``key.sub=value`` ``overrides`` in order, then ``values`` (top-level keys, e.g. the flags a command
    was given), validated as ``model_type``. Every failure is a ConfigError naming the file and key."""
    tree: dict[str, Any] = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"{kind} file not found: {path}")
        try:
            loaded = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as err:
            raise ConfigError(f"{path}: not valid YAML ({_one_line(err)})") from None
        if not isinstance(loaded, dict):
            raise ConfigError(f"{path}: the top level of a {kind} must be a mapping of its keys "
                              f"({', '.join(model_type.model_fields)}), got {type(loaded).__name__}")
        tree = loaded
    for item in overrides:
        apply_override(tree, item)
    tree.update(values or {})
    return validate_config(model_type, tree, kind=kind, source=None if path is None else str(path),
                           context={CONFIG_DIR: None if path is None else path.parent})
