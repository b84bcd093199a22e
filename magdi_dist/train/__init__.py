"""Distributed training of the MAGDi student with DeepSpeed ZeRO.

``train(cfg, resume=True, metrics_callback=None, data=None) -> TrainResult`` runs on every rank and
needs only the torch.distributed env vars (plain python, torchrun, the deepspeed launcher, Ray Train).
``data`` is a ``TrainData`` of ready rows (e.g. from Parquet shards); without it rows are built from
the config's MAG files or the synthetic generator.

Submodules import torch/DeepSpeed; this file stays import-light (names resolve lazily).
"""

from __future__ import annotations

_EXPORTS = {"TrainResult": "loop", "train": "loop", "TrainData": "data"}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        import importlib

        return getattr(importlib.import_module(f"magdi_dist.train.{_EXPORTS[name]}"), name)
    raise AttributeError(name)
