"""Shards stay inside their folder and match their hashes (issue 25, item 6), on real preprocessing
output of configs/tiny.yaml (its model and settings, 60 of its synthetic discussions in 4 shards): a unit
record or a manifest
naming a shard outside the shards folder (``../x.parquet``, an absolute path) is refused by the load and
by ``magdi-dist preprocess --verify`` (exit 2, the record and the field named); a byte flipped in a shard
is refused naming that shard, by every rank's load (``magdi-dist train``) and by ``--verify``; an untouched
folder loads and verifies, and its manifest is not rewritten."""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from magdi_dist.cli import app
from magdi_dist.config import load_config
from magdi_dist.data.shards import ShardIntegrityError, load_train_data, verify_manifest
from magdi_dist.preprocess.prepare import prepare_data

REPO = Path(__file__).resolve().parents[1]
TINY = REPO / "configs" / "tiny.yaml"
# 60 MAGs at 16 a shard: 4 shards, so "which shard" means something; 60, not tiny's 200: a quarter of the time.
SPLIT = ["data.synthetic.n=60", "preprocess.records_per_shard=16"]


@pytest.fixture(scope="module")
def prepared(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("tiny") / "run"
    prepare_data(load_config(TINY, [*SPLIT, f"train.output_dir={out}"]), engine="local", log=lambda _m: None)
    return out


@pytest.fixture
def run_dir(prepared: Path, tmp_path: Path) -> Path:
    """A copy of the prepared run folder to damage (its manifest's paths are relative: it moves)."""
    return Path(shutil.copytree(prepared, tmp_path / "run"))


def _verify(run_dir: Path):
    return CliRunner().invoke(app, ["preprocess", "--config", str(TINY), "--local", "--verify", *SPLIT,
                                    f"train.output_dir={run_dir}"])


def _manifest(run_dir: Path) -> tuple[Path, dict]:
    path = run_dir / "shards" / "manifest.json"
    return path, json.loads(path.read_text())


def _unit_record(run_dir: Path) -> tuple[Path, dict]:
    (path,) = sorted((run_dir / "shards" / "units").glob("*.json"))  # one input: the synthetic file
    return path, json.loads(path.read_text())


def test_an_untouched_folder_loads_and_verifies(run_dir: Path):
    path, manifest = _manifest(run_dir)
    before = path.read_bytes()
    assert len(manifest["shards"]) == 4
    for shard in manifest["shards"]:  # what was recorded at write time is the file's hash now
        assert hashlib.sha256((path.parent / shard["file"]).read_bytes()).hexdigest() == shard["sha256"]
    data = load_train_data(path)
    assert len(data.train) + sum(1 for _ in data.eval) > 0 and verify_manifest(path) == []
    result = _verify(run_dir)
    assert result.exit_code == 0, result.output
    assert path.read_bytes() == before  # an identical re-run leaves the manifest byte for byte


@pytest.mark.parametrize("outside", ["relative", "absolute"])
def test_a_shard_named_outside_the_shards_folder_is_refused(run_dir: Path, tmp_path: Path, outside: str):
    path, manifest = _manifest(run_dir)
    real = path.parent / manifest["shards"][0]["file"]
    # A real Parquet file of the right size outside shards/: what the record names exists and reads.
    if outside == "relative":
        target, name, file = path.parent / "x.parquet", "../x.parquet", "shards/../x.parquet"
    else:
        target = tmp_path / "elsewhere" / "x.parquet"
        name = file = str(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(real, target)

    # The load: a manifest naming it (what preprocessing wrote from such a record before this check).
    manifest["shards"][0]["file"] = file
    path.write_text(json.dumps(manifest))
    with pytest.raises(ShardIntegrityError, match=r"manifest\.json: shards\[0\]\.file = .*refusing to read it"):
        load_train_data(path)
    (problem,) = verify_manifest(path)
    assert "shards[0].file" in problem and "x.parquet" in problem

    # --verify (and every launcher: the same preparation runs first): the unit record is refused before
    # it can reach the manifest.
    record_path, record = _unit_record(run_dir)
    record["shards"][0]["name"] = name
    record_path.write_text(json.dumps(record))
    result = _verify(run_dir)
    assert result.exit_code == 2, result.output
    assert f"{record_path}: shards[0].name = {name!r}" in result.stderr and "refusing" in result.stderr
    assert "Traceback" not in result.output


def _silent_flip(data: bytes) -> bytes:
    """``data`` with one bit flipped where Parquet still reads without an error but returns other rows:
    the corruption that trains silently without a hash check (searched, not assumed: where such a byte
    lies depends on the encoder)."""
    original = pq.read_table(pa.BufferReader(data))
    for offset in range(len(data) // 3, len(data)):
        flipped = bytearray(data)
        flipped[offset] ^= 0x01
        try:
            table = pq.read_table(pa.BufferReader(bytes(flipped)))
        except Exception:  # noqa: BLE001 -- a flip Parquet catches by itself is not the case here
            continue
        if not table.equals(original):
            return bytes(flipped)
    raise AssertionError("no silently readable bit flip found")


def test_a_flipped_byte_is_refused_naming_the_shard(run_dir: Path):
    path, manifest = _manifest(run_dir)
    shard = path.parent / manifest["shards"][2]["file"]
    shard.write_bytes(_silent_flip(shard.read_bytes()))  # same size: the unit record still looks complete

    with pytest.raises(ShardIntegrityError, match=rf"shards\[2\]: shard {shard} has sha256"):
        load_train_data(path)
    result = _verify(run_dir)
    assert result.exit_code == 2, result.output
    assert str(shard) in result.stderr and "shards[2]" in result.stderr
    assert all(manifest["shards"][i]["name"] not in result.stderr for i in (0, 1, 3))  # that one, no other


@pytest.mark.slow
def test_training_on_a_flipped_byte_stops_at_the_ranks_read(run_dir: Path):
    """The case the issue ran: the driver's preparation finds nothing to redo (the sizes match), so the
    rank's own read is what refuses the shard; ``magdi-dist train`` exits 2 before any step."""
    path, manifest = _manifest(run_dir)
    shard = path.parent / manifest["shards"][2]["file"]
    shard.write_bytes(_silent_flip(shard.read_bytes()))
    proc = subprocess.run([sys.executable, "-m", "magdi_dist.cli", "train", "--config", str(TINY), *SPLIT,
                           f"train.output_dir={run_dir}", "train.max_steps=1", "train.progress=false"],
                          cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert f"error: {path}: shards[2]: shard {shard} has sha256" in proc.stderr
    assert not (run_dir / "checkpoints").exists() and not (run_dir / "export").exists()
