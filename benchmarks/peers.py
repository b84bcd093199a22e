"""Peer figure: this project's trainer next to the one a user would pick instead, on the real student.

SmolLM2-135M-Instruct, LoRA r16/alpha32 on q_proj,v_proj, fp32, torch AdamW (lr, betas, eps, weight
decay, clipping, warmup and cosine schedule from configs/smollm2_gsm8k.yaml), micro-batch 2 pairs, one
micro-batch per optimizer step, the real GSM8K teacher chains of configs/smollm2_gsm8k.yaml
(``data.max_mags`` of them, cut to ``data.max_len`` 512 as the config does), trained by

* ``sft``: this project, ``model.margin_weight=0 model.node_weight=0`` (NTP on correct chains: no
  negative row runs), through ``magdi_dist.train.loop.train`` with DeepSpeed as the config says
  (ZeRO-3);
* ``peer``: TRL's ``SFTTrainer`` (+ PEFT ``LoraConfig``) on the same positive chains: the same token ids
  and labels (prompt masked), in the project sampler's order, the same micro-batches, padded to the
  longest row like the project's collate, packing off, no gradient checkpointing (the config has none;
  TRL's default is on);
* ``magdi``: this project's default objective (NTP + margin + node loss, frozen features) on the same
  batches, i.e. the same positive chains plus the negative rows of the pairs that have one (at one rank
  ``model.lm_passes: auto`` runs them as two passes; benchmarks/experiments/lm_passes.py measures one
  against two);
* ``sft_aa``: a second, identical ``sft``: the A/A control (its ratio to ``sft`` is the noise floor).

Cores: each variant is one process with ``--threads`` intra-op threads (default 1) and world size 1,
and only one of them trains at a time (the parent steps them in ABC..CBA order, one optimizer step
each per repetition, benchmarks/peer_worker.py), so each gets the same core(s). Node features are zero
(``data.features: zero``): the step costs the same whatever their values, and it saves the SmolLM2
forward over every node text (timed separately: benchmarks/preprocessing.py, real student).

Figures: tokens/s of positive-chain tokens, step time, peak RSS per process, and the ratios (a)/(b) =
``sft`` tokens/s over ``peer`` tokens/s and (c)/(a) = ``magdi`` time per positive token over ``sft``'s,
both total time over total time across the timed steps (every variant trains the same positive tokens;
a median of per-step ratios would let the many short steps hide what the few long ones cost), CPU
time (wall clock next to it), with the per-step paired ratios' median and range as the noise. Goal for
(c)/(a): 1 + the negative rows' real tokens / the positive rows' (same steps) + 0.05. Also
checked, not timed: each loop trained exactly the tokens it should (the loops' own counts) and the
first step's loss is the same for ``sft`` and ``peer`` (same weights, same tokens and labels).
"""

from __future__ import annotations

import json
import os
import queue
import subprocess
import sys
import threading
import time
from itertools import islice
from pathlib import Path

from benchmarks.common import ROOT, Settings, child_env, commit_id
from benchmarks.figure import BENCH_EXTRA, Row
from benchmarks.peer_report import VARIANTS, checks, flop_constants, markdown, summarise

NAME = "peers"
NEEDS = (BENCH_EXTRA,)  # TRL's SFTTrainer, and the datasets it trains from
CONFIG = ROOT / "configs" / "smollm2_gsm8k.yaml"
STUDENT = "smollm2-135m-instruct"
PROJECT = {"sft": ["model.margin_weight=0", "model.node_weight=0"],
           "sft_aa": ["model.margin_weight=0", "model.node_weight=0"], "magdi": []}
SFT_GOAL = 1.0
MAGDI_SLACK = 0.05


