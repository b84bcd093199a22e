"""The training function: ``train(cfg, data)`` runs on every rank on the prepared shards' rows and
relies only on torch.distributed env vars, so plain python, torchrun, the deepspeed launcher and Ray
Train all call the same code.

One optimizer step = ``grad_accum`` micro-steps through the DeepSpeed engine (it scales the loss by
1/grad_accum, all-reduces at the boundary, clips and steps the optimizer and our LR schedule).

The step never waits for the device on our account: losses, counts, FLOPs and the grad norm stay on
the device until a logging step (``train.log_every``; also before an eval or a checkpoint, which wait
anyway) reads the whole interval at once (train/metrics.py ``StepLog``), and which rows the LM runs
is decided on the host before the batch moves (model/student.py ``lm_rows``). What still waits per
step is inside the libraries; tests/test_train_syncs.py counts it.
"""

from __future__ import annotations

import logging
import math
import random
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from magdi_dist.config import MAGDiConfig
from magdi_dist.data.shards import TrainData
from magdi_dist.run_spec import RunSpec
from magdi_dist.train import checkpoint
from magdi_dist.train.dist import DistInfo, barrier, init_distributed
from magdi_dist.train.metrics import (
    MetricsCallback,
    MetricsWriter,
    StepAccumulator,
    StepLog,
    measure_peak_flops,
    positive_tokens,
)
from magdi_dist.train.sampler import LengthGroupedSampler

log = logging.getLogger("magdi_dist.train")

# Called on every rank after each checkpoint is complete: (checkpoint dir, trainer state). Ray Train's
# launcher reports checkpoints through it; any launcher may add its own (e.g. a copy to object storage).
CheckpointCallback = Callable[[Path, dict], None]


@dataclass
class TrainResult:
    output_dir: Path
    step: int
    total_steps: int
    metrics: list[dict] = field(default_factory=list)  # rank 0 only: what metrics.jsonl got this run
    checkpoint: Path | None = None
    export_dir: Path | None = None


def seed_all(seed: int, rank: int) -> None:
    """Per-rank streams (dropout differs across ranks, as data does), reproducible per (seed, rank)."""
    s = seed * 100_003 + rank
    random.seed(s)
    np.random.seed(s % 2**32)
    torch.manual_seed(s)


def _setup_logging(info: DistInfo) -> None:
    logging.basicConfig(level=logging.INFO if info.is_main else logging.WARNING,
                        format=f"[rank{info.rank}] %(asctime)s %(name)s: %(message)s", stream=sys.stderr)
    from deepspeed.utils import logger as ds_logger

    ds_logger.setLevel(logging.WARNING)  # DeepSpeed's per-step INFO lines drown ours


class _Flops:
    """Training FLOPs of a micro-step, from counts taken before ZeRO-3 partitions the parameters: the
    decoder per token of every row that ran, the output head per positive token, the GCN per node.
    A float64 device scalar (the counts are device tensors; reading them here would wait for the step)."""

    def __init__(self, student):
        from magdi_dist.model.flops import decoder_flops_per_token, flops_per_node, head_flops_per_token

        self.base = decoder_flops_per_token(student, 0)
        self.per_pos = decoder_flops_per_token(student, 1) - self.base  # attention grows with sequence length
        self.head = head_flops_per_token(student)
        self.per_node = flops_per_node(student)

    def __call__(self, out: dict, seq_len: int) -> torch.Tensor:
        def count(key: str) -> torch.Tensor:
            return out[key].detach().to(torch.float64)

        return ((self.base + self.per_pos * seq_len) * count("num_tokens") + self.head * count("num_head_tokens")
                + self.per_node * count("num_nodes"))


def _collate(cfg: MAGDiConfig, rows, pad_id: int, epoch: int, device):
    from magdi_dist.data import batch_to, collate
    from magdi_dist.model.student import LM_ROWS, lm_rows

    live = cfg.model.graph_features == "live"
    batch = collate(rows, pad_id, live_extra_nodes=cfg.model.live_extra_nodes if live else 0,
                    live_node_max_tokens=cfg.model.live_node_max_tokens, seed=cfg.train.seed + epoch)
    batch[LM_ROWS] = lm_rows(cfg.model, batch)  # decided on the host copy: shapes, without a device sync
    return batch_to(batch, device)


