"""The resolved run (run_spec.py, launch/resolve.py): worked out once on the driver, written as
run.json, and read by the ranks, which build no DeepSpeed config, shape or lm_passes of their own."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from launchers import REPO, SMALL, clean_env, write_config
from pydantic import ValidationError

from magdi_dist.config import config_hash, load_config
from magdi_dist.launch.resolve import prepare_and_publish, resolve_run
from magdi_dist.run_spec import RUN_FILE, read_run
from magdi_dist.train.checkpoint import latest_checkpoint, read_state


def _spec(tmp_path, *overrides, world_size=2):
    cfg = load_config(write_config(tmp_path / "small.yaml"), [f"train.output_dir={tmp_path / 'run'}", *overrides])
    return resolve_run(cfg, world_size=world_size, accelerator="cpu", resume=True)


def test_the_resolved_run_holds_what_the_ranks_need(tmp_path):
    spec = _spec(tmp_path, "train.deepspeed=zero3", "train.grad_accum=2")
    t = spec.config.train
    assert spec.ds_config["train_batch_size"] == t.micro_batch_size * t.grad_accum * 2
    assert spec.ds_config["zero_optimization"]["stage"] == 3
    # ZeRO-3's bucket sizes come from the model's hidden size, known before any weight exists.
    hidden = SMALL["model"]["base"]["hidden_size"]
    assert spec.shape.hidden_size == hidden
    assert spec.ds_config["zero_optimization"]["reduce_bucket_size"] == hidden * hidden
    assert spec.optimizer == "torch_adamw" and "optimizer" not in spec.ds_config  # CPU: the client AdamW
    assert spec.config.model.lm_passes == "one"  # auto under ZeRO-3 on 2 ranks
    assert _spec(tmp_path, world_size=1).config.model.lm_passes == "split"
    assert spec.config_hash == config_hash(spec.config) and spec.data is None and spec.resume_from is None


def test_an_edited_run_file_is_refused(tmp_path):
    spec = _spec(tmp_path)
    tree = spec.model_dump(mode="json")
    tree["config"]["train"]["lr"] = 0.5  # the hash no longer matches the config
    with pytest.raises(ValidationError, match="config_hash"):
        type(spec).model_validate(tree)
    tree = spec.model_dump(mode="json")
    tree["config"]["model"]["lm_passes"] = "auto"
    with pytest.raises(ValidationError, match="lm_passes"):
        type(spec).model_validate(tree)


@pytest.mark.slow
@pytest.mark.parametrize("source", ["run", "config"])
def test_two_ranks_read_the_run_and_build_no_deepspeed_config(tmp_path, source):
    """--run-file: the driver resolved; no rank works anything out. --config: rank 0 is the driver (the
    counts show it resolving once), rank 1 still works nothing out."""
    cfg_file = write_config(tmp_path / "small.yaml")
    out = tmp_path / "run"
    overrides = [f"train.output_dir={out}", "train.deepspeed=zero2", "train.save_every=3"]
    if source == "run":
        cfg = load_config(cfg_file, overrides)
        spec = prepare_and_publish(resolve_run(cfg, world_size=2, accelerator="cpu", resume=True))
        args = ["--run-file", str(spec.run_file)]
    else:
        args = ["--config", str(cfg_file), *overrides]
    counts_dir = tmp_path / "counts"
    counts_dir.mkdir()
    env = {**clean_env(), "OUT_DIR": str(counts_dir), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                           str(REPO / "tests" / "jobs" / "count_resolution.py"), *args],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=420)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    counts = [json.loads((counts_dir / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert counts[1] == {}
    if source == "run":
        assert counts[0] == {}
    else:  # the counter sees a resolution when one happens: once, on rank 0
        assert counts[0]["magdi_dist.launch.resolve.resolve_run"] == 1
        assert counts[0]["magdi_dist.train.engine.build_ds_config"] == 1

    run = json.loads((out / RUN_FILE).read_text())
    assert run["world_size"] == 2 and run["ds_config"]["zero_optimization"]["stage"] == 2
    assert run["data"]["manifest"] == str(out / "shards" / "manifest.json")
    state = read_state(latest_checkpoint(out))
    assert state["config_hash"] == run["config_hash"] == config_hash(load_config(out / "resolved_config.yaml"))
    assert read_run(out / RUN_FILE).config.train.output_dir == str(out)
