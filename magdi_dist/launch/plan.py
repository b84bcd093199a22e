"""Capacity plan: will a run config fit the devices it launches on, and under which ZeRO preset?

Model states (weights, gradients, Adam states) come from DeepSpeed's own estimators
(``estimate_zero2_model_states_mem_needs`` / ``estimate_zero3_model_states_mem_needs``, the functions
behind its ``*_all_cold`` printers), called with the student's parameter count N and largest layer L
(model/shapes.py, counted on the meta device). They assume what DeepSpeed runs on GPUs: 16-bit
weights and gradients, fp32 master weights and Adam states. With ``train.precision: fp32`` the module
keeps fp32 weights and gradients instead; the figures are then off by up to 4 bytes per parameter
either way (ZeRO-0 holds no master copy, ZeRO-1/2 hold fp32 weights and gradients): the plan says so
rather than inventing a correction DeepSpeed does not make.

ZeRO-3 is costed as this trainer builds it, under ``deepspeed.zero.Init`` (model/zero_init.py):
DeepSpeed's ``zero_init=True`` figures, where no rank holds the whole student on its host. ZeRO-0/1/2
students are built whole on every rank's host first: DeepSpeed's host figure for that build.

Next to them, never mixed into DeepSpeed's figures: the LoRA model states (the estimators applied to
the trainable parameters, plus the frozen 16-bit base), and the activations of one micro-batch. The
fit decision adds the states the config trains (full or LoRA) and the activations.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from magdi_dist.config import DS_PRESETS, ConfigError, MAGDiConfig
from magdi_dist.model.shapes import StudentShape
from magdi_dist.run_spec import RunSpec

GiB = 2**30


@dataclass(frozen=True)
class Layout:
    """What a DeepSpeed config partitions and offloads."""

    stage: int
    offload_optimizer: bool = False
    offload_param: bool = False

    @classmethod
    def of(cls, ds_config: dict) -> Layout:
        zero = ds_config.get("zero_optimization", {})

        def offloaded(key: str) -> bool:
            return (zero.get(key) or {}).get("device", "none") not in ("none", None)

        stage = int(zero.get("stage", 0))
        return cls(stage, offloaded("offload_optimizer"), stage == 3 and offloaded("offload_param"))

    @property
    def offloads(self) -> bool:
        return self.offload_optimizer or self.offload_param


def preset_layout(name: str) -> Layout:
    from magdi_dist.train.engine import load_preset

    return Layout.of(load_preset(name))


@dataclass(frozen=True)
class Hardware:
    nodes: int
    gpus_per_node: int
    device_memory: int
    """Bytes per device (GPU memory; on a CPU machine the host RAM its ranks share)."""
    node_memory: int | None
    """Host RAM per node in bytes; None: not known (a cluster planned from elsewhere), not checked."""
    kind: Literal["gpu", "cpu"]
    """cpu: the ranks' devices are this host's RAM, so device and host needs add up in one memory."""
    source: str


def host_memory() -> int:
    import psutil  # a DeepSpeed dependency

    return int(psutil.virtual_memory().total)


def this_machine(ranks: int | None = None) -> Hardware:
    """This machine: its GPUs (total memory of GPU 0) or, without one, its RAM shared by ``ranks``."""
    import torch

    ram = host_memory()
    if torch.cuda.is_available():
        dev = torch.cuda.get_device_properties(0)  # a property query: nothing is allocated on it
        return Hardware(1, ranks or torch.cuda.device_count(), int(dev.total_memory), ram, "gpu",
                        f"this machine ({dev.name})")
    return Hardware(1, ranks or 1, ram, ram, "cpu", f"this machine ({os.cpu_count()} CPU cores, no GPU)")


def planned_hardware(nodes: int = 1, gpus_per_node: int | None = None, device_memory_gb: float | None = None,
                     node_memory_gb: float | None = None) -> Hardware:
    """This machine, or the cluster the options describe: ``device_memory_gb`` (GiB per device) makes
    it a GPU plan; ``node_memory_gb`` (host GiB per node) defaults to this machine's RAM, except for
    a given cluster, whose host memory is then not checked."""
    here = this_machine(gpus_per_node)
    node_mem = int(node_memory_gb * GiB) if node_memory_gb else None
    if device_memory_gb is not None:
        gpn = gpus_per_node or (here.gpus_per_node if here.kind == "gpu" else 1)
        return Hardware(nodes, gpn, int(device_memory_gb * GiB), node_mem, "gpu",
                        f"{nodes} node(s) x {gpn} device(s) of {device_memory_gb:g} GiB (given)")
    ram = node_mem or here.node_memory
    source = here.source + (f", planned as {nodes} such nodes" if nodes > 1 else "")
    return Hardware(nodes, here.gpus_per_node, ram if here.kind == "cpu" else here.device_memory, ram,
                    here.kind, source)


# --- model states -----------------------------------------------------------------------------------


def deepspeed_states(layout: Layout, params: int, largest: int, nodes: int, gpus_per_node: int) -> tuple[int, int]:
    """(bytes per device, host bytes per node) of weights, gradients and Adam states: DeepSpeed's
    estimators. ZeRO-3 is costed with ``zero.Init`` (zero_init=True), as the trainer builds ZeRO-3
    students (model/zero_init.py): each module is partitioned as soon as it is built, so the host holds
    one fp32 layer per rank at a time (L x 4 x ranks per node x 1.5), or, offloaded, this node's share
    of the states (N x 16 or 18 / nodes x 1.5). At ZeRO-0/1/2 every rank builds the whole student on
    the host before DeepSpeed takes it: N x 4 x ranks per node x 1.5."""
    from deepspeed.runtime.zero.stage3 import estimate_zero3_model_states_mem_needs
    from deepspeed.runtime.zero.stage_1_and_2 import estimate_zero2_model_states_mem_needs

    if layout.stage == 3:
        cpu, dev, _ = estimate_zero3_model_states_mem_needs(
            params, largest, gpus_per_node, nodes, cpu_offload=layout.offload_optimizer,
            cpu_offload_params=layout.offload_param, zero_init=True)
        return dev, cpu
    cpu, dev = estimate_zero2_model_states_mem_needs(params, gpus_per_node, nodes,
                                                     cpu_offload=layout.offload_optimizer)
    if layout.offload_optimizer or layout.stage == 2:
        return dev, cpu
    if layout.stage == 1:
        # No estimator for ZeRO-1. It partitions only the fp32 states (master weights, fp32 gradients,
        # Adam: 16 bytes) and keeps the 16-bit weights and gradients whole on every device (2 + 2):
        # 4 N + 16 N / devices: the formula DeepSpeed's memory page still prints for ZeRO-2 without
        # offload, from before ZeRO-2's estimator counted its partitioned gradients (2 N + 18 N / devices).
        return 4 * params + int(16 * params / (nodes * gpus_per_node)), cpu
    # ZeRO-0 partitions nothing: the ZeRO-2 estimator on a world of one device, 2 N + 18 N (the same
    # 20 bytes per parameter as ZeRO-1's formula at one device). The host figure (each rank builds the
    # model on the host first) is ZeRO-2's for this node's ranks.
    _, dev = estimate_zero2_model_states_mem_needs(params, 1, 1, cpu_offload=False)
    return dev, cpu


def lora_states(layout: Layout, shape: StudentShape, nodes: int, gpus_per_node: int) -> tuple[int, int]:
    """(bytes per device, host bytes per node) of the model states when only ``trainable_params``
    train: DeepSpeed's estimator on those, plus the frozen base in 16-bit (partitioned under ZeRO-3, on
    the host when parameters are offloaded: this node's share, 2 x frozen / nodes).

    The host figure of ZeRO-0/1/2 is full fine-tuning's: every rank builds the whole student on its host
    whatever trains. Under ZeRO-3 (zero.Init) the host holds the trainable parameters' offloaded states,
    not all of them, or, without offload, the one layer being built (the same L as full fine-tuning)."""
    dev, cpu = deepspeed_states(layout, shape.trainable_params, shape.largest_layer_params, nodes, gpus_per_node)
    frozen = 2 * shape.frozen_params
    if layout.stage != 3:
        _, cpu = deepspeed_states(layout, shape.params, shape.largest_layer_params, nodes, gpus_per_node)
        return dev + frozen, cpu
    if layout.offload_param:
        return dev, cpu + frozen // nodes
    return dev + frozen // (nodes * gpus_per_node), cpu


# --- activations ------------------------------------------------------------------------------------


def activation_bytes(shape: StudentShape, rows: int, head_rows: int, seq_len: int, bytes_per: int,
                     checkpointing: bool) -> dict[str, int]:
    """What one micro-batch keeps for the backward pass, per device (an upper bound: every row full
    length, every negative present).

    Counted per token from the tensors autograd saves in a transformers Llama layer (listed with
    ``saved_tensors_hooks``, tests/test_capacity.py): the layer input and the residual after attention
    2h; each RMSNorm's product and normalised output 4h; the RoPE'd q and k, v and the SDPA output
    2h + 2kv (kv = the key/value width under GQA; SDPA keeps no T x T scores); SwiGLU's gate, up,
    activation and product 4i. Plus 3h outside the layers (embedding output, final norm, head input).
    With gradient checkpointing only each layer's input stays (h). The output head runs on the positive
    rows only, and the loss keeps their fp32 log-softmax (``head``). ``transient``: what exists only for
    a moment on top of that, the logits and their fp32 copy (when the LM is 16-bit) and, under
    checkpointing, the one layer the backward recomputes at a time."""
    h, i = shape.hidden_size, shape.intermediate_size
    kv = h * shape.num_kv_heads // shape.num_heads
    layer = 8 * h + 2 * kv + 4 * i
    tokens, logits = rows * seq_len, head_rows * seq_len * shape.vocab_size
    kept = shape.num_layers * (h if checkpointing else layer) + 3 * h
    out = {"decoder": tokens * kept * bytes_per, "head": 4 * logits,
           "transient": logits * (bytes_per + (4 if bytes_per < 4 else 0))
           + (tokens * layer * bytes_per if checkpointing else 0)}
    out["total"] = sum(out.values())
    return out


def config_activations(cfg: MAGDiConfig, shape: StudentShape) -> dict[str, int]:
    t, m = cfg.train, cfg.model
    bytes_per = 2 if t.precision == "bf16" else shape.weight_bytes
    # The LM sees 2x micro_batch_size rows (positives, then negatives); the head only the positives.
    # Live graph features add up to live_extra_nodes rows per pair of live_node_max_tokens each.
    acts = activation_bytes(shape, 2 * t.micro_batch_size, t.micro_batch_size, cfg.data.max_len, bytes_per,
                            m.gradient_checkpointing)
    if m.graph_features == "live" and m.live_extra_nodes:
        extra = activation_bytes(shape, t.micro_batch_size * m.live_extra_nodes, 0, m.live_node_max_tokens,
                                 bytes_per, m.gradient_checkpointing)
        acts = {k: v + extra[k] for k, v in acts.items()}
    return acts


# --- the plan -----------------------------------------------------------------------------------------


def _entry(layout: Layout, shape: StudentShape, acts: int, hw: Hardware, lora: bool) -> dict:
    dev, cpu = deepspeed_states(layout, shape.params, shape.largest_layer_params, hw.nodes, hw.gpus_per_node)
    entry = {"per_device_bytes": dev, "per_node_cpu_bytes": cpu}
    state, host = dev, cpu
    if lora:
        state, host = lora_states(layout, shape, hw.nodes, hw.gpus_per_node)
        entry.update(lora_per_device_bytes=state, lora_per_node_cpu_bytes=host)
    device = state + acts
    if hw.kind == "gpu":
        node = host
    else:
        # One RAM for everything. Without offload the host figure is what each rank builds before
        # DeepSpeed takes it (the whole model at ZeRO-0/1/2, one layer at a time under ZeRO-3's
        # zero.Init), and on the CPU accelerator that becomes the device copy: the larger one counts.
        ranks = hw.gpus_per_node * device
        node = ranks + host if layout.offloads else max(ranks, host)
    fits = device <= hw.device_memory and (hw.node_memory is None or node <= hw.node_memory)
    entry.update(device_need_bytes=device, node_need_bytes=node, fits=bool(fits))
    return entry


def plan(cfg: MAGDiConfig, hw: Hardware, shape: StudentShape | None = None) -> dict:
    """Per preset: DeepSpeed's model-state figures, this config's needs, and whether they fit ``hw``."""
    from magdi_dist.model.shapes import config_shape

    shape = shape or config_shape(cfg)
    acts = config_activations(cfg, shape)
    lora = cfg.model.lora is not None
    presets = {name: _entry(preset_layout(name), shape, acts["total"], hw, lora) for name in DS_PRESETS}
    return {
        "params": shape.params,
        "largest_layer_params": shape.largest_layer_params,
        "trainable_params": shape.trainable_params,
        "lm_params": shape.lm_params,
        "lora": lora,
        "precision": cfg.train.precision,
        "activation_bytes": acts["total"],
        "activations": acts,
        "micro_batch_size": cfg.train.micro_batch_size,
        "max_len": cfg.data.max_len,
        "gradient_checkpointing": cfg.model.gradient_checkpointing,
        "hardware": {"nodes": hw.nodes, "gpus_per_node": hw.gpus_per_node, "device_memory_bytes": hw.device_memory,
                     "node_memory_bytes": hw.node_memory, "kind": hw.kind, "source": hw.source},
        "presets": presets,
        "fitting": [name for name, p in presets.items() if p["fits"]],
        "config_preset": cfg.train.deepspeed if cfg.train.deepspeed in DS_PRESETS else Path(cfg.train.deepspeed).name,
    }


def check_fits(spec: RunSpec, shape: StudentShape) -> None:
    """Pre-flight: a local run (``spec.world_size`` ranks on this machine) that the plan says cannot
    fit stops with a ConfigError naming the numbers and the presets that would fit. It plans the
    resolved run's own DeepSpeed config and shape (launch/resolve.py), built once."""
    cfg, world_size = spec.config, spec.world_size
    hw = this_machine(world_size)
    layout = Layout.of(spec.ds_config)
    result = plan(cfg, hw, shape)
    mine = next((n for n in DS_PRESETS if preset_layout(n) == layout), None)
    entry = result["presets"][mine] if mine else _entry(layout, shape, result["activation_bytes"], hw,
                                                        cfg.model.lora is not None)
    if entry["fits"]:
        return
    what = "device" if entry["device_need_bytes"] > hw.device_memory else "node"
    need = entry[f"{what}_need_bytes"]
    have = hw.device_memory if what == "device" else hw.node_memory
    fitting = result["fitting"]
    hint = (f"it fits under train.deepspeed={fitting[0]} (every preset that fits: {', '.join(fitting)})"
            if fitting else "no ZeRO preset fits: use LoRA (model.lora), gradient checkpointing, a smaller "
            "micro-batch or max_len, or more devices")
    raise ConfigError(
        f"memory: this run needs ~{need / GiB:.1f} GiB per {what} under ZeRO stage {layout.stage}"
        f"{' with offload' if layout.offloads else ''} ({result['params'] / 1e9:.2f}B parameters, "
        f"{result['activation_bytes'] / GiB:.2f} GiB of activations per rank, {world_size} rank(s)), "
        f"and {hw.source} has {have / GiB:.1f} GiB; {hint}. `magdi-dist plan` shows every figure; "
        "train.skip_memory_check=true skips this check.")


