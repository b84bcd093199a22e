"""Figure 3, ZeRO memory: per-rank bytes of parameters + gradients + optimizer state under ZeRO-0/1/2/3
on 2 ranks, counted from the tensors the engine actually holds.

A real 2-process run (torchrun, gloo, one thread per rank) builds the student and a DeepSpeed engine
per stage, trains one step (torch AdamW creates its state lazily), runs the forward + backward of a
second step and, with the gradients still held, counts on each rank:

* params: every parameter's storage (``ds_tensor``, the rank's partition, under ZeRO-3);
* master: fp32 partitions the ZeRO optimizer keeps (``single_partition_of_fp32_groups``,
  ``fp32_partitioned_groups_flat``; in fp32 training ZeRO-3 aliases them to the parameters);
* grads: ``.grad`` of parameters and master partitions, and the ZeRO optimizer's gradient
  partitions / averaged gradients;
* optimizer: the base optimizer's state tensors (Adam's exp_avg, exp_avg_sq);
* buffers: any other tensor the ZeRO optimizer holds (gradient reduction buckets).

Tensors are deduplicated by storage (a flat buffer and the parameter views into it count once, as
the first category that claims them) and a storage counts its full ``nbytes``. The goal compares
params + master + grads + optimizer; buffers are reported next to it.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.common import ROOT, Settings, child_env
from benchmarks.figure import Row

NAME = "zero_memory"
GOAL = 0.55
CATEGORIES = ("params", "master", "grads", "optimizer", "buffers")


def _tensors(obj, path: str, depth: int, seen: set[int]):
    """(attribute path, tensor) of every tensor reachable from ``obj`` through containers and
    DeepSpeed's own small objects (buckets), never through modules or other optimizers."""
    import torch

    if id(obj) in seen or depth > 4:
        return
    seen.add(id(obj))
    if isinstance(obj, torch.Tensor):
        yield path, obj
        if obj.grad is not None:
            yield path + ".grad", obj.grad
    elif isinstance(obj, list | tuple):
        for i, v in enumerate(obj):
            yield from _tensors(v, f"{path}[{i}]", depth + 1, seen)
    elif isinstance(obj, dict):
        for k, v in obj.items():
            yield from _tensors(v, f"{path}[{k}]", depth + 1, seen)
    elif type(obj).__module__.startswith("deepspeed") and hasattr(obj, "__dict__") \
            and not isinstance(obj, torch.nn.Module | torch.optim.Optimizer) and depth > 0:
        for k, v in vars(obj).items():
            yield from _tensors(v, f"{path}.{k}", depth + 1, seen)


def count_rank_bytes(engine) -> dict[str, int]:
    """Bytes per category held on this rank (see the module docstring)."""
    import torch

    claimed: set[int] = set()
    out = dict.fromkeys(CATEGORIES, 0)

    def claim(cat: str, t: torch.Tensor) -> None:
        st = t.untyped_storage()
        if st.nbytes() == 0 or st.data_ptr() in claimed:
            return
        claimed.add(st.data_ptr())
        out[cat] += st.nbytes()

    params = list(engine.module.parameters())
    for p in params:
        claim("params", p.ds_tensor if hasattr(p, "ds_tensor") else p.data)
    wrapper = engine.optimizer
    base = getattr(wrapper, "optimizer", None)
    base = base if isinstance(base, torch.optim.Optimizer) else (
        wrapper if isinstance(wrapper, torch.optim.Optimizer) else None)
    held = list(_tensors(vars(wrapper), "opt", 0, set())) if base is not wrapper else []
    for path, t in held:
        if "fp32" in path and not path.endswith(".grad"):
            claim("master", t)
    for p in params:
        if p.grad is not None:
            claim("grads", p.grad)
    for path, t in held:
        if "grad" in path:
            claim("grads", t)
    if base is not None:
        for state in base.state.values():
            for v in state.values():
                if isinstance(v, torch.Tensor):
                    claim("optimizer", v)
    for _, t in held:
        claim("buffers", t)
    return out