def evaluate(engine, cfg: MAGDiConfig, rows, pad_id: int, info: DistInfo) -> dict | None:
    """Loss terms on the held-out rows (rank-disjoint, every rank the same number of batches, as
    ZeRO-3 forwards are collective). ``eval_ntp_loss`` is the mean per-token NTP loss over every target
    token of the held-out correct chains, the number a scaling study compares across sizes and
    objectives (same tokenizer, same chains); the other terms are means over batches. The RNG is
    forked so evaluation never shifts training randomness."""
    t = cfg.train
    lengths = [max(len(r["pos_input_ids"]), len(r["neg_input_ids"]) or 1) for r in rows]
    if len(rows) < t.micro_batch_size * info.world_size:
        log.warning("eval skipped: %d held-out rows cannot fill one batch of %d x %d ranks",
                    len(rows), t.micro_batch_size, info.world_size)
        return None
    sampler = LengthGroupedSampler(lengths, t.micro_batch_size, info.world_size, info.rank, shuffle=False)
    batches = sampler.epoch_batches(0)[: t.eval_max_batches]
    acc = StepAccumulator(info.device)
    # NTP loss x target tokens, target tokens: summed on the device, read once at the end.
    token_sums = torch.zeros(2, dtype=torch.float64, device=info.device)
    engine.eval()
    with torch.no_grad(), torch.random.fork_rng(devices=[]):
        for idx in batches:
            out = engine(_collate(cfg, [rows[i] for i in idx], pad_id, 0, info.device))
            acc.add(out, 0.0)
            n = out["num_target_tokens"].to(torch.float64)
            token_sums += torch.stack([out["ntp_loss"].to(torch.float64) * n, n])
    engine.train()
    red = acc.reduce()
    if torch.distributed.is_initialized() and info.world_size > 1:
        torch.distributed.all_reduce(token_sums)
    ntp_sum, targets = token_sums.cpu().tolist()
    return {"eval_loss": red["loss"], "eval_ntp_loss": ntp_sum / max(targets, 1.0),
            "eval_margin_loss": red["margin_loss"], "eval_node_loss": red["node_loss"],
            "eval_target_tokens": targets}


class TrainingDiverged(RuntimeError):
    """A loss term or the gradient norm became NaN or infinite."""


FINITE_TERMS = ("loss", "ntp_loss", "margin_loss", "node_loss", "grad_norm")


def _not_finite(rec: dict) -> list[str]:
    return [k for k in FINITE_TERMS if isinstance(rec.get(k), float) and not math.isfinite(rec[k])]


def _finite(rec: dict) -> bool:
    return not _not_finite(rec)


def _stop_if_not_finite(records: list[dict]) -> None:
    """Every rank reads the same all-reduced values, so every rank stops at the same record."""
    for rec in records:
        bad = _not_finite(rec)
        if bad:
            raise TrainingDiverged(f"step {rec['step']}: {', '.join(f'{k} = {rec[k]}' for k in bad)}; stopped "
                                   "before it could be checkpointed or exported (the last checkpoint is intact: "
                                   "lower train.lr or check the data, then resume)")


def _check_spec(spec: RunSpec, data: TrainData, info: DistInfo) -> None:
    """The launcher started the ranks the spec was resolved for, on the shards it was resolved with
    (shards rewritten since, e.g. by a preparation with other inputs, would train on other rows)."""
    if spec.data is None:
        raise ValueError("the run spec has no prepared data (launch.resolve.with_data)")
    if (info.world_size, info.accelerator) != (spec.world_size, spec.accelerator):
        raise ValueError(f"this rank runs in a group of {info.world_size} on {info.accelerator}, the run was "
                         f"resolved for {spec.world_size} on {spec.accelerator}")
    if data.fingerprint != spec.data.fingerprint:
        raise ValueError(f"the shards at {spec.data.manifest} changed after the run was resolved "
                         f"(fingerprint {data.fingerprint[:12]}, resolved {spec.data.fingerprint[:12]})")


