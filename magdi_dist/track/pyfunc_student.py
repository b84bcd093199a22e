"""MLflow pyfunc wrapper of an exported student: questions in, greedy answers out.

``mlflow.pyfunc.load_model("models:/NAME@champion").predict(["question", ...])`` returns a list of
strings (the generated continuation after the prompt). ``predict``'s type hints (``list[str]`` in
and out) are the model's signature: MLflow infers it from them at logging time and checks every input
against them, so a one-column DataFrame (``question``) or a served ``{"inputs": [...]}`` arrives here
as a list of strings. Only the causal LM is used for answering; ``graph_encoder.safetensors`` rides
along in the artifact so the registered version is the complete exported student.

Kept free of heavy imports at module level: the serving process imports this module through
``student_code.py`` (the logged model code) before it loads anything else.
"""

from __future__ import annotations

import functools
import importlib.util
import logging
import sys
from pathlib import Path
from typing import Any

import mlflow.pyfunc

log = logging.getLogger(__name__)

ARTIFACT_KEY = "student"
DEFAULT_MAX_NEW_TOKENS = 256
DEFAULT_BATCH_SIZE = 8


def _fallback_prompt(tokenizer, question: str, options: Any = None) -> str:
    """Used only when ``magdi_dist/data/prompt.py`` is absent; mirrors its plain format at the time of
    writing: ``"Question: {question}\nAnswer: "`` (with ``Options: ...`` before Answer when given).
    A chat-template student has no fallback: guessing its prompt would answer differently from how it
    was trained and graded."""
    if getattr(tokenizer, "chat_template", None):
        raise RuntimeError("magdi_dist/data/prompt.py not found: a chat-template student needs the "
                           "training prompt; install magdi-dist in the serving environment")
    lines = [f"Question: {(question or '').strip()}"]
    if options:
        lines.append("Options: " + " ".join(str(o) for o in options))
    lines.append("Answer: ")
    return "\n".join(lines)


@functools.cache
def _prompt_module():
    """``magdi_dist/data/prompt.py``, loaded by file path (see ``resolve_format_prompt``), or None."""
    loaded = sys.modules.get("magdi_dist.data.prompt")
    if loaded is not None:
        return loaded
    spec = importlib.util.find_spec("magdi_dist")
    path = Path(spec.origin).parent / "data" / "prompt.py" if spec and spec.origin else None
    if path is None or not path.is_file():
        return None
    module_spec = importlib.util.spec_from_file_location("_magdi_student_prompt", path)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    return module


def resolve_truncate():
    """Evaluation's cut of a generation after its first answer statement (``truncate_answer``), so a
    registered student answers as it was graded; identity when prompt.py cannot be found."""
    module = _prompt_module()
    return getattr(module, "truncate_answer", None) or str.strip


def resolve_render_prompt():
    """The training-time ``render_prompt(tokenizer, question, options)``; evaluation must use the
    same one (docs/CONTRACTS.md).

    ``prompt.py`` is loaded by file path, not via ``import magdi_dist.data.prompt``: the ``data``
    package's ``__init__`` pulls in torch_geometric and the training stack, which a serving
    environment (pinned to torch/transformers/safetensors/tokenizers) does not have, and a failed
    import there would silently switch prompt formats.
    """
    module = _prompt_module()
    if module is None:
        log.warning("magdi_dist/data/prompt.py not found; using the fallback prompt format")
        return _fallback_prompt
    return module.render_prompt


def _special_tokens(tokenizer) -> bool:
    module = _prompt_module()
    return module.prompt_adds_special_tokens(tokenizer) if module is not None else True


class StudentModel(mlflow.pyfunc.PythonModel):
    """Loads the HF directory from ``context.artifacts['student']``; generates greedily."""

    def load_context(self, context) -> None:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        path = context.artifacts[ARTIFACT_KEY]
        self.path = path  # where the loaded files live: for inspection and debugging
        config = dict(getattr(context, "model_config", None) or {})
        self.max_new_tokens = int(config.get("max_new_tokens", DEFAULT_MAX_NEW_TOKENS))
        self.batch_size = int(config.get("batch_size", DEFAULT_BATCH_SIZE))
        # trust_remote_code=False: a registered model must never execute code shipped in its files.
        self.tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=False)
        # Decoder-only batch generation needs left padding so every prompt ends at the same column.
        self.tokenizer.padding_side = "left"
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self.device = "cuda" if torch.cuda.is_available() else "cpu"
        self.model = AutoModelForCausalLM.from_pretrained(path, trust_remote_code=False).to(self.device)
        self.model.eval()
        self.render_prompt = resolve_render_prompt()
        self.truncate = resolve_truncate()

    # The hints are the signature (``list[str]`` -> one string column in, one out); MLflow wraps this
    # method to convert and validate inputs against them, so there is no input parsing here.
    def predict(self, context, model_input: list[str], params: dict[str, Any] | None = None) -> list[str]:
        import torch

        params = params or {}
        max_new_tokens = int(params.get("max_new_tokens") or self.max_new_tokens)
        prompts = [self.render_prompt(self.tokenizer, q, None) for q in model_input]
        answers: list[str] = []
        for start in range(0, len(prompts), self.batch_size):
            chunk = prompts[start : start + self.batch_size]
            batch = self.tokenizer(chunk, return_tensors="pt", padding=True,
                                   add_special_tokens=_special_tokens(self.tokenizer)).to(self.device)
            with torch.inference_mode():
                out = self.model.generate(
                    **batch,
                    do_sample=False,  # greedy: the registered answer must be reproducible
                    num_beams=1,  # a generation_config.json shipping beams would otherwise win
                    max_new_tokens=max_new_tokens,
                    pad_token_id=self.tokenizer.pad_token_id,
                )
            new_tokens = out[:, batch["input_ids"].shape[1] :]
            answers.extend(self.truncate(t) for t in self.tokenizer.batch_decode(new_tokens, skip_special_tokens=True))
        return answers