def worker(args: argparse.Namespace) -> None:
    import gc

    import torch.distributed as dist
    from transformers import AutoTokenizer

    from benchmarks.common import make_config, sampled_batches, set_threads, synthetic_rows
    from magdi_dist.data import collate
    from magdi_dist.model import MAGDiStudent
    from magdi_dist.train.dist import init_distributed
    from magdi_dist.train.engine import engine_config, initialize

    set_threads(1)
    info = init_distributed()
    set_threads(1)
    tok = AutoTokenizer.from_pretrained(args.tokenizer)
    results = []
    for stage in args.stages:
        t0 = time.perf_counter()
        cfg = make_config(args.base, micro=2, stage=stage)
        student = MAGDiStudent(cfg.model, tokenizer=tok)
        n_params = sum(p.numel() for p in student.parameters())
        rows = synthetic_rows(tok, student.hidden_size, n_mags=8, seed=info.rank)
        batches = [collate(rb, tok.pad_token_id) for rb in sampled_batches(rows, 2, 2)]
        ds_config, optimizer = engine_config(cfg, info.world_size, "cpu", student.hidden_size)
        engine, _ = initialize(student, cfg.train, 10, ds_config, optimizer)
        engine.train()
        out = engine(batches[0])
        engine.backward(out["loss"])
        engine.step()
        out = engine(batches[1])
        engine.backward(out["loss"])
        counts = count_rank_bytes(engine)  # gradients of step 2 still held, Adam state from step 1
        engine.step()
        gathered = [None] * info.world_size
        dist.all_gather_object(gathered, counts)
        results.append({"stage": stage, "model_params": n_params, "per_rank": gathered,
                        "seconds": time.perf_counter() - t0})
        del engine, student, out
        gc.collect()
    if info.rank == 0:
        Path(args.out).write_text(json.dumps(results))
    dist.barrier()


def run(settings: Settings) -> dict:
    from benchmarks.common import tokenizer

    tok_dir = settings.workdir / "tokenizer"
    tokenizer(settings)  # trained here once, read by both ranks
    base = "tiny-1m" if settings.quick else "tiny-20m"
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "zero.json"
        env = {**child_env(), "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "DS_ACCELERATOR": "cpu"}
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
               "-m", f"benchmarks.{NAME}", "--worker", "--base", base, "--tokenizer", str(tok_dir),
               "--out", str(out), "--stages", "0", "1", "2", "3"]
        t_launch = time.perf_counter()
        proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
        if proc.returncode != 0 or not out.exists():
            raise RuntimeError(f"ZeRO memory run failed ({proc.returncode}):\n{proc.stderr[-4000:]}")
        stages = json.loads(out.read_text())
    rows = []
    launch_s = time.perf_counter() - t_launch - sum(s["seconds"] for s in stages)
    for s in stages:
        ranks = s["per_rank"]
        core = [sum(r[c] for c in CATEGORIES if c != "buffers") for r in ranks]
        rows.append({
            "stage": s["stage"],
            "seconds": s["seconds"],
            "model_params": s["model_params"],
            "per_rank_bytes": ranks,
            "core_bytes_max_rank": max(core),
            "core_bytes_per_param": max(core) / s["model_params"],
            "buffer_bytes_max_rank": max(r["buffers"] for r in ranks),
        })
    z0 = rows[0]["core_bytes_max_rank"]
    for r in rows:
        r["core_vs_zero0"] = r["core_bytes_max_rank"] / z0
        r["total_vs_zero0"] = (r["core_bytes_max_rank"] + r["buffer_bytes_max_rank"]) / (
            z0 + rows[0]["buffer_bytes_max_rank"])
    z3 = rows[-1]["core_vs_zero0"]
    return {
        "figure": "zero_memory",
        "what": f"{base}, 2 ranks (torchrun, gloo), fp32, torch AdamW: per-rank params + grads + optimizer "
                "state (+ fp32 master copies), ZeRO-3 / ZeRO-0",
        "goal": f"ZeRO-3 <= {GOAL} x ZeRO-0",
        "value": z3,
        "met": z3 <= GOAL,
        "preset": base,
        "launch_and_import_s": launch_s,
        "stages": rows,
    }


def rows(result: dict) -> list[Row]:
    return [Row("zero_memory", "ZeRO-3 / ZeRO-0 per-rank params + grads + optimizer state (2 ranks)", result["value"],
                result["goal"], result["met"])]


def details(f: dict) -> str:
    st = "; ".join(f"ZeRO-{s['stage']} {s['core_bytes_max_rank'] / 2**20:.1f} MiB ({s['core_bytes_per_param']:.2f} "
                   f"B/param, {s['core_vs_zero0']:.3f}x), buffers {s['buffer_bytes_max_rank'] / 2**20:.1f} MiB"
                   for s in f["stages"])
    return f"- ZeRO memory per rank, {f['preset']}: {st}."


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--worker", action="store_true")
    parser.add_argument("--base", default="tiny-20m")
    parser.add_argument("--tokenizer", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--stages", nargs="+", type=int, default=[0, 1, 2, 3])
    worker(parser.parse_args())
