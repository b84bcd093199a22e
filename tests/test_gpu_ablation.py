"""scripts/gpu_ablation.py, the one-GPU SmolLM2 ablation, run end to end on CPU with a tiny student:
the same processes as on the GPU box (one preparation, torchrun + launch.rank per variant, `magdi-dist
evaluate` per variant, the report), with Ray and MLflow made unimportable in every one of them, as on a
box where they are not installed. Its numbers are recomputed from the files it brings back."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
VARIANTS = ["base", "sft", "magdi-frozen", "magdi-live"]
# ray and mlflow look uninstalled to every process that starts with this on its path (import fails,
# importlib.util.find_spec answers None, as transformers and accelerate ask).
NO_RAY = "import sys\nfor _name in ('ray', 'mlflow'):\n    sys.modules[_name] = None\n"


def _wilson(k: int, n: int, z: float = 1.959963984540054) -> tuple[float, float]:
    centre, half = (k + z * z / 2) / (n + z * z), z * (k * (n - k) / n + z * z / 4) ** 0.5 / (n + z * z)
    return max(0.0, centre - half), min(1.0, centre + half)


@pytest.mark.slow
def test_gpu_ablation_script_runs_on_cpu_without_ray_or_mlflow(tmp_path, shared_data):
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(NO_RAY)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(site), os.environ.get("PYTHONPATH", "")])}
    probe = subprocess.run([sys.executable, "-c", "import ray"], env=env, capture_output=True, text=True)
    assert probe.returncode != 0 and "ray" in probe.stderr  # the blocker works in a child process
    if Path(shared_data).resolve() != (ROOT.parent / "shared" / "data").resolve():
        pytest.skip("the study config names its data as ../shared/data, beside the repository")
    out, work = tmp_path / "out", tmp_path / "work"
    cmd = [sys.executable, "scripts/gpu_ablation.py", "--device", "cpu", "--student", "tiny", "--out", str(out),
           "--workdir", str(work), "--set", "train.max_steps=2", "--set", "data.max_mags=40", "--limit", "6",
           "--max-new-tokens", "8", "--batch-size", "6", "--deadline-s", "1500"]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=1800)
    assert proc.returncode == 0, proc.stdout[-6000:] + proc.stderr[-3000:]
    assert sorted(p.name for p in out.iterdir()) == ["cells.tar.gz", "report.md", "summary.json"]
    summary = json.loads((out / "summary.json").read_text())
    rows = {r["variant"]: r for r in summary["rows"]}
    assert list(rows) == VARIANTS and summary["environment"]["device"] == "cpu"
    assert [p["phase"] for p in summary["phases"]][0] == "preprocess" and all(p["rc"] == 0 for p in summary["phases"])
    with tarfile.open(out / "cells.tar.gz") as tar:
        tar.extractall(tmp_path / "back", filter="data")
    back = tmp_path / "back"
    for variant in VARIANTS:
        cfg = yaml.safe_load((back / "configs" / f"{variant}.yaml").read_text())
        t, m = cfg["train"], cfg["model"]
        # The study's settings reached the cell; only the tiny student and the --set keys differ.
        settings = (t["epochs"], t["lr"], t["micro_batch_size"], t["grad_accum"], t["precision"])
        assert settings == (10, 5e-6, 16, 1, "bf16")
        assert t["max_steps"] == (0 if variant == "base" else 2) and m["base"]["hidden_size"] == 32
        assert (m["node_weight"], m["margin_weight"]) == ((0.0, 0.0) if variant == "sft" else (1.0, 0.1))
        ev = yaml.safe_load((back / "configs" / f"{variant}.eval.yaml").read_text())
        assert ev["limit"] == 6 and len(ev["exclude"]) == 5 and ev["data"].endswith("gsm8k/test.jsonl")
        cell = back / "cells" / f"smollm2-135m-{variant}"
        records = [json.loads(line) for line in (cell / "eval" / "predictions.jsonl").read_text().splitlines()]
        right = sum(bool(r["correct"]) for r in records)
        row = rows[variant]
        assert len(records) == row["n"] == 6 and row["accuracy"] == pytest.approx(right / 6)
        assert tuple(row["ci"]) == pytest.approx(_wilson(right, 6), abs=1e-9)
        steps = [json.loads(line) for line in (cell / "metrics.jsonl").read_text().splitlines()]
        assert row["steps"] == sum("loss" in s and "eval_loss" not in s for s in steps) == t["max_steps"]
        heldout = [s["eval_ntp_loss"] for s in steps if "eval_ntp_loss" in s]
        assert heldout and row["eval_ntp_loss"] == heldout[-1] > 0
    report = (out / "report.md").read_text()
    assert report.count(" vs ") == 1 + 6 and "| preprocess | 0 |" in report
