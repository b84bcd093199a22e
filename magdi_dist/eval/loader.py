"""Find and load an exported student: a plain Hugging Face directory, given directly or inside the
artifacts of an MLflow registered model (``models:/NAME@ALIAS``, ``models:/NAME/VERSION``) or run.

What the registry holds is not fixed by this module: the student directory may be logged as is, as
the artifacts of a pyfunc wrapper (``artifacts/<name>/``) or in the transformers flavour's layout
(``model/`` plus ``components/tokenizer/``). So after download we search the tree for the directory
that has a config and weights, and for the tokenizer next to it or anywhere else in the tree.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

_WEIGHTS = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin", "pytorch_model.bin.index.json")
_TOKENIZER = ("tokenizer.json", "tokenizer_config.json")
_URI_SCHEMES = ("models:/", "runs:/", "mlflow-artifacts:", "s3://", "gs://", "http://", "https://")


class ModelNotFoundError(FileNotFoundError):
    """No loadable student at the given reference (says what was searched)."""


@dataclass(frozen=True)
class StudentDirs:
    model: Path
    tokenizer: Path


def is_uri(ref: str) -> bool:
    return ref.startswith(_URI_SCHEMES)


def _depth(root: Path, d: Path) -> int:
    return len(d.relative_to(root).parts)


def find_hf_dirs(root: str | Path) -> StudentDirs:
    """The shallowest directory under ``root`` with ``config.json`` and weights, and its tokenizer."""
    root = Path(root)
    if not root.is_dir():
        raise ModelNotFoundError(f"{root} is not a directory")
    dirs = sorted((Path(d) for d, _, _ in os.walk(root)), key=lambda d: (_depth(root, d), str(d)))
    models = [d for d in dirs if (d / "config.json").is_file() and any((d / w).is_file() for w in _WEIGHTS)]
    if not models:
        raise ModelNotFoundError(
            f"no Hugging Face model under {root}: expected a directory with config.json and one of "
            f"{', '.join(_WEIGHTS)}"
        )
    shallow = [d for d in models if _depth(root, d) == _depth(root, models[0])]
    if len(shallow) > 1:
        raise ModelNotFoundError(f"several candidate models under {root}: {[str(d) for d in shallow]}")
    model = models[0]
    if any((model / t).is_file() for t in _TOKENIZER):
        return StudentDirs(model, model)
    toks = [d for d in dirs if any((d / t).is_file() for t in _TOKENIZER)]
    if not toks:
        raise ModelNotFoundError(f"model at {model} but no tokenizer ({' or '.join(_TOKENIZER)}) under {root}")
    return StudentDirs(model, toks[0])


def resolve(ref: str, *, tracking_uri: str | None = None, cache_dir: str | Path | None = None) -> StudentDirs:
    """Local directory, or download the artifacts behind an MLflow URI and find the student in them."""
    if not is_uri(ref):
        return find_hf_dirs(ref)
    import mlflow.artifacts

    from magdi_dist.track.store import use_tracking

    dst = Path(cache_dir) if cache_dir else Path(tempfile.mkdtemp(prefix="magdi-eval-model-"))
    dst.mkdir(parents=True, exist_ok=True)
    tracking_uri = tracking_uri or os.environ.get("MLFLOW_TRACKING_URI")
    registry_uri = os.environ.get("MLFLOW_REGISTRY_URI") or tracking_uri  # one store unless told otherwise
    # MLflow resolves ``models:/`` through the process-global registry URI whatever is passed here,
    # so point the globals at the store for the download only (use_tracking restores them).
    scope = use_tracking(tracking_uri, registry_uri) if tracking_uri else contextlib.nullcontext()
    from mlflow.exceptions import MlflowException

    try:
        with scope:
            local = mlflow.artifacts.download_artifacts(
                artifact_uri=ref, dst_path=str(dst), tracking_uri=tracking_uri, registry_uri=registry_uri
            )
    except MlflowException as err:  # unknown model, alias or run: the user's reference is wrong
        raise ModelNotFoundError(f"cannot download {ref} (tracking URI {tracking_uri}): {err.message}") from None
    return find_hf_dirs(local)


def load_student(dirs: StudentDirs, device: str | None = None):
    """(model in eval mode, tokenizer set up for left-padded batched generation)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig

    tokenizer = AutoTokenizer.from_pretrained(dirs.tokenizer)
    # Left padding keeps every prompt's last token in the last column, where generation continues.
    tokenizer.padding_side = "left"
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    model = AutoModelForCausalLM.from_pretrained(dirs.model)
    model.to(device or ("cuda" if torch.cuda.is_available() else "cpu")).eval()
    # Decoding is fully specified by the evaluator: a saved generation_config (top_k, repetition
    # penalty, sampling defaults) must not leak in, so the model's defaults are replaced.
    eos = tokenizer.eos_token_id if tokenizer.eos_token_id is not None else model.config.eos_token_id
    model.generation_config = GenerationConfig(
        eos_token_id=eos, pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id
    )
    return model, tokenizer
