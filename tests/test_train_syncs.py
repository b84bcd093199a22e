"""A training step that never waits for the device on our account: losses, counts, FLOPs and the grad
norm stay on the device and are read once per logging interval (train/metrics.py ``StepLog``), and
the LM's row plan is decided on the host (model/student.py ``lm_rows``).

Host reads of tensors (``item``, ``float``, ``int``, ``bool``, ``__index__``, ``tolist``: on a GPU each
waits for the device queue) are counted by patching ``torch.Tensor``. Per optimizer step outside
logging steps, measured with deepspeed 0.19.8 / transformers 5 / torch 2.13 on CPU:

* magdi_dist: 0. Before (ZeRO-2, grad_accum 1): 18 per step: per micro-step 6 ``float`` of loss terms
  and counts, 2 in the FLOP count, 1-2 in the forward's row plan; per step 1 for the grad norm and 8
  ``item`` of the all-reduced sums.
* DeepSpeed: its step checks the global grad norm for inf/NaN on the host, to skip an overflowed step
  and to clip: 3 reads at ZeRO-1/2 (``is_invalid_grad_norm``), 1 at ZeRO-3, 0 at ZeRO-0 (torch's
  ``clip_grad_norm_`` stays on the device). Unavoidable without changing DeepSpeed.
* transformers: 1-2 per LM pass (``masking_utils``: is the padding mask all ones, so SDPA can drop it).
  These runs are single-process, where ``model.lm_passes: auto`` runs positives and negatives as two
  passes.
* torch.optim (torch AdamW, the CPU default): one per parameter group (ZeRO-1/2/3, flat groups) or per
  parameter (ZeRO-0): the step counter, which torch keeps on the host (not capturable): no device wait.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
from launchers import REPO, SMALL, clean_env, write_config

from magdi_dist.train.metrics import StepAccumulator, StepLog

READS = ("item", "__float__", "__int__", "__bool__", "__index__", "tolist")

# Per optimizer step (grad_accum 1: one forward of the student, two LM passes), by caller, the most
# each library may read.
LM_PASSES = 2
LIBRARY_READS = {"deepspeed": {"zero0": 0, "zero1": 3, "zero2": 3, "zero3": 1}, "transformers": 2 * LM_PASSES}


class CountReads:
    """Counts host reads of any tensor while active."""

    def __init__(self, monkeypatch):
        self.calls: list[str] = []
        for name in READS:
            original = getattr(torch.Tensor, name)

            def counted(t, *args, _name=name, _original=original, **kwargs):
                self.calls.append(_name)
                return _original(t, *args, **kwargs)

            monkeypatch.setattr(torch.Tensor, name, counted)


def _out(loss, ntp, margin, node, tokens, nodes, head_tokens):
    f32 = torch.float32
    return {"loss": torch.tensor(loss, dtype=f32), "ntp_loss": torch.tensor(ntp, dtype=f32),
            "margin_loss": torch.tensor(margin, dtype=f32), "node_loss": torch.tensor(node, dtype=f32),
            "num_tokens": torch.tensor(tokens), "num_nodes": torch.tensor(nodes),
            "num_head_tokens": torch.tensor(head_tokens)}


def test_steps_accumulate_without_reads_and_one_read_gives_every_steps_record(monkeypatch):
    device = torch.device("cpu")
    log = StepLog(device, world_size=1, peak_flops=1e9)
    acc = StepAccumulator(device)
    micro = [[_out(2.5, 2.0, 0.5, 1.0, 100, 9, 40), _out(1.5, 1.0, 0.25, 0.5, 60, 9, 20)],
             [_out(1.0, 0.75, 0.125, 0.25, 80, 12, 30), _out(0.5, 0.25, 0.0, 0.125, 20, 3, 10)]]
    reads = CountReads(monkeypatch)
    for step, outs in enumerate(micro, start=1):
        acc.reset()
        for out in outs:
            acc.add(out, torch.tensor(1e6, dtype=torch.float64) * out["num_tokens"])
        log.push(step, acc, lr=1e-3 * step, epoch=0.5 * step, grad_norm=torch.tensor(0.75 * step))
    assert reads.calls == [], "accumulating a step read a tensor on the host"
    records = log.read()
    monkeypatch.undo()
    assert [r["step"] for r in records] == [1, 2] and log.read() == []
    # By hand: means over the step's micro-steps, totals of the counts, the norm and lr as pushed.
    assert records[0]["loss"] == 2.0 and records[0]["ntp_loss"] == 1.5 and records[0]["node_loss"] == 0.75
    assert records[1]["margin_loss"] == 0.0625 and records[1]["loss"] == 0.75
    assert [r["tokens"] for r in records] == [160, 100]
    assert [r["flops"] for r in records] == [160e6, 100e6]
    assert [r["grad_norm"] for r in records] == [0.75, 1.5] and [r["lr"] for r in records] == [1e-3, 2e-3]
    for r in records:
        assert r["mfu"] == pytest.approx(r["flops"] / r["step_time_s"] / 1e9)


def _run(tmp_path, *overrides: str) -> dict:
    cfg = write_config(tmp_path / "small.yaml", SMALL)
    out = tmp_path / "syncs.json"
    cmd = [sys.executable, str(REPO / "tests" / "jobs" / "count_syncs.py"), str(cfg), str(out),
           f"train.output_dir={tmp_path / 'run'}", "train.export=false", "train.peak_flops=1e12", *overrides]
    proc = subprocess.run(cmd, cwd=REPO, env=clean_env(), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-5000:]
    return json.loads(out.read_text())


@pytest.mark.slow
@pytest.mark.parametrize("stage", ["zero0", "zero2", "zero3"])
def test_no_host_reads_between_logging_steps(tmp_path, stage):
    run = _run(tmp_path, f"train.deepspeed={stage}", "train.max_steps=6", "train.log_every=1000")
    assert run["steps"] == 6
    # Steps 1-2 are warm-up: DeepSpeed traces its ZeRO-3 fetch order (reading lists) over the first ones.
    for step in ("3", "4", "5"):
        counts = run["counts"].get(step, {})
        assert counts.get("magdi_dist", 0) == 0, (step, counts)
        assert counts.get("deepspeed", 0) <= LIBRARY_READS["deepspeed"][stage], (step, counts)
        assert counts.get("transformers", 0) <= LIBRARY_READS["transformers"], (step, counts)
        unknown = set(counts) - {"magdi_dist", "deepspeed", "transformers", "torch.optim"}
        assert not unknown, (step, counts)


@pytest.mark.slow
def test_logging_interval_changes_no_logged_value(tmp_path):
    """Read every step or once at the end: every record (and the final eval) the same, but the clock."""
    (tmp_path / "every").mkdir(), (tmp_path / "once").mkdir()
    every = _run(tmp_path / "every", "train.max_steps=5", "train.log_every=1", "train.grad_accum=2")
    once = _run(tmp_path / "once", "train.max_steps=5", "train.log_every=1000", "train.grad_accum=2")
    timed = {"step_time_s", "tokens_per_s", "positive_tokens_per_s", "mfu"}
    assert [r["step"] for r in once["records"] if "loss" in r] == [1, 2, 3, 4, 5]
    assert len(every["records"]) == len(once["records"]) == 6  # + the final eval
    for a, b in zip(every["records"], once["records"], strict=True):
        assert {k: v for k, v in a.items() if k not in timed} == {k: v for k, v in b.items() if k not in timed}
