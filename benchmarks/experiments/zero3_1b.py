"""A ~1B-parameter Llama-shaped student trained under ZeRO-3 on 2 CPU ranks, on a 24 GiB machine where
its ZeRO-0 model states (16 bytes/parameter/rank in fp32 with Adam, ~2 x 14 GB) cannot fit.

    python -m benchmarks --only zero3_1b [--set steps=2 max_len=64 modes=zero_init,plain precision=bf16]

(``--set base='{"num_hidden_layers": 8}'`` overrides the shape; ``--quick`` is a few-MB Llama through the
same path: it proves the code runs, not that 1B fits.)

Per mode, a real 2-process torchrun (gloo) builds the student (``zero_init``: partitioned under
``deepspeed.zero.Init``, model/zero_init.py; ``plain``: a full copy per rank, partitioned by
``deepspeed.initialize``), creates the ZeRO-3 engine, trains ``steps`` steps (``precision``, micro-batch 1)
and, in the zero_init mode, writes the streamed sharded export. Each rank reports its peak resident
memory (VmHWM, reset through /proc/self/clear_refs at the start of each phase) for construction,
engine set-up and the steps, and each step's wall time. Next to it: ``magdi-dist plan``'s figures
(launch/plan.py) for this config on this machine.

Random init (``model.base`` is a config dict: hidden 2048, 16 layers, 32 heads, intermediate 5632,
vocab 32000, tied embeddings: TinyLlama-1.1B's shape with full multi-head attention). Frozen graph
features come from ``tiny-1m`` (``model.feature_model``): this measures training, not feature
extraction, which would hold a full replica of the base in a preprocess actor.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.common import ROOT, Settings, child_env, commit_id
from benchmarks.figure import Row, options

NAME = "zero3_1b"
BASE = {"hidden_size": 2048, "num_hidden_layers": 16, "num_attention_heads": 32, "intermediate_size": 5632,
        "vocab_size": 32000}
# precision bf16 (DeepSpeed's bf16 mode: bf16 weights and gradients, fp32 master weights and Adam states)
# is what DeepSpeed's estimators and the plan assume; fp32 adds 4 bytes per parameter and rank, which a
# 0.9B student on 2 ranks does not have room for in 24 GiB. base: overrides of BASE.
OPTIONS = {"steps": 2, "max_len": 64, "modes": ["zero_init", "plain"], "precision": "bf16", "base": {}}
QUICK = {"steps": 1, "base": {"hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4,
                              "intermediate_size": 128, "vocab_size": 512}}


def config_tree(out_dir: Path, base: dict, max_len: int, steps: int, precision: str) -> dict:
    return {
        "model": {"base": base, "feature_model": "tiny-1m", "gcn_hidden": 64},
        "data": {"synthetic": {"n": 16}, "max_len": max_len, "vocab_size": 512, "eval_fraction": 0.0},
        "train": {"deepspeed": "zero3", "precision": precision, "micro_batch_size": 1, "max_steps": steps,
                  "warmup_steps": 1, "output_dir": str(out_dir), "progress": False, "skip_memory_check": True,
                  "export_max_shard_size": "1GB"},
    }


def _kib(field: str) -> int:
    return int(re.search(rf"{field}:\s+(\d+)", Path("/proc/self/status").read_text()).group(1))


def _reset_peak() -> int:
    import gc

    gc.collect()
    Path("/proc/self/clear_refs").write_text("5")
    return _kib("VmRSS")


def worker(mode: str, config: str, steps: int, out_json: Path) -> None:
    """One rank: build, initialize, train ``steps`` steps, export; a JSON of phases per rank."""
    import deepspeed
    import torch
    from transformers import AutoTokenizer

    from magdi_dist.config import load_config
    from magdi_dist.data.shards import load_train_data
    from magdi_dist.launch.resolve import model_shape
    from magdi_dist.model import MAGDiStudent
    from magdi_dist.preprocess.prepare import shards_dir
    from magdi_dist.train.dist import init_distributed
    from magdi_dist.train.engine import engine_config, initialize
    from magdi_dist.train.export import export, export_weight_files
    from magdi_dist.train.loop import _collate

    cfg = load_config(config)
    info = init_distributed()
    deepspeed.init_distributed(dist_backend="gloo")
    data = load_train_data(shards_dir(cfg))
    tok = AutoTokenizer.from_pretrained(data.tokenizer)
    ds_config, optimizer = engine_config(cfg, info.world_size, "cpu", model_shape(cfg)[0].hidden_size)
    phases: dict[str, dict] = {}

    def phase(name: str, before: int, t0: float) -> None:
        phases[name] = {"rss_before_gib": before / 2**20, "peak_gib": _kib("VmHWM") / 2**20,
                        "growth_gib": (_kib("VmHWM") - before) / 2**20, "seconds": time.perf_counter() - t0}
        # Written after every phase: a rank the kernel kills later (out of memory) still reports these.
        out_json.write_text(json.dumps({"mode": mode, "rank": info.rank, "phases": phases, "partial": True}))

    before, t0 = _reset_peak(), time.perf_counter()
    student = MAGDiStudent(cfg.model, tokenizer=tok, feature_dim=data.feature_dim,
                           ds_config=ds_config if mode == "zero_init" else None)
    phase("construction", before, t0)
    before, t0 = _reset_peak(), time.perf_counter()
    engine, _ = initialize(student, cfg.train, steps, ds_config, optimizer)
    phase("initialize", before, t0)
    before, t0 = _reset_peak(), time.perf_counter()
    step_s, losses = [], []
    engine.train()
    for i in range(steps):
        rows = [data.train[(i * info.world_size + info.rank) % len(data.train)]]
        t = time.perf_counter()
        out = engine(_collate(cfg, rows, tok.pad_token_id or 0, 0, info.device))
        engine.backward(out["loss"])
        engine.step()
        losses.append(float(out["loss"]))
        step_s.append(time.perf_counter() - t)
    phase("steps", before, t0)
    result = {"mode": mode, "rank": info.rank, "phases": phases, "step_seconds": step_s, "losses": losses,
              "rows_tokens": int(out["num_tokens"])}
    if mode == "zero_init":
        before, t0 = _reset_peak(), time.perf_counter()
        export_dir = export(engine, cfg, tok, Path(cfg.train.output_dir) / "export", info.rank)
        phase("export", before, t0)
        result["export_files"] = [p.name for p in export_weight_files(export_dir)]
    out_json.write_text(json.dumps(result))
    torch.distributed.barrier()


def run(settings: Settings) -> dict:
    import yaml

    from magdi_dist.config import load_config
    from magdi_dist.launch.plan import plan, this_machine
    from magdi_dist.preprocess.prepare import prepare_data

    o = options(settings, OPTIONS, QUICK)
    steps = o["steps"]
    settings.workdir.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="zero3_1b_", dir=settings.workdir))
    tree = config_tree(work / "run", {**BASE, **o["base"]}, o["max_len"], steps, o["precision"])
    config = work / "config.yaml"
    config.write_text(yaml.safe_dump(tree))
    cfg = load_config(config)
    prepare_data(cfg, engine="local", log=lambda _m: None)  # before the ranks start: they only read it
    prediction = plan(cfg, this_machine(2))
    report = {"date": time.strftime("%Y-%m-%d"), "commit": commit_id(), "config": tree,
              "plan": {k: prediction[k] for k in ("params", "largest_layer_params", "activation_bytes")}
              | {"presets": {n: prediction["presets"][n] for n in ("zero0", "zero3")}}, "modes": {}}
    env = child_env()
    for mode in o["modes"]:
        outs = [work / f"{mode}_rank{r}.json" for r in (0, 1)]
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m",
               f"benchmarks.experiments.{NAME}", "--worker", mode, "--config", str(config), "--steps", str(steps),
               "--out", str(work / f"{mode}_rank{{rank}}.json")]
        t0 = time.perf_counter()
        proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
        if proc.returncode != 0:  # with the phases each rank finished before it failed
            report["modes"][mode] = {"error": proc.stderr[-3000:], "returncode": proc.returncode,
                                     "rank_sigkilled": "exitcode  : -9" in proc.stderr,  # the OOM killer's signal
                                     "ranks": [json.loads(p.read_text()) for p in outs if p.is_file()]}
            continue
        report["modes"][mode] = {"wall_s": time.perf_counter() - t0,
                                 "ranks": [json.loads(p.read_text()) for p in outs]}
    return report


def rows(result: dict) -> list[Row]:
    """Per mode: did every step train (no rank killed), and the highest peak RSS of any rank and phase."""
    out = []
    for mode, m in result["modes"].items():
        peak = max((p["peak_gib"] for r in m["ranks"] for p in r["phases"].values()), default=None)
        out.append(Row(f"zero3_1b_{mode}", f"~1B student ({result['plan']['params'] / 1e9:.2f}B params), ZeRO-3 on 2 "
                       f"CPU ranks, {mode}: highest per-rank peak RSS, GiB", peak, "trains (no rank killed)",
                       "error" not in m, "GiB"))
    return out


def details(result: dict) -> str:
    z = result["plan"]["presets"]
    plan = ", ".join(f"{k.replace('zero', 'ZeRO-')} {z[k]['per_device_bytes'] / 2**30:.1f} GiB (fits {z[k]['fits']})"
                     for k in ("zero0", "zero3"))
    out = [f"- ZeRO-3 ~1B ({result['plan']['params'] / 1e9:.2f}B params, {result['date']}, commit "
           f"{result.get('commit', '?')}): `magdi-dist plan` per rank {plan}."]
    for mode, m in result["modes"].items():
        phases = {}
        for r in m["ranks"]:
            for name, p in r["phases"].items():
                phases[name] = max(phases.get(name, 0.0), p["peak_gib"])
        steps = [s for r in m["ranks"] for s in r.get("step_seconds", [])]
        peaks = ", ".join(f"{k} {v:.1f}" for k, v in phases.items())
        state = f"failed (rc {m['returncode']})" if "error" in m else f"{len(steps) // max(len(m['ranks']), 1)} steps"
        out.append(f"- ZeRO-3 ~1B, {mode}: {state}; peak RSS per phase, GiB (highest rank): {peaks}"
                   + (f"; step {min(steps):.1f}-{max(steps):.1f} s" if steps else "") + ".")
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    """One rank, as ``run`` starts it under torchrun."""
    parser = argparse.ArgumentParser(prog=f"python -m benchmarks.experiments.{NAME}")
    parser.add_argument("--worker", required=True)
    parser.add_argument("--config", required=True)
    parser.add_argument("--steps", type=int, required=True)
    parser.add_argument("--out", required=True)
    args = parser.parse_args(argv)
    worker(args.worker, args.config, args.steps, Path(args.out.format(rank=os.environ["RANK"])))
    return 0


if __name__ == "__main__":
    sys.exit(main())
