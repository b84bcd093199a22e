"""Analysis side of the peer figure (benchmarks/peers.py): model FLOPs per step, the per-variant
summary, the paired ratios, the same-work checks and the generated peer table."""

from __future__ import annotations

from benchmarks.common import median

VARIANTS = ("sft", "peer", "magdi", "sft_aa")


def flop_constants(model_dir: str, lora: dict, gcn_hidden: int, gcn_layers: int) -> dict:
    """Per-token training FLOPs of the LoRA student (model/flops.py, on the meta device: no weights)
    and per node of the GCN, as the training loop counts them."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoConfig, AutoModelForCausalLM

    from magdi_dist.model.encoder import GraphEncoder
    from magdi_dist.model.flops import decoder_flops_per_token, head_flops_per_token

    cfg = AutoConfig.from_pretrained(model_dir)
    with torch.device("meta"):
        lm = AutoModelForCausalLM.from_config(cfg)
    lm = get_peft_model(lm, LoraConfig(r=lora["r"], lora_alpha=lora["alpha"], task_type="CAUSAL_LM",
                                       target_modules=list(lora["target_modules"])))
    base = decoder_flops_per_token(lm, 0)
    return {"decoder": base, "attn_per_position": decoder_flops_per_token(lm, 1) - base,
            "head": head_flops_per_token(lm),
            "node": GraphEncoder(cfg.hidden_size, gcn_hidden, gcn_layers, 0.0).flops_per_node(3.0)}


def step_flops(c: dict, tok: dict, variant: str) -> float:
    """Model FLOPs of one step: decoder per real token + attention over each row's real length, head on
    positive tokens; MAGDi adds its negative rows through the decoder and the GCN per node."""
    flops = c["decoder"] * tok["pos"] + c["attn_per_position"] * tok["pos_sq"] + c["head"] * tok["pos"]
    if variant == "magdi":
        flops += c["decoder"] * tok["neg"] + c["attn_per_position"] * tok["neg_sq"]
    if variant != "peer":
        flops += c["node"] * tok["nodes"]
    return flops


def padded_step_flops(c: dict, tok: dict, variant: str, passes: str = "one") -> float:
    """``step_flops`` over the positions the LM actually runs: sft runs its positive rows padded to the
    longest; magdi runs the negatives too, in one pass with every row padded to the longest of either
    (``passes="one"``) or in a second pass padded to the longest negative (``"split"``; model/student.py
    ``lm_rows``). The same head and GCN terms as ``step_flops``."""
    def rows(n: int, width: int) -> float:
        return n * width * (c["decoder"] + c["attn_per_position"] * width)

    if variant != "magdi" or not tok["neg_rows"]:
        lm = rows(tok["pos_rows"], tok["pos_max"])
    elif passes == "one":
        lm = rows(tok["pos_rows"] + tok["neg_rows"], max(tok["pos_max"], tok["neg_max"]))
    else:
        lm = rows(tok["pos_rows"], tok["pos_max"]) + rows(tok["neg_rows"], tok["neg_max"])
    return lm + c["head"] * tok["pos"] + (c["node"] * tok["nodes"] if variant != "peer" else 0.0)


def _ratio(num: list[float], den: list[float]) -> dict:
    """num/den over the same steps. ``value``: total over total (time per positive token of the whole
    run: every step has the same positive tokens on both sides, and long steps weigh what they cost);
    ``paired_median`` and the range: per-step ratios, each pair measured back to back (the noise)."""
    rs = [a / b for a, b in zip(num, den, strict=True)]
    return {"value": sum(num) / sum(den), "paired_median": median(rs), "min": min(rs), "max": max(rs), "n": len(rs)}


def summarise(spec: dict, runs: dict, consts: dict) -> dict:
    toks = spec["batch_tokens"][spec["warmup"]:]
    pos_total = sum(t["pos"] for t in toks)
    neg_share = sum(t["neg"] for t in toks) / pos_total
    out: dict = {"variants": {}}
    for name, steps in runs["timed"].items():
        wall, cpu = [s["wall_s"] for s in steps], [s["cpu_s"] for s in steps]
        peaks = [s["metrics"]["flops"] / s["metrics"]["step_time_s"] / s["metrics"]["mfu"]
                 for s in steps if s["metrics"].get("mfu")]
        out["variants"][name] = {
            "tokens_per_s": pos_total / sum(wall), "tokens_per_cpu_s": pos_total / sum(cpu),
            "step_s_median": median(wall), "step_s_range": [min(wall), max(wall)],
            "step_cpu_s_median": median(cpu), "step_cpu_s_range": [min(cpu), max(cpu)],
            "peak_rss_mib": max(s["peak_rss"] for s in steps) / 2**20,
            "rss_paused_mib": median([s["rss"] for s in steps]) / 2**20,  # held between its steps
            "flops_per_step": [step_flops(consts, t, name) for t in toks],
            "loop_peak_flops": median(peaks) if peaks else None,
            "samples_wall_s": wall, "samples_cpu_s": cpu,
            "loop_metrics": [s["metrics"] for s in steps],
            "warmup_s": [s["wall_s"] for s in runs["warmup"][name]],
        }
    v = out["variants"]
    t = runs["timed"]

    def times(name: str, clock: str) -> list[float]:
        return [s[clock] for s in t[name]]

    out["ratio"] = {clock: {
        "sft_vs_peer": _ratio(times("peer", clock), times("sft", clock)),  # tokens/s ratio: same tokens
        "magdi_vs_sft": _ratio(times("magdi", clock), times("sft", clock)),
        "aa": _ratio(times("sft_aa", clock), times("sft", clock)),
    } for clock in ("cpu_s", "wall_s")}
    # MFU on the loop's clock (wall) and peak (train.metrics.measure_peak_flops, read back from its log).
    peak = spec["peak_flops"]  # the loop's too (train.peak_flops); loop_peak_flops reads it back from its log
    for x in v.values():
        x["mfu_bench"] = median([f / w / peak for f, w in zip(x["flops_per_step"], x["samples_wall_s"], strict=True)])
        logged = [m.get("mfu") for m in x["loop_metrics"] if m.get("mfu") is not None]
        x["mfu_logged"] = median(logged) if logged else None
        if logged:
            x["flops_logged_vs_bench"] = median([m["flops"] / f for m, f in
                                                 zip(x["loop_metrics"], x["flops_per_step"], strict=True)])
    out.update({"peak_flops": peak, "negative_token_share": neg_share, "positive_tokens_timed": pos_total,
                "flop_constants": consts})
    if all("pos_max" in t for t in toks):  # spec written before the row widths were recorded: left out
        # What one padded LM pass alone predicts for (c)/(a), next to the real-token FLOPs' prediction:
        # the measured ratio above these is the step's own overhead (GCN, scorer, losses, memory).
        sft = sum(padded_step_flops(consts, t, "sft") for t in toks)
        out["flop_model_magdi_vs_sft"] = {
            "real_tokens": sum(v["magdi"]["flops_per_step"]) / sum(v["sft"]["flops_per_step"]),
            **{f"padded_{p}": sum(padded_step_flops(consts, t, "magdi", p) for t in toks) / sft
               for p in ("one", "split")}}
    return out


def checks(spec: dict, runs: dict) -> dict:
    """Did each loop train exactly the rows it should? (the loops' own token counts, step by step)"""
    toks = spec["batch_tokens"]
    every = {n: runs["warmup"][n] + runs["timed"][n] for n in VARIANTS}
    want = {"sft": "pos", "sft_aa": "pos"}
    out = {}
    for name in ("sft", "sft_aa", "magdi"):
        got = [int(s["metrics"]["tokens"]) for s in every[name]]
        exp = [toks[s["step"] - 1]["pos"] + (0 if name in want else toks[s["step"] - 1]["neg"]) for s in every[name]]
        out[f"{name}_tokens_match"] = got == exp
    # TRL reports its cumulative count of attended tokens with the *previous* step's log.
    peer = [s["metrics"].get("num_tokens_prev") for s in every["peer"]]
    cum = [sum(t["pos"] for t in toks[:k]) for k in range(len(peer))]
    out["peer_tokens_match"] = all(p is None or int(p) == c for p, c in zip(peer, cum, strict=True))
    peer_loss1 = every["peer"][1]["metrics"].get("loss_prev_step") if len(every["peer"]) > 1 else None
    sft_loss1 = every["sft"][0]["metrics"].get("ntp_loss")
    out["first_step_loss"] = {"sft": sft_loss1, "peer": peer_loss1}
    out["first_step_loss_match"] = (peer_loss1 is not None and sft_loss1 is not None
                                    and abs(peer_loss1 - sft_loss1) <= 2e-3 * max(1.0, abs(sft_loss1)))
    return out


LABELS = {"sft": "(a) sft: this project, NTP on correct chains (DeepSpeed ZeRO-3)",
          "peer": "(b) peer: {peer}", "magdi": "(c) magdi: this project, NTP + margin + node loss (`lm_passes: auto`)",
          "sft_aa": "A/A: a second, identical sft"}


def markdown(fig: dict) -> list[str]:
    """The peer table (generated into docs/benchmarks.md by benchmarks/report.py)."""
    def r(key: str) -> str:
        c, w = fig["ratios"]["cpu_s"][key], fig["ratios"]["wall_s"][key]
        return (f"{c['value']:.3f} CPU time, {w['value']:.3f} wall clock (total over total; per step: median "
                f"{c['paired_median']:.3f}, range {c['min']:.2f}-{c['max']:.2f})")

    commit = fig["commit"].replace("+dirty", " + uncommitted changes (not reproducible from the commit alone)")
    out = [f"Peer comparison, {fig['date']}, commit {commit}, load average {fig['loadavg'][0]:.1f} at the "
           f"end: {fig['what']}; {fig['reps']} timed steps per variant after {fig['warmup_steps']} warm-up "
           f"step(s), interleaved; student {fig['student']}. MFU: model FLOPs (model/flops.py, LoRA-aware, real "
           f"tokens) per wall-clock second over {fig['peak_gflops']:.1f} GFLOP/s (measure_peak_flops, measured "
           "before the trainers start and handed to this project's loop as train.peak_flops).", "",
           "| trainer | positive-chain tokens/s | per CPU-second | step time, median (range) | peak RSS | "
           "MFU (bench / metrics.jsonl) |", "|---|---:|---:|---:|---:|---:|"]
    for k in VARIANTS:
        x = fig["variants_table"][k]
        logged = f"{x['mfu_logged']:.1%}" if x["mfu_logged"] is not None else "-"
        out.append(f"| {LABELS[k].format(peer=fig['peer'])} | {x['tokens_per_s']:.0f} | {x['tokens_per_cpu_s']:.0f} | "
                   f"{x['step_s']:.2f} s ({x['step_s_range'][0]:.2f}-{x['step_s_range'][1]:.2f}) | "
                   f"{x['peak_rss_mib']:.0f} MiB | {x['mfu_bench']:.1%} / {logged} |")
    ck = fig["checks"]
    out += ["", f"- (a)/(b), sft tokens/s over TRL's: {r('sft_vs_peer')} (goal >= 1.0).",
            f"- (c)/(a), magdi step time per positive token over sft's: {r('magdi_vs_sft')} (goal <= "
            f"{fig['magdi_goal']:.3f} = 1 + {fig['negative_token_share']:.3f} negative-row tokens per positive "
            "token + 0.05).",
            *([f"- Where (c)/(a) comes from: model FLOPs predict {fm['real_tokens']:.3f} over real tokens, "
               f"{fm['padded_split']:.3f} over the padded positions of two LM passes (positives and negatives "
               "each padded to their own longest row: `model.lm_passes: auto` at one rank) and "
               f"{fm['padded_one']:.3f} over those of one pass (each positive padded to the longest negative "
               "of its micro-batch: `auto` under ZeRO-3 on several ranks). The measured ratio above the "
               "prediction for what ran is the MAGDi step's own overhead."]
              if (fm := fig.get("flop_model_magdi_vs_sft")) and "padded_split" in fm else []),
            f"- A/A, sft_aa / sft: {r('aa')}.",
            "- Resident memory between steps (paused): " + ", ".join(
                f"{k} {fig['variants_table'][k]['rss_paused_mib']:.0f} MiB" for k in VARIANTS) + ".",
            f"- Same work: loops' own token counts match the rows (sft {ck['sft_tokens_match']}, magdi "
            f"{ck['magdi_tokens_match']}, TRL {ck['peer_tokens_match']}); first-step loss sft "
            f"{ck['first_step_loss']['sft']:.5f}, TRL {ck['first_step_loss']['peer']:.5f}."]
    return out
