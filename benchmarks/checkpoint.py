"""Figure 6, checkpoints: save and restore time against model size (tiny-1m, tiny-5m, tiny-20m).

Uses the trainer's own ``train.checkpoint.save`` / ``restore`` (DeepSpeed state + trainer state + RNG
+ COMPLETE marker) on a ZeRO-2 engine (1 process, fp32, torch AdamW) that has taken one step, so the
optimizer state is in the checkpoint. Sizes are interleaved within each repetition; bytes are what
the checkpoint directory holds on disk. Ratios are against tiny-1m: if time grew like bytes,
time ratio = bytes ratio and the throughput (bytes/s) ratio = 1; a throughput ratio > 1 means a
fixed per-checkpoint cost dominates the small models.
"""

from __future__ import annotations

import shutil
import tempfile
import time
from pathlib import Path

from benchmarks.common import Settings, build_engine, ensure_dist, make_config, median, synthetic_rows, tokenizer
from benchmarks.figure import Row

NAME = "checkpoint"


def _dir_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def _fs_type(path: Path) -> str:
    try:
        best, fstype = "", "unknown"
        for line in Path("/proc/mounts").read_text().splitlines():
            _, mnt, typ, *_ = line.split()
            if str(path.resolve()).startswith(mnt) and len(mnt) > len(best):
                best, fstype = mnt, typ
        return fstype
    except OSError:
        return "unknown"


def run(settings: Settings) -> dict:
    from magdi_dist.data import collate
    from magdi_dist.model import MAGDiStudent
    from magdi_dist.train import checkpoint

    ensure_dist(settings)
    tok = tokenizer(settings)
    presets = ["tiny-1m"] if settings.quick else ["tiny-1m", "tiny-5m", "tiny-20m"]
    reps = 1 if settings.quick else 3
    root = Path(tempfile.mkdtemp(prefix="ckpt-", dir=settings.workdir))
    engines = {}
    try:
        for base in presets:
            cfg = make_config(base, micro=2)
            student = MAGDiStudent(cfg.model, tokenizer=tok)
            n_params = sum(p.numel() for p in student.parameters())
            engine = build_engine(student, cfg)
            batch = collate(synthetic_rows(tok, student.hidden_size, n_mags=2)[:2], tok.pad_token_id)
            out = engine(batch)
            engine.backward(out["loss"])
            engine.step()
            engines[base] = (engine, n_params)
        times = {b: {"save": [], "restore": []} for b in presets}
        sizes = {}
        for rep in range(reps):
            for base in presets if rep % 2 == 0 else list(reversed(presets)):
                engine, _ = engines[base]
                out_dir = root / base
                shutil.rmtree(out_dir, ignore_errors=True)
                state = {"step": 1, "epoch": 0.0, "data_position": 1, "world_size": 1,
                         "config_hash": "bench", "total_steps": 10}
                t0 = time.perf_counter()
                ckpt = checkpoint.save(engine, out_dir, 1, state, 0, keep_last_k=1)
                t1 = time.perf_counter()
                checkpoint.restore(engine, ckpt, 0)
                t2 = time.perf_counter()
                times[base]["save"].append(t1 - t0)
                times[base]["restore"].append(t2 - t1)
                sizes[base] = _dir_bytes(ckpt)
        rows = []
        for base in presets:
            save_s, restore_s = median(times[base]["save"]), median(times[base]["restore"])
            rows.append({"preset": base, "params": engines[base][1], "bytes": sizes[base],
                         "save_s": save_s, "restore_s": restore_s,
                         "save_MBps": sizes[base] / save_s / 1e6, "restore_MBps": sizes[base] / restore_s / 1e6})
        ref = rows[0]
        for r in rows:
            r["bytes_ratio"] = r["bytes"] / ref["bytes"]
            r["save_time_ratio"] = r["save_s"] / ref["save_s"]
            r["restore_time_ratio"] = r["restore_s"] / ref["restore_s"]
            r["save_throughput_ratio"] = r["save_MBps"] / ref["save_MBps"]
            r["restore_throughput_ratio"] = r["restore_MBps"] / ref["restore_MBps"]
    finally:
        shutil.rmtree(root, ignore_errors=True)
    big = rows[-1]
    return {
        "figure": "checkpoint",
        "what": "train.checkpoint save/restore of a ZeRO-2 engine (1 process, fp32, AdamW state) vs model size",
        "goal": "report (time should grow no faster than bytes)",
        "value": big["save_time_ratio"] / big["bytes_ratio"] if len(rows) > 1 else 1.0,
        "met": None,
        "filesystem": _fs_type(settings.workdir),
        "sizes": rows,
    }


def rows(result: dict) -> list[Row]:
    big, small = result["sizes"][-1], result["sizes"][0]["preset"]
    # Restore next to save: the headline must not show only the half that scales well.
    return [Row("checkpoint", f"Checkpoint save time ratio / bytes ratio, {big['preset']} vs {small}", result["value"],
                result["goal"], result["met"]),
            Row("checkpoint_restore", f"Checkpoint restore time ratio / bytes ratio, {big['preset']} vs {small}",
                big["restore_time_ratio"] / big["bytes_ratio"], result["goal"], result["met"])]


def details(f: dict) -> str:
    st = "; ".join(f"{s['preset']} {s['bytes'] / 2**20:.0f} MiB: save {s['save_s']:.2f} s ({s['save_MBps']:.0f} MB/s, "
                   f"x{s['save_throughput_ratio']:.2f}), restore {s['restore_s']:.2f} s ({s['restore_MBps']:.0f} MB/s, "
                   f"x{s['restore_throughput_ratio']:.2f})" for s in f["sizes"])
    return f"- Checkpoint ({f['filesystem']}; x = throughput vs tiny-1m): {st}."
