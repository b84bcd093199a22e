"""The suite without its shared test data (tests/conftest.py): one message and a stop before the first
test, not one failure per test; tests that do not read the data still run."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _pytest(tmp_path: Path, *files: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "MAGDI_TEST_DATA": str(tmp_path / "no-such-data")}
    return subprocess.run([sys.executable, "-m", "pytest", *files, "-q", "-p", "no:cacheprovider"], cwd=REPO,
                          env=env, capture_output=True, text=True, timeout=600)


def test_missing_data_stops_the_run_once_with_one_message(tmp_path):
    run = _pytest(tmp_path, "tests/test_readers.py", "tests/test_inspect_independent.py", "tests/test_eval_stats.py")
    out = run.stdout + run.stderr
    assert run.returncode == 4, out  # pytest's usage error: the run is set up wrong, nothing was tested
    assert out.count("shared test data not found at") == 1 and str(tmp_path / "no-such-data") in out
    assert "MAGDI_TEST_DATA" in out and "of the" in out and "selected tests read it" in out
    assert "FileNotFoundError" not in out and " passed" not in out and " failed" not in out


def test_tests_without_the_data_still_run(tmp_path):
    run = _pytest(tmp_path, "tests/test_eval_stats.py")
    assert run.returncode == 0 and " passed" in run.stdout, run.stdout + run.stderr
