"""Seeds as a study axis and the paired per-size comparison (study/config.py, study/paired.py,
study/curve.py seed_means, recipes/study.py mark_best_lr), checked against the independent
recomputation in paired_reference.py; and, end to end, a micro study of two sizes x two variants x two
seeds on a real local Ray and an embedded MLflow store, its paired numbers recomputed from the cells'
predictions.jsonl."""

from __future__ import annotations

import json
import math
import random
from pathlib import Path

import numpy as np
import pytest
from paired_reference import newcombe, paired_reference
from study_setup import NTP_ONLY, study_file

from magdi_dist.config import ConfigError
from magdi_dist.study.config import load_study


def test_seed_cells_vary_the_training_seed_only(tmp_path):
    study = load_study(study_file(tmp_path, seeds=[0, 1, 2], variants=[{"name": "magdi"}, NTP_ONLY],
                                   sizes=[{"name": "1m", "overrides": {"model.base": "tiny-1m"}}]))
    configs = {c.name: study.cell_config(c) for c in study.cells()}
    assert list(configs) == ["1m-magdi-s0", "1m-magdi-s1", "1m-magdi-s2", "1m-ntp-only-s0", "1m-ntp-only-s1",
                             "1m-ntp-only-s2"]
    assert [configs[f"1m-magdi-s{s}"].train.seed for s in range(3)] == [0, 1, 2]
    # The same shards, split and held-out data for every seed; only train.seed and the cell folder differ.
    assert len({(c.data.model_dump_json(), c.preprocess.out_dir, c.model.seed) for c in configs.values()}) == 1
    one = {k: v for k, v in configs["1m-magdi-s0"].model_dump().items() if k != "train"}
    assert all({k: v for k, v in c.model_dump().items() if k != "train"} == one
               for n, c in configs.items() if n.startswith("1m-magdi"))
    assert study.compared == ("magdi", "ntp-only")


def test_seeds_in_an_lr_sweep_and_without_seeds_the_old_names(tmp_path):
    swept = load_study(study_file(tmp_path, seeds=[3, 7]))
    assert [c.name for c in swept.cells()] == ["1m-magdi-lr0.003-s3", "1m-magdi-lr0.003-s7", "1m-magdi-lr0.01-s3",
                                               "1m-magdi-lr0.01-s7", "5m-magdi-s3", "5m-magdi-s7"]
    plain = load_study(study_file(tmp_path))
    assert [c.name for c in plain.cells()] == ["1m-magdi-lr0.003", "1m-magdi-lr0.01", "5m-magdi"]
    assert plain.compared is None  # one variant: nothing to compare


@pytest.mark.parametrize(("changes", "message"), [
    ({"seeds": [0, 0]}, "distinct"),
    ({"seeds": []}, "distinct"),
    ({"compare": ["magdi", "sft"]}, "compare"),
    ({"compare": ["magdi", "magdi"]}, "compare"),
])
def test_bad_seed_and_compare_settings_fail_on_load(tmp_path, changes, message):
    with pytest.raises(ConfigError, match=message):
        load_study(study_file(tmp_path, **changes))


def test_best_lr_is_chosen_by_the_mean_over_seeds():
    from magdi_dist.recipes.study import CellResult, mark_best_lr

    # lr 1e-3 has the single best seed (0.5) but the worse mean (0.5 and 1.5 -> 1.0 against 0.8).
    losses = {(1e-3, 0): 0.5, (1e-3, 1): 1.5, (3e-3, 0): 0.7, (3e-3, 1): 0.9}
    results = [CellResult(f"c-{lr}-{s}", "1m", "magdi", "finished", lr=lr, seed=s, eval_ntp_loss=v)
               for (lr, s), v in losses.items()]
    mark_best_lr(results)
    assert [(r.lr, r.seed) for r in results if r.best_lr] == [(3e-3, 0), (3e-3, 1)]


