"""Contrastive pairs of one MAG, as the reference builds them (utils.prepare_contrastive_samples).

Each correct chain is paired with an incorrect chain of the same question; the smaller side is
repeated cyclically (pair k = (correct[k % P], incorrect[k % Q]), k < max(P, Q)), so every chain of
both sides is used at least once.

No incorrect chain: the reference pads the negatives with the string "NA" and still makes one pair per
correct chain; its model then drops pairs whose negative has <= 5 tokens from the margin loss. Here:
one pair per correct chain with ``neg = None`` (has_negative False, pair_mask 0), so the pair still
trains NTP and the node loss and the margin term skips it explicitly.

No correct chain: no pair at all (there is no chain to imitate); the reference returns None and drops
the question the same way.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

from magdi_dist.mag.schema import Label


class Pair(NamedTuple):
    pos: int  # node index of a correct chain
    neg: int | None  # node index of an incorrect chain, None when the question has none


def make_pairs(labels: Sequence[Label | int]) -> list[Pair]:
    """Pairs over node indices of one (completed) MAG; missing nodes never appear."""
    pos = [i for i, label in enumerate(labels) if int(label) == Label.CORRECT]
    neg = [i for i, label in enumerate(labels) if int(label) == Label.INCORRECT]
    if not pos:
        return []
    if not neg:
        return [Pair(p, None) for p in pos]
    return [Pair(pos[k % len(pos)], neg[k % len(neg)]) for k in range(max(len(pos), len(neg)))]
