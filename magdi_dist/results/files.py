"""The files of a collected folder (``docs/results/<name>/``): which names it holds, how they are stored
and read back, and which files it never holds.

    study_summary.json                     the study's summary (paths under the run folder made relative)
    *.yaml                                 the study and training YAMLs at the top of the run folder
    study_config.json                      the study config as its MLflow parent run recorded it
    scaling_fit.json                       the study's power-law fit
    manifest.json.gz                       the shards' manifest: counts, the split, the training questions
    cells/<cell>/eval/summary.json         the cell's evaluation summary
    cells/<cell>/eval/predictions.jsonl.gz one record per evaluated question
    cells/<cell>/metrics.jsonl.gz          per-step training metrics and the held-out evaluations
    cells/<cell>/resolved_config.yaml      the cell's resolved training config
    cells/<cell>/mlflow.json               the cell's MLflow run: id, status, times, tags, final metrics
    provenance.json                        per cell: the commit it ran on, dirty or not, when it was
                                           collected and on which machine
    extra/<file>                           text files named with ``collect --extra`` (a run's output)

JSONL files and the manifest are gzipped, deterministically (no name, no time in the header, so a
re-collection of the same files is byte-identical and git sees no change): per-step metrics are the
bulk of a study's raw files, and compress several-fold. Checkpoints, exports and weights are never
collected: their names are refused outright, whatever the size budget.
"""

from __future__ import annotations

import gzip
import json
import re
from pathlib import Path, PurePosixPath
from typing import Any

GZIPPED = (".jsonl", "manifest.json")  # stored as <name>.gz
CELL_FILES = ("eval/summary.json", "eval/predictions.jsonl", "metrics.jsonl", "resolved_config.yaml")
RUN_RECORD = "mlflow.json"
PROVENANCE = "provenance.json"
SUMMARY = "study_summary.json"
STUDY_CONFIG = "study_config.json"
FIT = "scaling_fit.json"
MANIFEST = "manifest.json"
EXTRA_DIR = "extra"
# What a model is stored as (weights, optimizer state, pickles, GGUF) and where a run keeps it.
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".gguf", ".onnx", ".pkl", ".pickle", ".npy",
                   ".npz", ".h5", ".msgpack", ".parquet")
WEIGHT_DIRS = ("export", "checkpoints", "models", "shards")


class ResultsError(ValueError):
    """Input the user must fix (a missing file, a refused copy, a broken marker): one line, exit 2."""


def stored_name(rel: str) -> str:
    """The name a file is kept under in a collected folder (``.gz`` added to JSONL and the manifest)."""
    return rel + ".gz" if rel.endswith(GZIPPED) else rel


def encode(rel: str, data: bytes) -> bytes:
    """The bytes ``rel`` is stored as: gzipped with a fixed header for the names in ``GZIPPED``."""
    return gzip.compress(data, compresslevel=9, mtime=0) if rel.endswith(GZIPPED) else data


def read_text(folder: Path, rel: str) -> str:
    """A collected file's text, plain or gzipped (``rel`` is its name before storage)."""
    path = folder / stored_name(rel)
    if not path.is_file():
        raise ResultsError(f"{path}: missing from the collected folder")
    data = path.read_bytes()
    return (gzip.decompress(data) if path.name.endswith(".gz") else data).decode("utf-8")


def read_json(folder: Path, rel: str) -> Any:
    text = read_text(folder, rel)
    try:
        return json.loads(text)
    except json.JSONDecodeError as err:
        raise ResultsError(f"{folder / stored_name(rel)}: not JSON ({err})") from None


def has(folder: Path, rel: str) -> bool:
    return (folder / stored_name(rel)).is_file()


def relative_paths(text: str, src: Path) -> str:
    """Absolute paths under ``src`` rewritten relative to it (``src`` itself becomes ``.``), as the
    resolved and the unresolved spelling of ``src`` both appear in a run's files."""
    roots = sorted({str(src.resolve()), str(src.absolute())}, key=len, reverse=True)
    for root in roots:
        # Not inside a longer name (runs/demo must not match runs/demo-quick, nor /x/runs/demo).
        text = re.sub(rf"(?<![\w.\-]){re.escape(root)}/", "", text)
        text = re.sub(rf"(?<![\w.\-]){re.escape(root)}(?![\w.\-/])", ".", text)
    return text


def weight_like(path: Path) -> str | None:
    """Why ``path`` looks like a checkpoint, an export or weights (None: it does not)."""
    if path.name.lower().endswith(WEIGHT_SUFFIXES):
        return f"a {path.suffix} file (weights or model state)"
    inside = [part for part in path.parts[:-1] if part in WEIGHT_DIRS]
    if inside:
        return f"inside a {inside[-1]}/ folder (checkpoints, exports and shards are never collected)"
    return None


def check_cell_name(name: str) -> str:
    """A cell or collection name is one path component (it becomes a folder name)."""
    if not re.fullmatch(r"[A-Za-z0-9_.\-]+", name) or name in (".", ".."):
        raise ResultsError(f"{name!r} is not a usable name (letters, digits, '_', '.', '-')")
    return name


def posix(rel: str | Path) -> str:
    return str(PurePosixPath(*Path(rel).parts))
