"""Shared fixtures. The real teacher data lives outside the repo (``../shared/data``, read-only, not
redistributable); tests that need it fail loudly when it is missing rather than skip, so a broken
checkout never passes by testing nothing."""

from __future__ import annotations

import os
from pathlib import Path

# One intra-op thread per process: the suite runs multi-process DeepSpeed and Ray on 2 cores, where
# oversubscribed OpenMP pools make small ops orders of magnitude slower. Subprocesses inherit it.
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest
import torch

torch.set_num_threads(1)

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not (SHARED_DATA / "mag").is_dir():
        pytest.fail(
            f"shared test data not found at {SHARED_DATA} (expected ../shared/data next to the repo, "
            "with mag/magdi_layout, mag/reconcile_pickle and mag/debate_du); see its README.md",
            pytrace=False,
        )
    return SHARED_DATA
