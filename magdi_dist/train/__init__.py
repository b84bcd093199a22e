"""The per-rank training step and loop with DeepSpeed ZeRO.

``train(cfg, data, resume=True, metrics_callback=None, on_checkpoint=None) -> TrainResult`` runs on
every rank and needs only the torch.distributed env vars (plain python, torchrun, the deepspeed
launcher, Ray Train). ``data`` is ``magdi_dist.data.shards.load_train_data(manifest)``: the launchers
in ``magdi_dist.launch`` prepare the shards first, so rows reach the loop one way only.

Submodules import torch/DeepSpeed; this file stays import-light (names resolve lazily).
"""

from __future__ import annotations

_EXPORTS = {"TrainResult": "loop", "train": "loop"}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        import importlib

        return getattr(importlib.import_module(f"magdi_dist.train.{_EXPORTS[name]}"), name)
    raise AttributeError(name)