def test_seed_means_are_the_mean_and_sample_sd():
    from magdi_dist.study.curve import seed_means

    rows = [{"cell": f"1m-magdi-s{s}", "size": "1m", "variant": "magdi", "seed": s, "lr": None, "params": 1e6,
             "flops": 1e12, "eval_ntp_loss": v, "eval_loss": None, "accuracy": a}
            for s, v, a in [(0, 0.30, 0.5), (1, 0.20, 0.6), (2, 0.25, None)]]
    (mean,) = seed_means(rows)
    assert mean["cell"] == "1m-magdi" and mean["seeds"] == [0, 1, 2]
    assert mean["eval_ntp_loss"] == pytest.approx(0.25) and mean["eval_ntp_loss_sd"] == pytest.approx(0.05)
    assert mean["accuracy"] == pytest.approx(0.55) and mean["accuracy_n"] == 2  # the seed without one is left out
    assert mean["accuracy_sd"] == pytest.approx(math.sqrt(0.005)) and mean["eval_loss"] is None


def test_the_reference_reproduces_newcombes_published_intervals():
    """The recomputation the tests trust is itself checked against Newcombe (1998), Table II."""
    for (e, f, g, h), lo, hi in [((36, 12, 2, 0), 0.0569, 0.3404), ((18, 12, 2, 18), 0.0562, 0.3290),
                                 ((53, 0, 0, 1), -0.0729, 0.0729)]:
        a = [True] * (e + f) + [False] * (g + h)
        b = [True] * e + [False] * f + [True] * g + [False] * h
        got = newcombe(a, b)
        assert (round(got["low"], 4), round(got["high"], 4)) == (lo, hi)


def _fake_cell(root: Path, name: str, correct: list[bool], **fields) -> dict:
    folder = root / name
    (folder / "export").mkdir(parents=True)
    (folder / "eval").mkdir()
    lines = [json.dumps({"id": f"q{i:03d}", "index": i, "correct": c}) for i, c in enumerate(correct)]
    (folder / "eval" / "predictions.jsonl").write_text("\n".join(lines) + "\n")
    return {"cell": name, "status": "finished", "best_lr": True, "export_dir": str(folder / "export"), **fields}


def check_against_reference(paired: dict, pairs: dict, params: dict) -> None:
    """Every number of ``paired`` (study.paired.compare_cells) against paired_reference."""
    ref = paired_reference(pairs, params)
    assert [s["size"] for s in paired["sizes"]] == list(pairs)
    for s in paired["sizes"]:
        r, acc, loss = ref[s["size"]], s["accuracy"], s["eval_ntp_loss"]
        for row in acc["per_seed"]:
            want = r["per_seed"][row["seed"]]
            assert (row["only_a"], row["only_b"]) == (want["only_a"], want["only_b"])
            assert row["difference"] == pytest.approx(want["difference"], abs=1e-12)
            assert (row["ci95_low"], row["ci95_high"]) == pytest.approx((want["low"], want["high"]), abs=1e-9)
            assert row["mcnemar_p"] == pytest.approx(want["p"], abs=1e-9)
        assert acc["only_a"] == sum(w["only_a"] for w in r["per_seed"].values())
        assert acc["difference"] == pytest.approx(float(np.mean(r["question_means"])), abs=1e-12)
        if r["pooled"] is None:
            assert acc["ci95_low"] is None and "no pooled interval" in acc["message"]
        else:
            assert (acc["ci95_low"], acc["ci95_high"]) == pytest.approx(r["pooled"][1:], abs=1e-9)
        assert loss["difference"] == pytest.approx(r["loss_mean"], abs=1e-12)
        if r["loss"] is None:
            assert loss["ci95_low"] is None
        else:
            assert (loss["ci95_low"], loss["ci95_high"]) == pytest.approx(r["loss"][1:], abs=1e-9)
    for name, fit in ref["trend"].items():
        got = paired["trend"][name]
        assert got["slope"] == pytest.approx(fit.slope, abs=1e-9)
        if ref["trend_df"] >= 1 and fit.stderr > 0:
            from scipy.stats import t

            half = t.ppf(0.975, ref["trend_df"]) * fit.stderr
            assert (got["ci95_low"], got["ci95_high"]) == pytest.approx((fit.slope - half, fit.slope + half), abs=1e-9)
            assert got["p"] == pytest.approx(fit.pvalue, abs=1e-9)


