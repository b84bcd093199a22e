"""A real tiny exported student for the evaluation tests (and its own sanity test).

Built once per session: a byte-level BPE tokenizer (data/tokenizer.py) and a ~0.13M-parameter
``LlamaForCausalLM`` trained for 200 plain-torch steps on the correct chains of SYNTHETIC
MAGs, so it answers "... The answer is N." and evaluation has real answers to extract and grade.
Saved with ``save_pretrained`` like an export: config, tokenizer, model.safetensors.
"""

from __future__ import annotations

import json
import math
import random
from pathlib import Path

import pytest

SEED = 0


def _train_rows(tokenizer, mags, max_length: int = 96) -> list[tuple[list[int], list[int]]]:
    from magdi_dist.data.encode import encode_chain
    from magdi_dist.data.prompt import format_prompt, format_target
    from magdi_dist.mag.grading import grade_mag

    rows = []
    for mag in map(grade_mag, mags):
        prompt = format_prompt(mag.question, mag.options)
        for r in mag.responses:
            if r.reasoning is not None and r.label is not None and r.label.name == "CORRECT":
                rows.append(encode_chain(tokenizer, prompt, format_target(r.reasoning, r.answer), max_length))
    return rows


def build_tiny_student(out: Path, steps: int = 200) -> Path:
    """Tokenizer + tiny Llama trained on synthetic correct chains, saved to ``out``."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from magdi_dist.data.tokenizer import mag_texts, train_tokenizer
    from magdi_dist.mag.synth import synth_mags

    mags = synth_mags(240, agents=3, rounds=2, seed=SEED)
    tokenizer = train_tokenizer(mag_texts(mags), out, vocab_size=400)
    torch.manual_seed(SEED)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=192,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=4,
        max_position_embeddings=2048,
        tie_word_embeddings=True,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    model = LlamaForCausalLM(config)
    rows = _train_rows(tokenizer, mags)
    rng = random.Random(SEED)
    opt = torch.optim.AdamW(model.parameters(), lr=4e-3, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.5 * (1 + math.cos(math.pi * s / steps)))
    model.train()
    for _ in range(steps):
        batch = rng.sample(rows, 16)
        width = max(len(ids) for ids, _ in batch)
        ids = torch.tensor([i + [tokenizer.pad_token_id] * (width - len(i)) for i, _ in batch])
        labels = torch.tensor([lab + [-100] * (width - len(lab)) for _, lab in batch])
        mask = (torch.arange(width)[None, :] < torch.tensor([len(i) for i, _ in batch])[:, None]).long()
        loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
        loss.backward()
        opt.step()
        sched.step()
        opt.zero_grad()
    model.eval()
    model.save_pretrained(out)
    (out / "train_loss.json").write_text(json.dumps({"final_loss": loss.item()}))
    return out


def tiny_student(tmp_path_factory) -> Path:
    """The session's tiny student (built by whichever test module asks first; conftest.py already
    pins one torch thread and no tokenizers pool, which on 2 shared cores is ~10x faster)."""
    out = tmp_path_factory.getbasetemp() / "eval_tiny_student"
    if not (out / "model.safetensors").is_file():
        out.mkdir(parents=True, exist_ok=True)
        build_tiny_student(out)
    return out


def write_synth_mags(path: Path, n: int = 12, seed: int = 7) -> Path:
    from magdi_dist.mag.readers import write_mags_jsonl
    from magdi_dist.mag.synth import synth_mags

    write_mags_jsonl(synth_mags(n, agents=3, rounds=2, seed=seed), path)
    return path


@pytest.fixture(scope="session")
def student(tmp_path_factory) -> Path:
    return tiny_student(tmp_path_factory)


def test_tiny_student_is_a_plain_hf_export_that_learned_the_answer_format(student):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(student)
    tokenizer = AutoTokenizer.from_pretrained(student)
    assert 1e5 < sum(p.numel() for p in model.parameters()) < 1e6
    assert tokenizer.eos_token_id is not None and tokenizer.pad_token_id is not None
    assert json.loads((student / "train_loss.json").read_text())["final_loss"] < 1.0
