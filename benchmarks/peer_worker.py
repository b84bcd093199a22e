"""One trainer of the peer benchmark (benchmarks/peers.py), in its own process, trained one optimizer
step per command from the parent:

    python -m benchmarks.peer_worker SPEC.json VARIANT

``VARIANT`` is ``sft`` / ``sft_aa`` / ``magdi`` (this project's ``train()``, exactly as ``magdi-dist
train`` runs it on one rank) or ``peer`` (TRL's ``SFTTrainer.train()``). Neither loop is modified:
each trainer runs its own ``train()`` and is paused *between* optimizer steps by its own per-step hook
(the project's ``metrics_callback``, called every step with ``train.log_every: 1``; TRL's
``TrainerCallback.on_step_end``). At each pause the worker prints one line ``@@peer {json}`` on stdout
(the step's wall and process-CPU seconds since the previous pause, the loop's own metrics, peak RSS)
and blocks on stdin until the parent says ``go`` (one more step) or ``stop`` (exit at once: no
checkpoint, no export). So the parent can interleave the variants step by step, one training at a
time, and each variant's peak RSS is its own process's.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

MARK = "@@peer "


def _vm(key: str) -> int:
    """VmHWM / VmRSS of this process in bytes (Linux), 0 elsewhere."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


class Pauser:
    """Report the step just finished and wait for the parent's next command."""

    def __init__(self, variant: str, profile_dir: str | None = None):
        self.variant, self.profile_dir, self.prof = variant, profile_dir, None
        self.wall, self.cpu = time.perf_counter(), time.process_time()
        self.t_start = self.wall

    def __call__(self, step: int, metrics: dict) -> None:
        wall, cpu = time.perf_counter(), time.process_time()
        if self.prof is not None:  # profiling run (benchmarks.peers --profile): not a timing run
            self.prof.__exit__(None, None, None)
            table = self.prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=30)
            Path(self.profile_dir, f"{self.variant}-step{step}.txt").write_text(table)
            self.prof = None
        msg = {"variant": self.variant, "step": step, "wall_s": wall - self.wall, "cpu_s": cpu - self.cpu,
               "since_start_s": wall - self.t_start, "peak_rss": _vm("VmHWM"), "rss": _vm("VmRSS"),
               "metrics": {k: v for k, v in metrics.items() if isinstance(v, int | float | None)}}
        sys.stdout.write(MARK + json.dumps(msg) + "\n")
        sys.stdout.flush()
        cmd = sys.stdin.readline().strip()
        if cmd != "go":  # "stop", or the parent is gone (EOF): leave now, no checkpoint, no export
            sys.stdout.flush()
            os._exit(0)
        if self.profile_dir:
            import torch

            self.prof = torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU])
            self.prof.__enter__()
        self.wall, self.cpu = time.perf_counter(), time.process_time()


def run_project(spec: dict, variant: str) -> None:
    """This project's training loop on one rank (DeepSpeed as the config says)."""
    from magdi_dist.config import load_config
    from magdi_dist.data.shards import load_train_data
    from magdi_dist.launch.resolve import resolve_run, with_data
    from magdi_dist.train.loop import train

    cfg = load_config(spec["config"], spec["overrides"] + spec["variants"][variant]
                      + [f"train.output_dir={Path(spec['workdir']) / variant}"])
    data = load_train_data(spec["manifest"])
    run = with_data(resolve_run(cfg, world_size=1, accelerator="cpu", resume=False), spec["manifest"])
    pause = Pauser(variant, spec.get("profile_dir"))
    train(run, data, metrics_callback=lambda step, rec: pause(step, rec))


def peer_dataset(spec: dict):
    """The positive chains of the project's batches, in the project sampler's order, as token ids and
    labels (prompt masked with -100 exactly as the project's rows do): what TRL trains on."""
    from datasets import Dataset

    from magdi_dist.data.shards import load_train_data

    data = load_train_data(spec["manifest"])
    order = [i for batch in spec["batches"] for i in batch]
    rows = [data.train[i] for i in order]
    return Dataset.from_dict({"input_ids": [list(r["pos_input_ids"]) for r in rows],
                              "labels": [list(r["pos_labels"]) for r in rows]})


def run_peer(spec: dict, variant: str) -> None:
    """TRL's SFTTrainer with PEFT LoRA, configured as a user would for the same work."""
    import torch
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl import SFTConfig, SFTTrainer

    p = spec["peer"]
    tok = AutoTokenizer.from_pretrained(p["model_dir"])
    if tok.pad_token_id != p["pad_id"]:  # pad as the project's collate does
        tok.pad_token = tok.convert_ids_to_tokens(p["pad_id"])
    model = AutoModelForCausalLM.from_pretrained(p["model_dir"], dtype=torch.float32)
    lora = LoraConfig(r=p["lora"]["r"], lora_alpha=p["lora"]["alpha"], lora_dropout=p["lora"]["dropout"],
                      target_modules=list(p["lora"]["target_modules"]), bias="none", task_type="CAUSAL_LM")
    args = SFTConfig(
        output_dir=str(Path(spec["workdir"]) / variant),
        max_steps=spec["steps"],
        per_device_train_batch_size=p["micro_batch_size"],
        gradient_accumulation_steps=p["grad_accum"],
        learning_rate=p["lr"], lr_scheduler_type="cosine", warmup_steps=p["warmup_steps"],
        weight_decay=p["weight_decay"], adam_beta1=p["betas"][0], adam_beta2=p["betas"][1], adam_epsilon=p["eps"],
        max_grad_norm=p["grad_clip"], optim="adamw_torch",
        gradient_checkpointing=False,  # the project's config trains without it (TRL's default is on)
        packing=False, padding_free=False, max_length=None,  # rows are already cut to data.max_len
        dataset_kwargs={"skip_prepare_dataset": True},  # already tokenized, labels included
        train_sampling_strategy="sequential",  # the order above is the project sampler's
        logging_steps=1, save_strategy="no", eval_strategy="no", report_to="none", disable_tqdm=True,
        dataloader_num_workers=0, use_cpu=True, bf16=False, fp16=False, seed=p["seed"],
    )
    pause = Pauser(variant, spec.get("profile_dir"))
    logged: dict = {}

    class Pause(TrainerCallback):
        def on_log(self, args, state, control, logs=None, **kwargs):
            logged.update(logs or {})

        def on_step_end(self, args, state, control, **kwargs):
            # The loss of this step is logged after on_step_end: report the last one logged (the step
            # before) and the token count the trainer keeps (cumulative over steps).
            pause(state.global_step, {"loss_prev_step": logged.get("loss"),
                                      "num_tokens_prev": logged.get("num_tokens")})

    trainer = SFTTrainer(model=model, args=args, train_dataset=peer_dataset(spec), processing_class=tok,
                         peft_config=lora, callbacks=[Pause()])
    trainer.train()


def main(argv: list[str]) -> None:
    spec = json.loads(Path(argv[0]).read_text())
    variant = argv[1]
    from benchmarks.common import set_threads

    set_threads(spec["threads"])
    if variant == "peer":
        run_peer(spec, variant)
    else:
        run_project(spec, variant)
    # max_steps is one more than the parent asks for, so a finished loop means it stopped early.
    sys.stdout.write(MARK + json.dumps({"variant": variant, "finished": True}) + "\n")
    sys.stdout.flush()


if __name__ == "__main__":
    main(sys.argv[1:])
