"""The one protocol every benchmark follows, and the registry of them.

A figure is a module ``benchmarks/<NAME>.py`` (``benchmarks/experiments/<NAME>.py`` for the standalone
experiments: not in the default run, run by name) exposing

* ``NAME``: its name, also its module's name and its results file's stem (``results/<NAME>.json``);
* ``run(settings) -> dict``: measures and returns the raw result, written to ``results/<NAME>.json``;
* ``rows(result) -> list[Row]``: its entries of the summary table (one per goal or reported number);
* ``details(result) -> str``: markdown for the generated block of docs/benchmarks.md;

and optionally ``NEEDS`` (optional packages: checked before anything runs, so a missing extra is one
clear message, not a traceback halfway through a run) and ``OPTIONS`` (its knobs' defaults, set with
``python -m benchmarks --set KEY=VALUE``). ``rows`` and ``details`` also read results files written by
older runs (results/before.json, figures a partial run keeps), so they must only read, never assume
what this commit's ``run`` adds; the report catches what they cannot read.

Only the standard library here: ``__main__`` checks NEEDS before torch or any figure's own imports.
"""

from __future__ import annotations

import importlib
import importlib.util
import json
from dataclasses import dataclass
from types import ModuleType

FIGURES = ("padding", "step_overhead", "mfu", "data_path", "checkpoint", "zero_memory", "preprocessing", "peers")
EXPERIMENTS = ("zero3_1b", "lm_passes", "debate_throughput", "peer_head", "eval_throughput", "object_storage",
               "checkpoint_verify", "demo_lm_passes")
PROTOCOL = ("NAME", "run", "rows", "details")


@dataclass
class Row:
    """One summary-table entry. ``before``: the same quantity measured the old way in the same run
    (else the report looks it up in results/before.json by ``id``)."""

    id: str
    label: str
    value: float | None
    goal: str = "report"
    met: bool | None = None
    kind: str = "x"  # number format in the docs table: "x" ratio, "pct" percentage, else plain
    before: float | None = None
    before_source: str = ""


@dataclass(frozen=True)
class Need:
    """Optional packages a figure imports, and the command that installs them."""

    what: str
    modules: tuple[str, ...]
    install: str

    def missing(self) -> list[str]:
        return [m for m in self.modules if importlib.util.find_spec(m) is None]


BENCH_EXTRA = Need("the `bench` extra", ("trl", "datasets"), "pip install -e '.[bench]'")
SERVING = Need("`transformers serve` (transformers[serving], in the `dev` extra)", ("fastapi", "uvicorn"),
               "pip install -e '.[dev]'")


def module_name(name: str) -> str:
    if name in FIGURES:
        return f"benchmarks.{name}"
    if name in EXPERIMENTS:
        return f"benchmarks.experiments.{name}"
    raise KeyError(f"no benchmark {name!r}; figures: {', '.join(FIGURES)}; experiments: {', '.join(EXPERIMENTS)}")


def load(name: str) -> ModuleType:
    """The figure module of ``name``, checked against the protocol."""
    mod = importlib.import_module(module_name(name))
    lacking = [a for a in PROTOCOL if not hasattr(mod, a)]
    if lacking or name != mod.NAME:
        raise TypeError(f"{mod.__name__} does not follow benchmarks/figure.py: lacks {lacking}, NAME "
                        f"{getattr(mod, 'NAME', None)!r}")
    return mod


def unmet_needs(mod: ModuleType) -> list[str]:
    """One line per missing optional dependency of ``mod``: what it is, what is missing, how to install."""
    out = []
    for need in getattr(mod, "NEEDS", ()):
        if missing := need.missing():
            out.append(f"{mod.NAME} needs {need.what} (missing: {', '.join(missing)}): {need.install}")
    return out


def options(settings, defaults: dict, quick: dict | None = None) -> dict:
    """A figure's knobs: ``defaults``, then ``quick`` in quick mode, then the run's ``--set KEY=VALUE``
    (parsed to the default's type: numbers, true/false, comma-separated lists, JSON objects)."""
    out = {**defaults, **(quick if settings.quick and quick else {})}
    for key, text in settings.options.items():
        if key in defaults:
            out[key] = parse(text, defaults[key])
    return out


def parse(text: str, like):
    if isinstance(like, bool):
        if text.lower() not in ("true", "false", "1", "0"):
            raise ValueError(f"expected true or false, got {text!r}")
        return text.lower() in ("true", "1")
    if isinstance(like, int | float):
        return type(like)(text)
    if isinstance(like, list | tuple):
        kind = type(like[0]) if like else str
        return [kind(x) for x in text.split(",") if x]
    if isinstance(like, dict) or like is None:
        return json.loads(text)
    return text