def test_paired_comparison_matches_an_independent_recomputation(tmp_path):
    from magdi_dist.study.paired import compare_cells, markdown

    rng = random.Random(0)
    params = {"small": 2.5e5, "mid": 1.1e6, "large": 5e6}
    cells, pairs = [], {}
    for size, (pa, pb) in zip(params, [(0.40, 0.38), (0.55, 0.50), (0.70, 0.62)], strict=True):
        for seed in (0, 1, 2):
            a = [rng.random() < pa for _ in range(120)]
            b = [x if rng.random() < 0.7 else rng.random() < pb for x in a]  # correlated, as paired answers are
            la, lb = 0.3 - 0.01 * seed + rng.random() * 0.01, 0.31 + rng.random() * 0.01
            common = {"size": size, "seed": seed, "params": params[size]}
            cells += [_fake_cell(tmp_path, f"{size}-magdi-s{seed}", a, variant="magdi", eval_ntp_loss=la, **common),
                      _fake_cell(tmp_path, f"{size}-ntp-s{seed}", b, variant="ntp", eval_ntp_loss=lb, **common)]
            pairs.setdefault(size, {})[seed] = (tmp_path / f"{size}-magdi-s{seed}", tmp_path / f"{size}-ntp-s{seed}",
                                                la, lb)
    cells.append({**cells[0], "cell": "failed", "status": "failed"})  # a failed cell is never compared
    paired = compare_cells(cells, "magdi", "ntp")
    json.dumps(paired, allow_nan=False)  # what the study's summary JSON needs
    check_against_reference(paired, pairs, params)
    assert paired["trend"]["accuracy"]["n"] == 9 and paired["trend"]["accuracy"]["df"] == 7
    text = markdown(paired)
    assert text.count("\n| ") == 2 + 3 and "gap vs log10(params), accuracy: slope" in text and "clustered" in text


def test_different_questions_are_refused(tmp_path):
    from magdi_dist.study.paired import compare_cells

    common = {"size": "s", "seed": 0, "params": 1e6, "eval_ntp_loss": 0.1}
    cells = [_fake_cell(tmp_path, "a", [True, False], variant="a", **common),
             _fake_cell(tmp_path, "b", [True, False, True], variant="b", **common)]
    with pytest.raises(ValueError, match="different"):
        compare_cells(cells, "a", "b")


def test_the_ablation_report_compares_a_seeded_study_per_size(tmp_path, capsys):
    from magdi_dist.study.ablation import main

    rng = random.Random(1)
    cells = []
    for size, params in (("s", 2.5e5), ("l", 5e6)):
        for seed in (0, 1):
            a = [rng.random() < 0.5 for _ in range(30)]
            b = [rng.random() < 0.5 for _ in range(30)]
            common = {"size": size, "seed": seed, "params": params}
            cells += [_fake_cell(tmp_path, f"{size}-a-s{seed}", a, variant="magdi", eval_ntp_loss=0.3, **common),
                      _fake_cell(tmp_path, f"{size}-b-s{seed}", b, variant="ntp-only", eval_ntp_loss=0.31, **common)]
    path = tmp_path / "study_summary.json"
    path.write_text(json.dumps({"study": "t", "cells": cells, "paired": {"a": "magdi", "b": "ntp-only"}}))
    main([str(path)])
    assert "magdi vs ntp-only, paired per size" in capsys.readouterr().out
    main([str(path), "--compare", "ntp-only", "magdi"])
    assert "differences are ntp-only - magdi" in capsys.readouterr().out


MICRO_SIZES = [("0.1m", {"preset": "tiny-1m", "hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2,
                         "intermediate_size": 64}, 1e-2),
               ("0.25m", {"preset": "tiny-1m", "hidden_size": 64, "num_hidden_layers": 4, "num_attention_heads": 4,
                          "intermediate_size": 176}, 1e-2)]
# 150 steps: the students then state answers and get a few of them right; 120 questions (evaluating
# them is a second or two a cell) make it near certain that the two variants disagree on some, so the
# paired accuracy is not all zeros (asserted below).
STEPS, QUESTIONS = 150, 120