def _version(name: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(name)
    except PackageNotFoundError:
        return "absent"


def _tiny_student(workdir: Path, tok_dir: str) -> str:
    """Quick mode: a tiny Llama (tiny-1m) with the student's tokenizer, saved as an HF directory both
    trainers load, so the smoke test runs every code path in seconds (its numbers mean nothing)."""
    from transformers import AutoTokenizer

    from magdi_dist.model import load_lm

    out = workdir / "tiny-student"
    if not (out / "config.json").is_file():
        tok = AutoTokenizer.from_pretrained(tok_dir)
        load_lm("tiny-1m", tokenizer=tok, seed=0).save_pretrained(out)
        tok.save_pretrained(out)
    return str(out)


def plan(settings: Settings, workdir: Path) -> dict:
    """Shards, the batches every variant trains on (the project sampler's), and the worker spec."""
    import torch

    from magdi_dist.config import load_config
    from magdi_dist.data.shards import load_train_data
    from magdi_dist.model.sources import checkpoint_dir
    from magdi_dist.preprocess.prepare import prepare_data
    from magdi_dist.train.metrics import measure_peak_flops
    from magdi_dist.train.sampler import LengthGroupedSampler

    student = checkpoint_dir(STUDENT)
    model_dir = _tiny_student(workdir, student) if settings.quick else student
    # Two warm-up steps: the first one of a ZeRO-3 engine also records its parameter-fetch trace.
    warmup, reps = (1, 1) if settings.quick else (2, settings.peer_reps)
    steps = warmup + reps
    overrides = [
        f"model.base={model_dir}", f"data.max_mags={8 if settings.quick else 24}", "data.features=zero",
        f"preprocess.out_dir={workdir / 'shards'}", "train.grad_accum=1", f"train.max_steps={steps + 1}",
        "train.log_every=1", "train.save_every=0", "train.eval_every=0", "train.export=false",
        "train.progress=false",
    ]
    # One matmul peak for every variant (train.metrics.measure_peak_flops, wall clock, these threads),
    # measured here while no trainer runs, and handed to the project's loop as train.peak_flops: the
    # MFU in its metrics.jsonl and the benchmark's then share the clock and the peak.
    peak = measure_peak_flops(torch.device("cpu"), torch.float32)
    overrides.append(f"train.peak_flops={peak}")
    cfg = load_config(CONFIG, overrides)
    manifest = prepare_data(cfg, log=lambda _m: None).manifest
    data = load_train_data(manifest)
    t, m = cfg.train, cfg.model
    sampler = LengthGroupedSampler(data.lengths(), t.micro_batch_size, 1, 0, seed=t.seed, group=t.length_grouping)
    batches = [idx for _, idx in islice(sampler.iter_from(0), steps)]
    tok_stats = [batch_tokens([data.train[i] for i in idx]) for idx in batches]
    pad_id = _pad_id(data.tokenizer)
    return {
        "config": str(CONFIG), "overrides": overrides, "variants": PROJECT, "manifest": str(manifest),
        "workdir": str(workdir), "threads": settings.threads, "steps": steps + 1, "warmup": warmup,
        "reps": reps, "peak_flops": peak, "batches": batches, "gcn": [m.gcn_hidden, m.gcn_layers],
        "batch_tokens": tok_stats,
        "profile_dir": os.environ.get("MAGDI_PEER_PROFILE"),  # torch.profiler tables per step (not for timing)
        "student": STUDENT, "model_dir": model_dir,
        "peer": {"model_dir": model_dir, "pad_id": pad_id, "micro_batch_size": t.micro_batch_size,
                 "grad_accum": 1, "lr": t.lr, "warmup_steps": t.warmup_steps, "weight_decay": t.weight_decay,
                 "betas": list(t.betas), "eps": t.eps, "grad_clip": t.grad_clip, "seed": t.seed,
                 "lora": m.lora.model_dump()},
    }


def _pad_id(tok_dir: str) -> int:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tok_dir)
    return tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id  # as train.loop does


def batch_tokens(rows: list[dict]) -> dict:
    """Real tokens of one micro-batch: positive rows, the negative rows MAGDi runs, label targets,
    graph nodes, the attention terms (sum of squared row lengths), and the rows and longest row of each
    side (the padded positions the LM runs)."""
    pos = [len(r["pos_input_ids"]) for r in rows]
    neg = [len(r["neg_input_ids"]) for r in rows if r["has_negative"]]
    return {"pos": sum(pos), "neg": sum(neg), "pos_sq": sum(n * n for n in pos), "neg_sq": sum(n * n for n in neg),
            "pos_rows": len(pos), "neg_rows": len(neg), "pos_max": max(pos), "neg_max": max(neg, default=0),
            "targets": sum(sum(1 for x in r["pos_labels"][1:] if x != -100)
                                                              for r in rows),
            "nodes": sum(len(r["node_labels"]) for r in rows)}


