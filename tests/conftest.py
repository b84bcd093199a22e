"""Shared fixtures. The real teacher data lives outside the repo (``../shared/data``, read-only, not
redistributable; ``MAGDI_TEST_DATA`` points elsewhere). When it is missing, a run that selected any
test needing it stops once, before the first test, with one message (rather than skip: a broken
checkout never passes by testing nothing; rather than fail each test: one cause, one message)."""

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

DATA_ENV = "MAGDI_TEST_DATA"
SHARED_DATA = Path(os.environ.get(DATA_ENV) or Path(__file__).resolve().parents[1].parent / "shared" / "data")


def _missing_data_message() -> str:
    return (f"shared test data not found at {SHARED_DATA} (expected ../shared/data next to the repo, or set "
            f"{DATA_ENV}, with mag/magdi_layout, mag/reconcile_pickle and mag/debate_du); see its README.md")


def pytest_collection_modifyitems(session, config, items) -> None:
    """Stop before any test runs when selected tests need the shared data and it is not there."""
    if (SHARED_DATA / "mag").is_dir():
        return
    needing = [item for item in items if "shared_data" in getattr(item, "fixturenames", ())]
    if needing:
        pytest.exit(f"{_missing_data_message()}: {len(needing)} of the {len(items)} selected tests read it",
                    returncode=pytest.ExitCode.USAGE_ERROR)


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not (SHARED_DATA / "mag").is_dir():  # asked for at run time (getfixturevalue): the check above missed it
        pytest.fail(_missing_data_message(), pytrace=False)
    return SHARED_DATA
