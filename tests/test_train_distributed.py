"""Real 2-rank DeepSpeed runs on CPU (gloo): ZeRO stages agree, checkpoints resume bit-exactly, ZeRO-3
exports load and generate. Each run is a subprocess (torchrun or the deepspeed launcher); runs are
shared through module-scoped fixtures so the whole module costs five short launches."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from launchers import assert_same_run, deepspeed_launcher, losses, torchrun, train_records, write_config
from safetensors.torch import load_file

from magdi_dist.config import config_hash, load_config
from magdi_dist.launch.resolve import claimed, resolve_run
from magdi_dist.recipes.train import load
from magdi_dist.train.checkpoint import CheckpointMismatch, latest_checkpoint

pytestmark = pytest.mark.slow
STAGES = (0, 2, 3)


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    root = tmp_path_factory.mktemp("train_dist")
    return root, write_config(root / "small.yaml")


@pytest.fixture(scope="module")
def stage_runs(work):
    """One 6-step 2-rank torchrun per ZeRO preset. The ZeRO-2 run also checkpoints every 2 steps and is
    the uninterrupted reference of the resume test."""
    root, cfg = work
    runs = {}
    for stage in STAGES:
        out = root / f"zero{stage}"
        extra = ["train.save_every=2", "train.keep_last_k=2"] if stage == 2 else []
        torchrun(cfg, f"train.deepspeed=zero{stage}", f"train.output_dir={out}", *extra)
        runs[stage] = out
    return runs


def test_zero_stages_agree(stage_runs):
    # Same fp32 math; ZeRO only moves where gradients are reduced and weights live. On CPU/gloo the
    # curves come out identical; 1e-5 relative leaves room for a different summation order elsewhere.
    ref = {k: losses(stage_runs[0], k) for k in ("loss", "ntp_loss", "margin_loss", "node_loss", "grad_norm")}
    assert len(ref["loss"]) == 6 and ref["loss"][-1] < ref["loss"][0]
    for stage in (2, 3):
        for key, values in ref.items():
            np.testing.assert_allclose(losses(stage_runs[stage], key), values, rtol=1e-5, atol=1e-6,
                                       err_msg=f"ZeRO-{stage} {key}")
    for stage in STAGES:
        rec = train_records(stage_runs[stage])[0]
        assert rec["tokens_per_s"] > 0 and 0 < rec["mfu"] < 1
        assert rec["lr"] == pytest.approx(3e-3 / 2)  # step 1 of a 2-step warmup trains at half the peak


def test_checkpoints_and_resolved_config(stage_runs, work):
    run = stage_runs[2]
    names = sorted(p.name for p in (run / "checkpoints").iterdir() if p.is_dir())
    assert names == ["step-000004", "step-000006"]  # saved at 2, 4, 6; keep_last_k=2
    ckpt = latest_checkpoint(run)
    files = {p.name for p in ckpt.iterdir()}
    assert {"COMPLETE", "trainer_state.json", "rng_state_rank0.pt", "rng_state_rank1.pt"} <= files
    state = json.loads((ckpt / "trainer_state.json").read_text())
    assert state["step"] == 6 and state["data_position"] == 6 and state["world_size"] == 2
    resolved = load_config(run / "resolved_config.yaml")
    assert state["config_hash"] == config_hash(resolved)
    assert resolved.train.zero_stage is None and resolved.train.deepspeed == "zero2"


@pytest.fixture(scope="module")
def resumed(work, stage_runs):
    """The ZeRO-2 reference, stopped after step 3 by torchrun and resumed by the deepspeed launcher."""
    root, cfg = work
    out = root / "resumed"
    common = ["train.deepspeed=zero2", f"train.output_dir={out}"]
    torchrun(cfg, *common, "train.stop_after=3")
    assert not (out / "export").exists() and latest_checkpoint(out).name == "step-000003"
    # A save that died half-way (no COMPLETE) must be ignored, even though it is newer.
    junk = out / "checkpoints" / "step-000005"
    shutil.copytree(latest_checkpoint(out), junk)
    (junk / "COMPLETE").unlink()
    (junk / "trainer_state.json").write_text("{}")
    deepspeed_launcher(cfg, *common, resume=True)
    return out


def test_resume_matches_uninterrupted_run_bitwise(resumed, stage_runs):
    ref = stage_runs[2]
    assert_same_run(ref, resumed, "after resume")
    evals = [r for r in train_records(resumed) if "eval_loss" in r]
    assert evals == [r for r in train_records(ref) if "eval_loss" in r] and len(evals) == 1


def test_rerun_of_a_finished_run_reports_its_export_and_keeps_it(resumed, work):
    # A study re-run resumes finished cells straight to evaluation: it needs the export's path, and the
    # export must not be rewritten. A staging dir left by a rank killed mid-export is not taken for one.
    _, cfg = work
    weights = resumed / "export" / "model.safetensors"
    before = weights.stat().st_mtime_ns
    (resumed / "export.partial").mkdir()
    proc = torchrun(cfg, "train.deepspeed=zero2", f"train.output_dir={resumed}", resume=True)
    assert f"trained to step 6/6; export {resumed / 'export'}" in proc.stdout
    assert weights.stat().st_mtime_ns == before
    assert not any(r.get("step", 0) > 6 for r in train_records(resumed))


def test_resume_refuses_a_different_config_or_world_size(resumed, work, tmp_path):
    _, cfg = work
    args = [f"train.output_dir={resumed}", "train.deepspeed=zero2"]

    def resolve(overrides, world_size=2, resume=True):
        return resolve_run(load(cfg, overrides), world_size=world_size, accelerator="cpu", resume=resume)

    spec = resolve(args)  # the same config passes, and names the checkpoint it resumes from
    assert spec.resume_from == str(latest_checkpoint(resumed))
    with pytest.raises(CheckpointMismatch, match="config hash"):
        resolve([*args, "train.lr=0.01"])
    with pytest.raises(CheckpointMismatch, match="world size 2"):
        resolve(args, world_size=1)
    # --no-resume starts over: no refusal, and the old checkpoints are gone (on a copy of the run).
    copy = tmp_path / "copy"
    shutil.copytree(resumed / "checkpoints", copy / "checkpoints")
    spec = resolve([f"train.output_dir={copy}", "train.deepspeed=zero2", "train.lr=0.01"], resume=False)
    assert spec.resume_from is None and (copy / "checkpoints").exists()  # resolving writes nothing
    with claimed(spec):  # the driver, holding the folder, starts over
        assert not (copy / "checkpoints").exists()


def test_zero3_export_loads_and_generates(stage_runs):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    export = stage_runs[3] / "export"
    model = AutoModelForCausalLM.from_pretrained(export)
    tok = AutoTokenizer.from_pretrained(export)
    ids = tok("Question: Ava has 3 apples. Ava gets 4 more. How many apples does Ava have now?\nAnswer: ",
              return_tensors="pt")
    out = model.generate(**ids, max_new_tokens=8, do_sample=False)
    assert out.shape[1] == ids["input_ids"].shape[1] + 8 or out[0, -1] == tok.eos_token_id
    assert isinstance(tok.decode(out[0]), str)
    # ZeRO-3 shards consolidated by DeepSpeed = the ZeRO-0 weights (up to reduction order). Six AdamW
    # steps at lr 3e-3, every one learning since warmup starts at lr/2: Adam divides by sqrt(v), so a
    # 1e-7 reduction-order difference in a near-zero gradient can move a weight by ~1e-5. A wrong
    # consolidation (a shard missing, stale or swapped) would be off by the size of an update, ~1e-3.
    a, b = load_file(export / "model.safetensors"), load_file(stage_runs[0] / "export" / "model.safetensors")
    assert a.keys() == b.keys()
    assert max((a[k] - b[k]).abs().max().item() for k in a) < 1e-4
    graph = load_file(export / "graph_encoder.safetensors")
    meta = json.loads((export / "graph_encoder.json").read_text())
    assert meta["in_dim"] == model.config.hidden_size and meta["gcn_hidden"] == 32
    assert graph["encoder.head.weight"].shape == (3, 32)
    assert {k.split(".")[0] for k in graph} == {"encoder", "scorer"}