class Worker:
    """One variant's process; ``step()`` trains one optimizer step and returns its report."""

    def __init__(self, variant: str, spec_file: Path, log_dir: Path):
        self.variant = variant
        self.log = (log_dir / f"{variant}.log").open("w")
        self.proc = subprocess.Popen([sys.executable, "-m", "benchmarks.peer_worker", str(spec_file), variant],
                                     cwd=ROOT, env=child_env(), stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=self.log, text=True, bufsize=1)
        self.msgs: queue.Queue = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        from benchmarks.peer_worker import MARK

        for line in self.proc.stdout:
            if line.startswith(MARK):
                self.msgs.put(json.loads(line[len(MARK):]))
            else:
                self.log.write(line)
        self.msgs.put(None)

    def wait(self, timeout: float = 900.0) -> dict:
        msg = self.msgs.get(timeout=timeout)
        if msg is None or msg.get("finished"):
            self.proc.wait(timeout=60)
            self.log.flush()
            tail = Path(self.log.name).read_text()[-3000:]
            raise RuntimeError(f"peer worker {self.variant} ended early (rc {self.proc.returncode}):\n{tail}")
        return msg

    def step(self) -> dict:
        self.proc.stdin.write("go\n")
        self.proc.stdin.flush()
        return self.wait()

    def stop(self) -> None:
        if self.proc.poll() is None:
            try:
                self.proc.stdin.write("stop\n")
                self.proc.stdin.flush()
            except (BrokenPipeError, OSError):
                pass
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        self.log.close()


def measure(spec: dict, workdir: Path, one_by_one: bool = True) -> dict:
    """Start every variant and run its untimed warm-up steps (``one_by_one``: each after the previous
    one has paused, so their start-up peaks of memory never add up), then one step per variant per
    repetition in ABC..CBA order. Returns {variant: [report per timed step]}, the warm-up reports and
    the memory every paused process holds while another trains."""
    spec_file = workdir / "spec.json"
    spec_file.write_text(json.dumps(spec))
    workers: dict[str, Worker] = {}
    warm: dict[str, list[dict]] = {}
    try:
        for name in VARIANTS:
            workers[name] = Worker(name, spec_file, workdir)
            if one_by_one:
                warm[name] = [workers[name].wait()] + [workers[name].step() for _ in range(spec["warmup"] - 1)]
        for name, w in workers.items():
            if name not in warm:
                warm[name] = [w.wait()] + [w.step() for _ in range(spec["warmup"] - 1)]
        timed: dict[str, list[dict]] = {name: [] for name in VARIANTS}
        for rep in range(spec["reps"]):
            for name in VARIANTS if rep % 2 == 0 else tuple(reversed(VARIANTS)):
                timed[name].append(workers[name].step())
    finally:
        for w in workers.values():
            w.stop()
    return {"timed": timed, "warmup": warm}


# Resident memory of the four SmolLM2 processes together (paused ones keep what their allocator holds):
# measured 15.6 GiB between steps, 17 GiB at the peak of a step (sft 3.9, sft_aa 3.9, TRL 3.1, magdi 4.7
# resident; magdi peaks at 5.7). The figure refuses to start below this, rather than push the machine
# into the OOM killer with other people's jobs on it.
MIN_AVAILABLE_GIB = float(os.environ.get("MAGDI_PEER_MIN_MEM_GB", 18))


def _available_gib() -> float:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) / 2**20
    except OSError:
        pass
    return float("inf")