def _grad_norm_stage0(engine) -> torch.Tensor | float:
    """DeepSpeed reports no grad norm at stage 0 in fp32 (it clips with torch's clip_grad_norm_ and
    drops the value), so take it from the all-reduced gradients before the step: the same number, left
    on the device until the step is logged."""
    grads = [p.grad for p in engine.module.parameters() if p.grad is not None]
    return torch.nn.utils.get_total_norm(grads) if grads else 0.0


def train(spec: RunSpec, data: TrainData, *, metrics_callback: MetricsCallback | None = None,
          on_checkpoint: CheckpointCallback | None = None) -> TrainResult:
    """Train on this rank, as the resolved run ``spec`` says (launch/resolve.py), on ``data``
    (``data.shards.load_train_data`` of ``spec.data.manifest``). The DeepSpeed config, the optimizer,
    ``lm_passes`` and the resume decision are the spec's: nothing here works them out again. A
    complete checkpoint in the output dir is resumed from (a ``--no-resume`` driver deleted the old
    ones; a restarted group finds its own)."""
    from tqdm.auto import tqdm
    from transformers import AutoTokenizer

    from magdi_dist.model import MAGDiStudent
    from magdi_dist.train.engine import initialize
    from magdi_dist.train.export import export

    info = init_distributed()
    _setup_logging(info)
    _check_spec(spec, data, info)
    cfg, cfg_hash = spec.config, spec.config_hash
    t = cfg.train
    out = Path(t.output_dir)
    latest = checkpoint.latest_checkpoint(out)
    resume_state = checkpoint.read_state(latest) if latest is not None else None

    t0 = time.perf_counter()
    tokenizer = AutoTokenizer.from_pretrained(data.tokenizer)
    # Under ZeRO-3 the student is built already partitioned, with the run's DeepSpeed config.
    student = MAGDiStudent(cfg.model, tokenizer=tokenizer, feature_dim=data.feature_dim, ds_config=spec.ds_config)
    log.info("student ready in %.1fs (%d training rows, %d held-out rows, data %s, LM passes: %s)",
             time.perf_counter() - t0, len(data.train), len(data.eval), data.fingerprint[:12], cfg.model.lm_passes)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    sampler = LengthGroupedSampler(data.lengths(), t.micro_batch_size, info.world_size, info.rank,
                                   seed=t.seed, group=t.length_grouping)
    # max_steps 0: no step; the untrained student is evaluated and exported (a study's baseline cell).
    total_steps = t.max_steps if t.max_steps is not None else \
        max(1, math.ceil(t.epochs * sampler.batches_per_epoch / t.grad_accum))
    flops = _Flops(student)
    peak = t.peak_flops or measure_peak_flops(info.device)

    t0 = time.perf_counter()
    engine, _ = initialize(student, t, total_steps, spec.ds_config, spec.optimizer)
    log.info("DeepSpeed engine ready in %.1fs (ZeRO stage %d, %d steps)", time.perf_counter() - t0,
             engine.zero_optimization_stage(), total_steps)
    seed_all(t.seed, info.rank)
    step, position = 0, 0
    if latest is not None:
        state = checkpoint.restore(engine, latest, info.rank)  # also restores this rank's RNG
        step, position = state["step"], state["data_position"]
        log.info("resumed from %s (step %d, data position %d)", latest, step, position)
    writer = MetricsWriter(out / "metrics.jsonl", info.is_main, step if resume_state else None)
    result = TrainResult(out, step, total_steps)
    last_saved = step if resume_state is not None else None
    stage0_fp32 = engine.zero_optimization_stage() == 0 and not engine.bfloat16_enabled()
    stop_at = min(total_steps, t.stop_after or total_steps)
    per_epoch = sampler.batches_per_epoch
    bar = tqdm(total=total_steps, initial=step, disable=not (info.is_main and t.progress), desc="train",
               dynamic_ncols=True)

    def save() -> None:
        nonlocal last_saved
        last_saved = step
        state = {"step": step, "epoch": position / per_epoch, "data_position": position,
                 "world_size": info.world_size, "config_hash": cfg_hash, "total_steps": total_steps}
        t_save = time.perf_counter()
        result.checkpoint = checkpoint.save(engine, out, step, state, info.rank, t.keep_last_k)
        log.info("checkpoint %s saved in %.1fs", result.checkpoint.name, time.perf_counter() - t_save)
        if on_checkpoint is not None:
            on_checkpoint(result.checkpoint, state)

    def log_pending() -> None:
        """Read the steps since the last read (a collective: every rank, at the same steps). Every
        read comes before a checkpoint, an eval and the export, so a non-finite step stops the run
        before it is saved or exported (within ``log_every`` steps of it: checking every step would
        wait for the device every step)."""
        records = steps.read()
        if info.is_main:
            for rec in records:
                result.metrics.append(rec)
                if rec["step"] % t.log_every == 0 or rec["step"] == stop_at or not _finite(rec):
                    writer.write(rec)  # the step that diverged is on record
                if metrics_callback:
                    metrics_callback(rec["step"], rec)
            if records:
                bar.set_postfix(loss=f"{records[-1]['loss']:.4f}", lr=f"{records[-1]['lr']:.2e}")
        _stop_if_not_finite(records)

    def run_eval() -> None:
        ev = evaluate(engine, cfg, data.eval, pad_id, info) if data.eval else None
        if ev is not None:
            ev["step"] = step
            writer.write(ev)
            if metrics_callback and info.is_main:
                metrics_callback(step, ev)

    stream = sampler.iter_from(position)
    acc = StepAccumulator(info.device)
    steps = StepLog(info.device, info.world_size, peak)
    engine.train()
    t_loop = time.perf_counter()
    while step < stop_at:
        acc.reset()
        grad_norm = None
        lr = engine.get_lr()[0]  # the rate this step uses (the scheduler advances inside engine.step)
        for _ in range(t.grad_accum):
            pos, idx = next(stream)
            batch = _collate(cfg, [data.train[i] for i in idx], pad_id, pos // per_epoch, info.device)
            outputs = engine(batch)
            engine.backward(outputs["loss"])  # DeepSpeed scales by 1/grad_accum, reduces at the boundary
            if stage0_fp32 and engine.is_gradient_accumulation_boundary():
                grad_norm = _grad_norm_stage0(engine)
            engine.step()  # optimizer + LR schedule only at the boundary
            acc.add(outputs, flops(outputs, batch["input_ids"].shape[1]), positive_tokens(batch))
            position = pos + 1
        step += 1
        # A tensor (or float, or None) from DeepSpeed: read with the step's sums, not now.
        steps.push(step, acc, lr, position / per_epoch,
                   grad_norm if grad_norm is not None else engine.get_global_grad_norm())
        eval_now = bool(t.eval_every) and step % t.eval_every == 0
        save_now = bool(t.save_every) and step % t.save_every == 0 and step < stop_at
        # Eval and checkpoints wait for the device anyway; reading first keeps metrics.jsonl in step order.
        if step % t.log_every == 0 or step == stop_at or eval_now or save_now:
            log_pending()
        bar.update(1)
        if eval_now:
            run_eval()
        if save_now:
            save()
    bar.close()
    result.step = step
    log.info("trained to step %d in %.1fs", step, time.perf_counter() - t_loop)
    finished_before = resume_state is not None and resume_state["step"] >= total_steps
    evaluated = step > 0 and t.eval_every and step % t.eval_every == 0  # in the loop, just now
    if step == total_steps and not finished_before and not evaluated:
        run_eval()  # a stop_after / preempted run does not evaluate: its curve must match the full run's
    if last_saved != step:
        save()
    else:
        result.checkpoint = checkpoint.latest_checkpoint(out)
    if step == total_steps and t.export and finished_before and (out / "export").is_dir():
        result.export_dir = out / "export"  # a re-run of a finished run: its export is whole (renamed last)
    elif step == total_steps and t.export:
        t_export = time.perf_counter()
        # contamination (issue 24): the export names the questions it was trained on
        result.export_dir = export(engine, cfg, tokenizer, out / "export", info.rank,
                                   training_questions=data.training_questions)
        log.info("exported to %s in %.1fs", result.export_dir, time.perf_counter() - t_export)
    barrier()
    return result
