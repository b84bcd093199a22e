"""Positive-chain tokens/s: the same work for every variant (issue 24, item 2). ``tokens`` counts every
row the LM ran (negatives and extra nodes for MAGDi, positives only for NTP-only), ``positive_tokens``
the positive chains alone. An NTP-only and a MAGDi run over the same shards and batches, through
``magdi-dist train``'s recipe in one process: their positive counts agree step by step, their all-row
counts do not, and the study's readers (cell summary, ablation table) carry both figures."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from launchers import REPO, SMALL, clean_env, train_records, write_config

pytestmark = pytest.mark.slow

# Both runs in one process (the recipe ``magdi-dist train`` calls), to pay the imports once.
TWO_RUNS = """
import json, sys
from magdi_dist.recipes.train import run
config, runs = sys.argv[1], json.loads(sys.argv[2])
for overrides in runs:
    assert run(config, overrides, resume=False) == 0
"""


def test_positive_tokens_are_the_same_work_for_ntp_only_and_magdi(tmp_path):
    from magdi_dist.recipes.study import _train_summary
    from magdi_dist.study.ablation import cell_row, markdown

    config = write_config(tmp_path / "small.yaml", SMALL)
    common = [f"preprocess.out_dir={tmp_path / 'shards'}", "train.max_steps=3", "train.log_every=1",
              "train.eval_every=0", "train.export=false"]
    magdi, ntp = tmp_path / "magdi", tmp_path / "ntp"
    runs = [[*common, f"train.output_dir={magdi}"],
            [*common, f"train.output_dir={ntp}", "model.margin_weight=0", "model.node_weight=0"]]
    proc = subprocess.run([sys.executable, "-c", TWO_RUNS, str(config), json.dumps(runs)], cwd=REPO,
                          env=clean_env(), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-5000:]

    steps = {name: [r for r in train_records(d) if "loss" in r] for name, d in (("magdi", magdi), ("ntp", ntp))}
    assert [r["step"] for r in steps["magdi"]] == [r["step"] for r in steps["ntp"]] == [1, 2, 3]
    # The same batches: the same positive chains, step by step ...
    assert [r["positive_tokens"] for r in steps["magdi"]] == [r["positive_tokens"] for r in steps["ntp"]]
    # ... which is all NTP-only runs (the LM's own count of the rows it ran agrees with the batch's) ...
    assert all(r["tokens"] == r["positive_tokens"] > 0 for r in steps["ntp"])
    # ... while MAGDi also runs negatives: all-row tokens differ between the variants.
    assert all(m["tokens"] > n["tokens"] for m, n in zip(steps["magdi"], steps["ntp"], strict=True))
    for r in steps["magdi"] + steps["ntp"]:
        assert r["positive_tokens_per_s"] == pytest.approx(r["positive_tokens"] / r["step_time_s"])
        assert r["tokens_per_s"] == pytest.approx(r["tokens"] / r["step_time_s"])

    # What the study logs for a cell (MLflow metrics, study_summary.json) and what its table shows.
    for name, folder in (("magdi", magdi), ("ntp", ntp)):
        seconds = sum(r["step_time_s"] for r in steps[name])
        want = sum(r["positive_tokens"] for r in steps[name]) / seconds
        assert _train_summary(folder)["positive_tokens_per_s"] == pytest.approx(want)
        row = cell_row(name, folder)
        assert row["positive_tokens_per_s"] == pytest.approx(want)
        assert row["tokens_per_s"] == pytest.approx(sum(r["tokens"] for r in steps[name]) / seconds)
    table = markdown([cell_row("magdi", magdi), cell_row("ntp", ntp)])
    assert "| positive-chain tokens/s | tokens/s (all rows) |" in table.splitlines()[0]
    cells = table.splitlines()[2].split(" | ")
    assert cells[-3] == f"{cell_row('magdi', magdi)['positive_tokens_per_s']:.0f}"