def run(settings: Settings) -> dict:
    from magdi_dist.model.sources import ModelSourceError

    if not settings.quick and _available_gib() < MIN_AVAILABLE_GIB:
        raise RuntimeError(f"peer figure needs about {MIN_AVAILABLE_GIB:.0f} GiB of available memory (four SmolLM2 "
                           f"trainers), {_available_gib():.1f} GiB available now; MAGDI_PEER_MIN_MEM_GB overrides")

    workdir = settings.workdir / ("peers-quick" if settings.quick else "peers")
    workdir.mkdir(parents=True, exist_ok=True)
    try:
        spec = plan(settings, workdir)
    except (ModelSourceError, ImportError) as err:  # the student's package is not installed
        return {"figure": "peers", "absent": True, "error": f"{STUDENT} unavailable: {err}"}
    consts = flop_constants(spec["model_dir"], spec["peer"]["lora"], *spec["gcn"])
    runs = measure(spec, workdir, one_by_one=not settings.quick)
    res = summarise(spec, runs, consts)
    ok = checks(spec, runs)
    cpu = res["ratio"]["cpu_s"]
    sft_vs_peer, magdi_vs_sft = cpu["sft_vs_peer"]["value"], cpu["magdi_vs_sft"]["value"]
    magdi_goal = 1.0 + res["negative_token_share"] + MAGDI_SLACK
    v = res["variants"]
    return {
        "figure": "peers",
        "what": f"{STUDENT} LoRA r16 q,v fp32, micro-batch 2, this project (DeepSpeed ZeRO-3, 1 rank) vs TRL "
                f"SFTTrainer, {settings.threads} thread(s) per process, one process training at a time",
        "peer": f"trl {_version('trl')} (SFTTrainer, peft {_version('peft')}, transformers {_version('transformers')})",
        "student": "tiny-1m (quick mode)" if settings.quick else STUDENT,
        "threads": settings.threads, "reps": spec["reps"], "warmup_steps": spec["warmup"],
        "micro_batch_pairs": spec["peer"]["micro_batch_size"],
        "tokens_per_s": {k: v[k]["tokens_per_s"] for k in ("sft", "peer", "magdi", "sft_aa")},
        "tokens_per_cpu_s": {k: v[k]["tokens_per_cpu_s"] for k in ("sft", "peer", "magdi", "sft_aa")},
        "step_s": {k: v[k]["step_s_median"] for k in v}, "peak_rss_mib": {k: v[k]["peak_rss_mib"] for k in v},
        "ratio_sft_vs_peer": sft_vs_peer, "ratio_magdi_vs_sft": magdi_vs_sft, "ratio_aa": cpu["aa"]["value"],
        "magdi_goal": magdi_goal, "negative_token_share": res["negative_token_share"],
        "goals": [
            {"id": "peers_sft_vs_peer", "label": "Peers, SmolLM2-135M LoRA: SFT positive-chain tokens/s, this project "
             "/ TRL SFTTrainer (CPU time, total over total)",
             "value": sft_vs_peer, "goal": f">= {SFT_GOAL}", "met": sft_vs_peer >= SFT_GOAL},
            {"id": "peers_magdi_vs_sft", "label": "Peers: MAGDi / SFT time per positive-chain token (CPU time, total "
             "over total)",
             "value": magdi_vs_sft, "met": magdi_vs_sft <= magdi_goal,
             "goal": f"<= {magdi_goal:.3f} (1 + negative tokens {res['negative_token_share']:.3f} + {MAGDI_SLACK})"},
        ],
        "value": sft_vs_peer, "goal": f">= {SFT_GOAL}", "met": sft_vs_peer >= SFT_GOAL and magdi_vs_sft <= magdi_goal,
        "checks": ok, "details": res, "batch_tokens": spec["batch_tokens"],
        "flop_model_magdi_vs_sft": res.get("flop_model_magdi_vs_sft"),
        "variants_table": {k: {"tokens_per_s": v[k]["tokens_per_s"], "tokens_per_cpu_s": v[k]["tokens_per_cpu_s"],
                               "step_s": v[k]["step_s_median"], "step_s_range": v[k]["step_s_range"],
                               "step_cpu_s": v[k]["step_cpu_s_median"], "peak_rss_mib": v[k]["peak_rss_mib"],
                               "rss_paused_mib": v[k]["rss_paused_mib"],
                               "mfu_bench": v[k]["mfu_bench"], "mfu_logged": v[k]["mfu_logged"],
                               "flops_logged_vs_bench": v[k].get("flops_logged_vs_bench")} for k in VARIANTS},
        "ratios": res["ratio"], "peak_gflops": spec["peak_flops"] / 1e9, "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "commit": commit_id(),
        "loadavg": list(os.getloadavg()),
    }


def rows(result: dict) -> list[Row]:
    """The goals, each label with what the total-over-total ratio alone hides: the per-step paired median
    and, for sft/TRL, whether that median lies outside the A/A control's per-step range (when it does not,
    the difference is not resolved); for MAGDi/SFT, what the figure leaves out."""
    cpu = result.get("ratios", {}).get("cpu_s", {})
    notes = {}
    if {"sft_vs_peer", "aa"} <= cpu.keys():
        r, aa = cpu["sft_vs_peer"], cpu["aa"]
        inside = aa["min"] <= r["paired_median"] <= aa["max"]
        notes["peers_sft_vs_peer"] = (
            f"; per step: paired median {r['paired_median']:.3f}, A/A control's per-step range "
            f"{aa['min']:.2f}-{aa['max']:.2f}: {'inside it, not resolved' if inside else 'outside it'}")
    if "magdi_vs_sft" in cpu:
        notes["peers_magdi_vs_sft"] = (
            f"; per step: paired median {cpu['magdi_vs_sft']['paired_median']:.3f}; one rank, where `lm_passes: "
            "auto` takes two LM passes (several ZeRO-3 ranks take one); without the frozen-feature pass over "
            "the node texts")
    out = []
    for g in result["goals"]:
        label = g["label"]
        if g["id"] in notes and label.endswith(")"):
            label = label[:-1] + notes[g["id"]] + ")"
        out.append(Row(g["id"], label, g["value"], g["goal"], g["met"], g.get("kind", "x")))
    return out


def details(result: dict) -> str:
    return "\n".join(markdown(result))