@pytest.mark.slow
def test_micro_study_with_seeds_end_to_end(tmp_path):
    """Two sizes x two variants x two seeds through run_study (real Ray Train + DeepSpeed, embedded
    MLflow); every paired number in the summary recomputed from the cells' predictions.jsonl."""
    from mlflow_server import mlflow_globals_restored

    from magdi_dist.preprocess.prepare import prepare_data
    from magdi_dist.recipes.study import run_study
    from magdi_dist.study.report import format_summary

    path = study_file(tmp_path, train={"data.synthetic.n": 240, "train.max_steps": STEPS, "train.eval_every": STEPS,
                                       "train.save_every": STEPS, "train.warmup_steps": 10},
                      name="micro-seeds", seeds=[0, 1], variants=[{"name": "magdi"}, NTP_ONLY], num_workers=1,
                      sizes=[{"name": n, "overrides": {"model.base": b, "train.lr": lr}} for n, b, lr in MICRO_SIZES],
                      evaluation={"synthetic_n": QUESTIONS, "max_new_tokens": 32, "batch_size": QUESTIONS})
    study = load_study(path)
    # The shards in this process first, so the first cell finds them up to date: Ray Data writes the same
    # bytes (tests/test_preprocess_kill.py) and the demo's study test prepares through it; here it would
    # only add its start-up to a test about seeds and pairing.
    prepare_data(study.cell_config(study.cells()[0]), engine="local")
    with mlflow_globals_restored():
        summary = run_study(study)
    assert summary["status"] == "FINISHED", [c["error"] for c in summary["cells"] if c["error"]]
    assert [c["cell"] for c in summary["cells"]] == [f"{s}-{v}-s{seed}" for s, *_ in MICRO_SIZES
                                                     for v in ("magdi", "ntp-only") for seed in (0, 1)]
    on_disk = json.loads((tmp_path / "study" / "study_summary.json").read_text())
    paired = on_disk["paired"]
    assert (paired["a"], paired["b"]) == ("magdi", "ntp-only") and len(paired["sizes"]) == 2
    cells = {c["cell"]: c for c in on_disk["cells"]}
    params = {s: cells[f"{s}-magdi-s0"]["params"] for s, *_ in MICRO_SIZES}
    pairs = {s: {seed: (Path(cells[f"{s}-magdi-s{seed}"]["export_dir"]).parent,
                        Path(cells[f"{s}-ntp-only-s{seed}"]["export_dir"]).parent,
                        cells[f"{s}-magdi-s{seed}"]["eval_ntp_loss"], cells[f"{s}-ntp-only-s{seed}"]["eval_ntp_loss"])
                 for seed in (0, 1)} for s, *_ in MICRO_SIZES}
    check_against_reference(paired, pairs, params)
    for s in paired["sizes"]:
        # The drawn problems, less any the study finds among its training questions.
        evaluated = json.loads((pairs[s["size"]][0][0] / "eval" / "summary.json").read_text())["n"]
        assert s["accuracy"]["n_questions"] == evaluated >= 0.75 * QUESTIONS and s["accuracy"]["n_seeds"] == 2
        assert s["seeds"] == [0, 1]
    # Deterministic training (one rank, fixed seeds): some answers differ, so the check above had teeth.
    assert sum(s["accuracy"]["questions_differing"] for s in paired["sizes"]) > 0, "no discordant pair"
    # Different seeds trained differently; the curve fits each size's mean over its two seeds.
    assert cells["0.1m-magdi-s0"]["eval_ntp_loss"] != cells["0.1m-magdi-s1"]["eval_ntp_loss"]
    means = {(r["size"], r["variant"]): r for r in on_disk["curve_rows"]}
    row = means[("0.1m", "magdi")]
    assert row["eval_ntp_loss"] == pytest.approx(np.mean([cells[f"0.1m-magdi-s{i}"]["eval_ntp_loss"] for i in (0, 1)]))
    assert on_disk["curve"]["variants"]["magdi"]["vs_params"]["n_points"] == 2
    text = format_summary(on_disk)
    assert "mean ± sd over seeds" in text and "magdi vs ntp-only, paired per size" in text
