"""Reading MMEngine configs from Python, JSON or YAML files."""

from __future__ import annotations

import argparse
import json
import re
import runpy
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .common import CliError, UsageError


# -- config files --------------------------------------------------------------------
@dataclass
class ConfigFile:
    """What a config file says: the schedulers, and optionally the optimizer and length."""

    param_scheduler: list[dict[str, Any]]
    base: dict[str, Any] | None = None
    optimizer: str | None = None
    max_epochs: int | None = None
    max_iters: int | None = None


# PyYAML follows YAML 1.1, which reads ``1e-3`` (no dot) as a string; configs mean a number.
_YAML_EXPONENT = re.compile(r"^[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+$")


def _yaml_numbers(value: Any) -> Any:
    if isinstance(value, str) and _YAML_EXPONENT.match(value):
        return float(value)
    if isinstance(value, list):
        return [_yaml_numbers(v) for v in value]
    if isinstance(value, dict):
        return {k: _yaml_numbers(v) for k, v in value.items()}
    return value


def _read_document(path: Path) -> Any:
    """The file's top-level object: a module's globals, or the JSON / YAML document."""
    suffix = path.suffix.lower()
    try:
        if suffix == ".py":
            return runpy.run_path(str(path))
        text = path.read_text()
    except OSError as exc:
        raise UsageError(f"cannot read {path}: {exc.strerror}") from None
    except Exception as exc:  # a config module is user code: report, do not crash
        raise UsageError(f"{path}: {type(exc).__name__}: {exc}") from None
    if suffix == ".json":
        try:
            return json.loads(text)
        except ValueError as exc:
            raise UsageError(f"{path}: invalid JSON: {exc}") from None
    if suffix in (".yaml", ".yml"):
        try:
            import yaml
        except ImportError:
            raise CliError("YAML configs need PyYAML: pip install 'paramsched[plot]'") from None
        try:
            return _yaml_numbers(yaml.safe_load(text))
        except yaml.YAMLError as exc:
            raise UsageError(f"{path}: invalid YAML: {exc}") from None
    raise UsageError(f"{path}: expected a .py, .json, .yaml or .yml file")


def _plain(value: Any) -> Any:
    """JSON-able copy of a config: tuples -> lists, ``type=LinearLR`` (a class) -> its name."""
    if isinstance(value, Mapping):
        return {str(k): (v.__name__ if k == "type" and isinstance(v, type) else _plain(v))
                for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value


def _schedulers(raw: Any, where: str) -> list[dict[str, Any]]:
    if isinstance(raw, Mapping) and "type" in raw:
        raw = [raw]
    if not isinstance(raw, list | tuple) or not all(isinstance(c, Mapping) for c in raw):
        raise UsageError(f"{where}: expected a list of scheduler config dicts")
    return [_plain(c) for c in raw]


def _optimizer_of(document: Mapping[str, Any]) -> tuple[dict[str, Any] | None, str | None]:
    """Initial values and kind ('sgd'/'adam') from MMEngine's ``optim_wrapper.optimizer``."""
    wrapper = document.get("optim_wrapper")
    optimizer = wrapper.get("optimizer") if isinstance(wrapper, Mapping) else None
    if not isinstance(optimizer, Mapping):
        optimizer = document.get("optimizer")
    if not isinstance(optimizer, Mapping):
        return None, None
    base: dict[str, Any] = {}
    for key, value in optimizer.items():
        if isinstance(value, int | float) and not isinstance(value, bool):
            base[key] = float(value)
        elif key == "betas" and isinstance(value, list | tuple):
            base[key] = [float(v) for v in value]
    kind = optimizer.get("type")
    kind_name = kind.__name__ if isinstance(kind, type) else str(kind or "")
    return (base or None), ("adam" if "adam" in kind_name.lower() else None)


def load_config(path: str | Path) -> ConfigFile:
    """Read a config: Python (``param_scheduler = ...``), JSON or YAML.

    A JSON/YAML document is the list itself or a dict with key ``param_scheduler``.
    From an MMEngine config, ``optim_wrapper.optimizer`` gives the initial values and
    ``train_cfg`` the length, when the command line does not.
    """
    path = Path(path)
    document = _read_document(path)
    if not isinstance(document, Mapping) or "type" in document:
        return ConfigFile(_schedulers(document, str(path)))
    if "param_scheduler" not in document:
        raise UsageError(f"{path}: no 'param_scheduler' in it")
    config = ConfigFile(_schedulers(document["param_scheduler"], f"{path}: param_scheduler"))
    config.base, config.optimizer = _optimizer_of(document)
    train = document.get("train_cfg")
    if isinstance(train, Mapping):
        epochs, iters = train.get("max_epochs"), train.get("max_iters")
        config.max_epochs = epochs if isinstance(epochs, int) else None
        config.max_iters = iters if isinstance(iters, int) and config.max_epochs is None else None
    return config


def configs_from_args(args: argparse.Namespace) -> list[dict[str, Any]]:
    """``reschedule``'s configs from --config or --json (none: hold / start values only)."""
    if args.config:
        return load_config(args.config).param_scheduler
    if args.json:
        try:
            return _schedulers(json.loads(args.json), "--json")
        except ValueError as exc:
            raise UsageError(f"--json: invalid JSON: {exc}") from None
    return []
