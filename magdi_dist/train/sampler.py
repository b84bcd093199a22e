"""Deterministic, length-grouped, rank-disjoint batching over row indices.

The whole plan is a pure function of (lengths, seed, epoch, world size, batch size): no iterator state,
so a resumed run asks for "epoch e, micro-batch p" and gets exactly what the interrupted run would have
seen. It does not depend on a Ray Data iterator (whose order is not reproducible across restarts).

Per epoch: shuffle all rows (seeded by seed + epoch); cut the shuffled order into windows of
``group`` global batches; sort each window by length (stable), so a global batch holds rows of similar
length (less padding); cut windows into global batches of ``micro * world`` rows, rank r taking the
r-th ``micro`` slice (disjoint by construction); finally shuffle the order of the global batches, so
long batches are not always at the start of a window. The tail that does not fill a global batch is
dropped for this epoch (a different tail each epoch): every rank must run the same number of
micro-steps, or the gradient all-reduce would hang.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np


class LengthGroupedSampler:
    def __init__(self, lengths: Sequence[int], micro_batch: int, world_size: int, rank: int,
                 seed: int = 0, group: int = 8, shuffle: bool = True):
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} outside world size {world_size}")
        self.lengths = np.asarray(lengths, dtype=np.int64)
        self.micro, self.world, self.rank = micro_batch, world_size, rank
        self.seed, self.group, self.shuffle = seed, group, shuffle
        if self.batches_per_epoch == 0:
            raise ValueError(
                f"{len(self.lengths)} rows cannot fill one global batch of {micro_batch} x {world_size} ranks"
            )

    @property
    def global_batch(self) -> int:
        return self.micro * self.world

    @property
    def batches_per_epoch(self) -> int:
        """Micro-batches each rank runs per epoch."""
        return len(self.lengths) // self.global_batch

    def global_plan(self, epoch: int) -> list[list[list[int]]]:
        """[batch][rank] -> row indices, for all ranks (tests check disjointness on it)."""
        n = self.batches_per_epoch * self.global_batch
        if not self.shuffle:
            order = np.arange(n)
            batches = [order[i : i + self.global_batch] for i in range(0, n, self.global_batch)]
        else:
            rng = np.random.default_rng([self.seed, epoch])
            order = rng.permutation(len(self.lengths))
            window = self.global_batch * self.group
            batches = []
            for start in range(0, len(order), window):
                chunk = order[start : start + window]
                chunk = chunk[np.argsort(-self.lengths[chunk], kind="stable")]
                batches.extend(chunk[i : i + self.global_batch] for i in range(0, len(chunk), self.global_batch))
            # Drop the one short batch (it can only be the last of the last window), then shuffle.
            batches = [b for b in batches if len(b) == self.global_batch]
            batches = [batches[i] for i in rng.permutation(len(batches))]
        return [[b[r * self.micro : (r + 1) * self.micro].tolist() for r in range(self.world)] for b in batches]

    def epoch_batches(self, epoch: int) -> list[list[int]]:
        """This rank's micro-batches of ``epoch``, in order."""
        return [per_rank[self.rank] for per_rank in self.global_plan(epoch)]

    def iter_from(self, position: int) -> Iterator[tuple[int, list[int]]]:
        """(position, indices) for every micro-batch from flat ``position`` on, across epochs forever.

        ``position`` counts micro-batches since the start of training (epoch = position // per epoch),
        the only data state a checkpoint needs.
        """
        per_epoch = self.batches_per_epoch
        epoch, offset = divmod(position, per_epoch)
        while True:
            batches = self.epoch_batches(epoch)
            for k in range(offset, per_epoch):
                yield epoch * per_epoch + k, batches[k]
            epoch, offset = epoch + 1, 0
