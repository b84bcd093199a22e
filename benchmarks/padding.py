"""Padding waste: the fraction of the LM's [rows, T] positions that are not data tokens, with and
without length grouping (the training sampler's ``group`` = 1 is a plain shuffle).

Counted on the training sampler's own batches (LengthGroupedSampler, 8 pairs per micro-batch,
1 rank) over one epoch, for two row sets: the synthetic demo MAGs (chains of nearly equal length) and
real GSM8K debate transcripts (../shared/data, 3 agents x 3 rounds, lengths vary a lot), tokenized by
a BPE tokenizer trained on them. Two views of each batch:

* ``collated``: the [2B, T] batch as collate builds it (placeholder rows for pairs without a
  negative are full-width rows of padding);
* ``lm``: the rows the LM actually runs since the student drops placeholder rows before its pass
  (MAGDiStudent.forward), padded to the widest of them.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from benchmarks.common import ROOT, Settings, tokenizer
from benchmarks.figure import Row

NAME = "padding"
DEBATE = ROOT.parent / "shared" / "data" / "mag" / "debate_du" / "gsm_3_3_top100.json"
GROUPS = (1, 8, 32)


def waste(rows: list[dict], group: int, micro: int = 8, epochs: int = 3) -> dict:
    from magdi_dist.train.sampler import LengthGroupedSampler

    pos = np.array([len(r["pos_input_ids"]) for r in rows])
    neg = np.array([len(r["neg_input_ids"]) if r["has_negative"] else 0 for r in rows])
    lengths = np.maximum(pos, np.maximum(neg, 1))
    sampler = LengthGroupedSampler(lengths.tolist(), micro, 1, 0, seed=0, group=group)
    real = collated = lm = 0
    for epoch in range(epochs):
        for idx in sampler.epoch_batches(epoch):
            idx = np.asarray(idx)
            width = int(lengths[idx].max())
            n_real_neg = int((neg[idx] > 0).sum())
            real += int(pos[idx].sum() + neg[idx].sum())
            collated += 2 * len(idx) * width
            lm_width = int(max(pos[idx].max(), neg[idx].max()))
            lm += (len(idx) + n_real_neg) * lm_width
    return {"padded_fraction_collated": 1 - real / collated, "padded_fraction_lm": 1 - real / lm}


def _debate_rows(settings: Settings, max_len: int) -> list[dict] | None:
    if not DEBATE.exists():
        return None
    from magdi_dist.data import RowConfig, rows_from_mags, zero_features
    from magdi_dist.data.tokenizer import mag_texts, train_tokenizer
    from magdi_dist.mag.readers import read_mags

    mags = list(read_mags([DEBATE]).mags)
    tok = train_tokenizer(mag_texts(mags), settings.workdir / "tokenizer_debate", vocab_size=1024)
    return rows_from_mags(mags, tok, RowConfig(max_length=max_len), zero_features(1))


def run(settings: Settings) -> dict:
    from benchmarks.common import synthetic_rows

    sets = {"synthetic": synthetic_rows(tokenizer(settings), 1, n_mags=200, max_len=128)}
    debate = _debate_rows(settings, max_len=512)
    if debate is not None:
        sets["gsm8k_debate"] = debate
    out = {}
    for name, rows in sets.items():
        lens = [max(len(r["pos_input_ids"]), len(r["neg_input_ids"])) for r in rows]
        out[name] = {
            "rows": len(rows),
            "length_p10_p50_p90": [float(x) for x in np.percentile(lens, [10, 50, 90])],
            "no_negative_fraction": float(np.mean([not r["has_negative"] for r in rows])),
            "by_group": {str(g): waste(rows, g) for g in GROUPS},
        }
    key = "gsm8k_debate" if "gsm8k_debate" in out else "synthetic"
    return {
        "figure": "padding",
        "what": "padded fraction of LM positions, 8 pairs per micro-batch: plain shuffle (group 1) vs "
                "length grouping (group 8 = train.length_grouping default)",
        "goal": "report (lower is better)",
        "value": out[key]["by_group"]["8"]["padded_fraction_lm"],
        "value_without_grouping": out[key]["by_group"]["1"]["padded_fraction_lm"],
        "dataset": key,
        "met": None,
        "sets": out,
        "source_missing": None if DEBATE.exists() else str(Path(DEBATE)),
    }


SETS = {"gsm8k_debate": "GSM8K debate rows", "synthetic": "synthetic demo rows"}


def rows(result: dict) -> list[Row]:
    """Length grouping's default (group 8); "before" is the same batches as collated, placeholder rows
    for pairs without a negative included (what the LM ran before the student dropped them)."""
    g = result["sets"][result["dataset"]]["by_group"]["8"]
    return [Row("padding", f"Padded fraction of LM positions, {SETS.get(result['dataset'], result['dataset'])}, "
                "length grouping on", g["padded_fraction_lm"], result["goal"], None, "pct",
                before=g["padded_fraction_collated"], before_source="same run")]


def details(result: dict) -> str:
    out = []
    for name, s in result["sets"].items():
        g = s["by_group"]
        st = ", ".join(f"group {k}: {g[k]['padded_fraction_collated']:.1%} collated / "
                       f"{g[k]['padded_fraction_lm']:.1%} LM" for k in sorted(g, key=int))
        out.append(f"- Padding {name} ({s['rows']} rows, {s['no_negative_fraction']:.0%} without a negative): {st}.")
    return "\n".join(out)
