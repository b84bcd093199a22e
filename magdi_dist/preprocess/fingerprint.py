"""Content fingerprints: what a shard's bytes depend on, reduced to sha256 strings.

A shard is keyed by (input content, everything else that shapes its rows). Anything that can change
one byte of a shard -- the preprocessing settings, the tokenizer, the frozen feature model, the
library versions that compute features and write Parquet -- goes into the fingerprint, and nothing
else does (paths, worker counts, timestamps), so a re-run with equal inputs finds its shards.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from magdi_dist.config import sha256_file

__all__ = ["environment_fingerprint", "model_fingerprint", "sha256_file", "sha256_json", "tokenizer_fingerprint",
           "unit_key"]


def sha256_json(obj: Any) -> str:
    """Hash of a JSON-able object in canonical form (sorted keys, no whitespace)."""
    text = json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def tokenizer_fingerprint(tokenizer: Any) -> str:
    """The tokenizer's full serialized state (vocab, merges, normalizer, special tokens).

    Fast tokenizers serialize to one JSON string; slow ones fall back to their vocab and special
    tokens, which is what decides the ids they produce.
    """
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        state: Any = backend.to_str()
    elif hasattr(tokenizer, "to_str"):  # a bare ``tokenizers.Tokenizer``
        state = tokenizer.to_str()
    else:
        state = sorted(tokenizer.get_vocab().items())
    special = getattr(tokenizer, "special_tokens_map", None) or {}
    return sha256_json({"state": state, "special": special})


def model_fingerprint(model: Any) -> str:
    """Hash of every parameter and buffer (names, dtypes, shapes, bytes) plus the model config.

    Hashing the weights themselves, not the path they came from, means a re-initialised or
    re-downloaded model with equal weights keeps its shards, and a changed one never reuses them.
    """
    import torch

    h = hashlib.sha256()
    config = getattr(model, "config", None)
    if config is not None and hasattr(config, "to_dict"):
        cfg = {k: v for k, v in config.to_dict().items() if k not in ("_name_or_path", "transformers_version")}
        h.update(sha256_json(cfg).encode())
    for name, tensor in sorted(model.state_dict().items()):
        t = tensor.detach().to("cpu").contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        # View as bytes: numpy has no bfloat16, so go through an integer view of the same width.
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def environment_fingerprint() -> dict[str, str]:
    """Library versions that change feature floats or Parquet bytes (the writer's ``created_by``)."""
    import pyarrow
    import torch

    return {"torch": torch.__version__, "pyarrow": pyarrow.__version__}


def unit_key(content_sha256: str, name: str, fingerprint: str) -> str:
    """The key of one input file's shards: its bytes, its file name (rows carry it as provenance)
    and the pipeline fingerprint. Short enough for file names, long enough never to collide."""
    return hashlib.sha256(f"{content_sha256}|{name}|{fingerprint}".encode()).hexdigest()[:24]