def _gib(n: int | None) -> str:
    return "-" if n is None else f"{n / GiB:,.2f}"


def format_plan(result: dict) -> str:
    """The plan as the text table ``magdi-dist plan`` prints (GiB = 2^30 bytes, as DeepSpeed prints)."""
    hw, acts = result["hardware"], result["activations"]
    trained = (f"LoRA: {result['trainable_params'] / 1e6:,.1f}M trainable" if result["lora"]
               else "full fine-tuning")
    node_ram = "not checked" if hw["node_memory_bytes"] is None else f"{_gib(hw['node_memory_bytes'])} GiB"
    lines = [
        f"student: {result['params'] / 1e9:,.3f}B parameters (LM {result['lm_params'] / 1e9:,.3f}B, largest "
        f"layer {result['largest_layer_params'] / 1e6:,.1f}M), {trained}, precision {result['precision']}",
        f"hardware: {hw['nodes']} node(s) x {hw['gpus_per_node']} device(s), {_gib(hw['device_memory_bytes'])} "
        f"GiB per device, host RAM per node {node_ram} ({hw['source']})",
        f"activations per device: {result['micro_batch_size']} pairs = {2 * result['micro_batch_size']} LM rows "
        f"x {result['max_len']} tokens, checkpointing {'on' if result['gradient_checkpointing'] else 'off'}: "
        f"{_gib(acts['total'])} GiB (decoder {_gib(acts['decoder'])}, loss {_gib(acts['head'])}, transient "
        f"{_gib(acts['transient'])})",
        "",
    ]
    lora = result["lora"]
    head = ["preset", "DS states/device", *(["LoRA states/device"] if lora else []), "need/device",
            "DS host/node", *(["LoRA host/node"] if lora else []), "need/node", "fits"]
    rows = [head]
    for name, p in result["presets"].items():
        rows.append([name, _gib(p["per_device_bytes"]), *([_gib(p["lora_per_device_bytes"])] if lora else []),
                     _gib(p["device_need_bytes"]), _gib(p["per_node_cpu_bytes"]),
                     *([_gib(p["lora_per_node_cpu_bytes"])] if lora else []), _gib(p["node_need_bytes"]),
                     "yes" if p["fits"] else "no"])
    widths = [max(len(r[i]) for r in rows) for i in range(len(head))]
    lines += ["  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths, strict=True)))
              for r in rows]
    lines += [
        "",
        "GiB. DS = DeepSpeed's estimators for full fine-tuning (16-bit weights and gradients, fp32 master "
        "weights and Adam states; ZeRO-3 figures are DeepSpeed's zero.Init ones, as this trainer builds "
        "ZeRO-3 students; at ZeRO-0/1/2 every rank builds the whole model on the host).",
        "need = the states this config trains + activations; on a machine without GPU the ranks share its RAM.",
        f"fits: {', '.join(result['fitting']) or 'none'} (this config uses {result['config_preset']})",
    ]
    if result["precision"] == "fp32":
        lines.append("precision fp32: weights and gradients are fp32, not 16-bit; the states differ from these "
                     "figures by up to 4 bytes per parameter (less at ZeRO-0, more at ZeRO-1/2).")
    return "\n".join(lines)
