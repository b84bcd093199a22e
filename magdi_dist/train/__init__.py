"""Distributed training of the MAGDi student with DeepSpeed ZeRO (see loop.train).

Submodules import torch/DeepSpeed; this package file stays import-light so ``magdi_dist.train.sampler``
or the CLI's config check do not pay for the whole stack.
"""

from __future__ import annotations

__all__ = ["TrainResult", "train"]


def __getattr__(name: str):
    if name in __all__:
        from magdi_dist.train import loop

        return getattr(loop, name)
    raise AttributeError(name)
