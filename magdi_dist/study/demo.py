"""``magdi-dist demo``: the whole product on a 2-core laptop-class machine, no GPU, in minutes.

SYNTHETIC MAGs -> Ray Data preprocessing -> three student sizes trained with DeepSpeed ZeRO-2 on 2
CPU ranks under Ray Train -> one MLflow study (embedded sqlite store) -> the champion registered and
answering from the registry -> a summary table. The training settings below are the demo's budget:
about 15 minutes on 2 CPU cores (see the README for measured times and accuracies).
"""

from __future__ import annotations

from pathlib import Path

import yaml

from magdi_dist.study.config import StudyConfig, load_study

# The shared training config of every demo cell (ZeRO-2, 2 ranks, synthetic data). Sizes differ
# only in ``model.base``; everything else, data and tokenizer included, is the same for all cells.
#
# The budget, measured on an idle 2-core machine (README, "The demo"): each cell's frozen node
# features are a forward pass of that cell's own base student over every node text, so the feature
# pass costs as much as a fraction of an epoch of training (257 s for tiny-20m over 600 MAGs with one
# actor); 300 MAGs in 4 shards feed 2 feature actors. Training costs 0.26 / 0.88 / 2.5 s per step for
# tiny-1m / 5m / 20m on 2 ranks, so all three sizes get the same 100 steps (1600 pairs, 0.8 epoch):
# the same data and token budget for every size, as a scaling study needs.
DEMO_TRAIN = {
    "model": {"base": "tiny-1m", "gcn_hidden": 64},
    "data": {"synthetic": {"n": 300, "agents": 3, "rounds": 3, "seed": 0}, "max_len": 96, "vocab_size": 512,
             "eval_fraction": 0.1},
    "train": {"max_steps": 100, "micro_batch_size": 8, "lr": 3.0e-3, "warmup_steps": 10, "schedule": "cosine",
              "deepspeed": "zero2", "eval_every": 100, "save_every": 50, "keep_last_k": 1, "progress": False},
    "preprocess": {"records_per_shard": 75, "concurrency": 2},
}
DEMO_SIZES = [("1m", "tiny-1m"), ("5m", "tiny-5m"), ("20m", "tiny-20m")]


def write_demo_study(out: Path, *, quick: bool = False) -> Path:
    """Write the demo's training and study configs under ``out``; ``quick`` is the CI variant (two
    small sizes, a few steps) that exercises every stage in a fraction of the time."""
    out.mkdir(parents=True, exist_ok=True)
    train = yaml.safe_load(yaml.safe_dump(DEMO_TRAIN))
    sizes = DEMO_SIZES
    evaluation = {"synthetic_n": 100, "max_new_tokens": 48}
    if quick:
        train["data"]["synthetic"]["n"] = 60
        train["train"].update(max_steps=6, eval_every=3, save_every=3)
        sizes = DEMO_SIZES[:2]
        evaluation = {"synthetic_n": 8, "max_new_tokens": 16}
    (out / "demo_train.yaml").write_text(yaml.safe_dump(train, sort_keys=False))
    study = {
        "name": "demo-quick" if quick else "demo",
        "base_config": "demo_train.yaml",
        "sizes": [{"name": name, "overrides": {"model.base": base}} for name, base in sizes],
        "variants": [{"name": "magdi"}],
        "model_name": "magdi-demo-student",
        "champion_metric": "eval_accuracy",
        "champion_mode": "max",
        "output_dir": str(out),
        "num_workers": 2,
        "evaluation": evaluation,
    }
    path = out / "demo_study.yaml"
    path.write_text(yaml.safe_dump(study, sort_keys=False))
    return path


def load_demo(out: Path, *, quick: bool = False) -> StudyConfig:
    return load_study(write_demo_study(out, quick=quick))


def ask_champion(summary: dict) -> tuple[str, str]:
    """Load the champion back from the registry, as a user would, and ask it a held-out question."""
    import mlflow

    from magdi_dist.mag.synth import synth_mags

    question = synth_mags(1, seed=987_654)[0].question
    mlflow.set_tracking_uri(summary["tracking_uri"])
    model = mlflow.pyfunc.load_model(summary["champion"]["uri"])
    return question, model.predict([question])[0]
