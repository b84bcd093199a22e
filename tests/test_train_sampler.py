"""The length-grouped, rank-disjoint sampler: a pure function of (lengths, seed, epoch, world)."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from magdi_dist.train.sampler import LengthGroupedSampler


def lengths(n=203, seed=1):
    return np.random.default_rng(seed).integers(5, 300, size=n).tolist()


def samplers(lens, world=2, micro=4, **kw):
    return [LengthGroupedSampler(lens, micro, world, r, **kw) for r in range(world)]


def test_ranks_are_disjoint_and_cover_all_but_the_tail():
    lens = lengths()
    ranks = samplers(lens, world=3, micro=4, seed=7)
    for epoch in range(3):
        seen = [i for s in ranks for b in s.epoch_batches(epoch) for i in b]
        assert len(seen) == len(set(seen)), "a row went to two ranks (or twice to one)"
        assert len(seen) == len(lens) // 12 * 12  # only the tail that cannot fill a global batch is dropped
        assert all(len(b) == 4 for s in ranks for b in s.epoch_batches(epoch))
    # Every rank runs the same number of micro-steps, or the all-reduce would hang.
    assert len({s.batches_per_epoch for s in ranks}) == 1


def test_deterministic_per_epoch_and_different_across_epochs():
    lens = lengths()
    a, b = samplers(lens, seed=3)[0], samplers(lens, seed=3)[0]
    assert a.epoch_batches(2) == b.epoch_batches(2)
    assert a.epoch_batches(0) != a.epoch_batches(1)
    assert a.epoch_batches(0) != samplers(lens, seed=4)[0].epoch_batches(0)


def test_resume_from_position_replays_the_same_stream():
    s = samplers(lengths(), seed=5)[1]
    per_epoch = s.batches_per_epoch
    full = list(itertools.islice(s.iter_from(0), 3 * per_epoch))
    for pos in (0, 1, per_epoch - 1, per_epoch, per_epoch + 3, 2 * per_epoch + 1):
        tail = list(itertools.islice(s.iter_from(pos), 3 * per_epoch - pos))
        assert tail == full[pos:]


def test_length_grouping_cuts_padding():
    lens = lengths(n=800)

    def waste(group):
        s = samplers(lens, world=2, micro=8, seed=0, group=group)
        plan = s[0].global_plan(0)
        total = 0
        for per_rank in plan:
            for b in per_rank:
                w = max(lens[i] for i in b)
                total += sum(w - lens[i] for i in b)
        return total

    assert waste(16) < 0.5 * waste(1)


def test_unshuffled_plan_is_sequential_and_too_small_data_is_an_error():
    s = LengthGroupedSampler([3] * 10, 2, 2, 1, shuffle=False)
    assert s.epoch_batches(0) == [[2, 3], [6, 7]]
    with pytest.raises(ValueError, match="cannot fill one global batch"):
        LengthGroupedSampler([3] * 3, 2, 2, 0)
