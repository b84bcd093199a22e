"""The object-storage tests' S3 server (benchmarks/s3_server.py: moto's ``moto_server`` on 127.0.0.1,
stopped by pid), a reader of what a bucket holds, their run config and the uninterrupted run they
compare with. Not a test module; test modules import from it."""

from __future__ import annotations

import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repo root: benchmarks/ is no installed package

from benchmarks.s3_server import CREDENTIALS, client, s3_server  # noqa: E402

__all__ = ["CREDENTIALS", "SMALL", "objects", "reference_run", "s3_server"]


def objects(env: dict[str, str], bucket: str, prefix: str = "") -> dict[str, bytes]:
    """Every object under ``prefix``, read straight through boto3 (not through the code under test)."""
    s3 = client(env)
    out = {}
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        for obj in page.get("Contents", []):
            out[obj["Key"]] = s3.get_object(Bucket=bucket, Key=obj["Key"])["Body"].read()
    return out


REPO = Path(__file__).resolve().parents[1]
# configs/tiny.yaml at test size (as in tests/test_ray_jobs.py): 6 steps, a checkpoint every 2, none
# pruned (a resumed node's checkpoint stays to be looked at). The object-storage tests all run it.
SMALL = [
    "model.base={hidden_size: 32, num_hidden_layers: 1, num_attention_heads: 2, intermediate_size: 64}",
    "model.gcn_hidden=16", "data.synthetic.n=40", "data.synthetic.rounds=2", "data.max_len=96",
    "data.vocab_size=300", "train.max_steps=6", "train.save_every=2", "train.micro_batch_size=2",
    "train.warmup_steps=0", "train.progress=false", "train.peak_flops=1e12", "train.keep_last_k=3",
]  # fmt: skip


def reference_run(tmp_path_factory) -> Path:
    """The uninterrupted run the object-storage tests compare with: ``SMALL`` on 2 torchrun ranks on a
    local disk, made once per session (the first module to ask runs it). A Ray Train run of the same
    config ends with the same bits (same loop, ranks, threads and gloo), so the Ray test needs no
    reference job of its own."""
    import subprocess

    out = tmp_path_factory.getbasetemp() / "stored-runs-reference"
    if not (out / "export" / "model.safetensors").is_file():
        env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_", "MAGDI_", "AWS_"))}
        env.update(OMP_NUM_THREADS="1", PYTHONPATH=os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")]))
        proc = subprocess.run([sys.executable, "-m", "magdi_dist.cli", "train", "--config", "configs/tiny.yaml",
                               "--nproc-per-node", "2", *SMALL, f"train.output_dir={out}"], cwd=REPO, env=env,
                              capture_output=True, text=True, timeout=900)
        assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    return out
