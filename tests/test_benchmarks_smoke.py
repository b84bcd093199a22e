"""Smoke test of the benchmark suite: ``python -m benchmarks --quick`` runs every figure end to end at a
tiny size (tiny-1m, one repetition, 2-rank ZeRO run, the preprocessing benchmark at 60 and 120 MAGs)
and writes valid JSON for each plus the docs table; the peer figure (skipped by ``--quick`` unless named)
has its own test in tests/test_bench_peers.py. No timing is asserted: quick-mode numbers are noise.
Output goes to tmp_path, never to the real benchmarks/results or docs/benchmarks.md."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FIGURES = ("padding", "step_overhead", "mfu", "data_path", "checkpoint", "zero_memory", "preprocessing")  # no peers


@pytest.mark.slow
def test_quick_run_writes_every_figure(tmp_path):
    results, docs = tmp_path / "results", tmp_path / "benchmarks.md"
    docs.write_text("# Benchmarks\n\nHand-written intro.\n\n## Preprocessing\n\nold section\n")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks", "--quick", "--results-dir", str(results), "--docs", str(docs),
         "--workdir", str(tmp_path / "work")],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=1200,
    )
    assert proc.returncode == 0, proc.stderr[-6000:]

    summary = json.loads((results / "summary.json").read_text())
    assert summary["machine"]["cores"] >= 1 and summary["machine"]["torch_threads"] == 1
    for name in FIGURES:
        fig = json.loads((results / f"{name}.json").read_text())
        assert fig["figure"] == name
        if name == "preprocessing" and fig.get("absent"):
            continue  # another engineer's module; optional by design
        assert "error" not in fig, fig.get("error")
        assert isinstance(fig["value"], int | float) and fig["goal"], name
    rows = {r["figure"]: r for r in summary["table"]}
    assert set(rows) == set(FIGURES)
    # quick mode times tiny-1m only, with the pre-optimisation (legacy) student side by side
    step_rows = [r for r in summary["table"] if r["label"].startswith("Step overhead tiny-1m")]
    assert len(step_rows) == 1 and step_rows[0]["before"] is not None and step_rows[0]["after"] is not None
    assert not (results / "peers.json").exists()  # --quick runs the peer figure only when named
    for row in summary["table"]:  # summary.json is the source of truth: every entry says when and where
        assert row["date"] and row["commit"] and "met" in row and "goal" in row, row
    zero = json.loads((results / "zero_memory.json").read_text())
    assert [s["stage"] for s in zero["stages"]] == [0, 1, 2, 3]
    assert zero["stages"][3]["per_rank_bytes"][0]["params"] < zero["stages"][0]["per_rank_bytes"][0]["params"]

    text = docs.read_text()
    assert text.startswith("# Benchmarks\n\nHand-written intro.")  # only the generated block is rewritten
    assert text.count("<!-- bench:begin") == 1 and text.count("<!-- bench:end -->") == 1
    assert text.index("bench:end") < text.index("## Preprocessing")  # kept after our block
    assert "| figure | before | value | goal | met | measured |" in text


@pytest.mark.parametrize("mode", ["frozen", "live"])
def test_before_and_after_paths_compute_the_same(tmp_path, mode):
    """The "before" code the benchmarks time side by side (benchmarks/legacy.py) must be the same
    computation as today's: same batch from both collates, same losses and gradients from both
    students (today's skips placeholder rows in the LM pass; nothing that a loss reads changes)."""
    import torch

    sys.path.insert(0, str(ROOT))
    from benchmarks.legacy import LegacyStudent, legacy_collate
    from magdi_dist.data import RowConfig, collate, rows_from_mags, zero_features
    from magdi_dist.data.tokenizer import mag_texts, train_tokenizer
    from magdi_dist.mag.synth import synth_mags
    from magdi_dist.model import MAGDiStudent, StudentConfig, load_lm

    torch.set_num_threads(1)
    mags = synth_mags(12, agents=3, rounds=2, seed=3)
    tok = train_tokenizer(mag_texts(mags), tmp_path / "tok", vocab_size=320)
    rows = rows_from_mags(mags, tok, RowConfig(max_length=192), zero_features(32))
    batch_rows = [r for r in rows if not r["has_negative"]][:2] + [r for r in rows if r["has_negative"]][:3]
    assert len(batch_rows) == 5
    new_batch, old_batch = collate(batch_rows, tok.pad_token_id), legacy_collate(batch_rows, tok.pad_token_id)
    for key, value in new_batch.items():
        if isinstance(value, torch.Tensor):
            assert torch.equal(value, old_batch[key]) and value.dtype == old_batch[key].dtype, key
    for key in ("x", "edge_index", "y", "batch", "ptr"):
        assert torch.equal(getattr(new_batch["graph"], key), getattr(old_batch["graph"], key)), key

    tiny = {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 4, "intermediate_size": 64}
    cfg = StudentConfig(base="unused", graph_features=mode, gcn_hidden=16, gcn_dropout=0.0)
    new = MAGDiStudent(cfg, lm=load_lm(tiny, tokenizer=tok, seed=0))
    old = LegacyStudent(cfg, lm=load_lm(tiny, tokenizer=tok, seed=0))
    old.load_state_dict(new.state_dict())
    got, want = new(new_batch), old(old_batch)
    got["loss"].backward()
    want["loss"].backward()
    for key in want:  # every output the old student had (today's adds num_head_tokens for FLOPs)
        assert torch.allclose(got[key].float(), want[key].float(), rtol=1e-5, atol=1e-6), key
    for (name, p), q in zip(new.named_parameters(), old.parameters(), strict=True):
        if p.grad is None:
            assert q.grad is None or not q.grad.any(), name
        else:
            assert torch.allclose(p.grad, q.grad, rtol=1e-4, atol=1e-7), name
