"""What checking shards costs a rank (issue 25, item 6): reading a manifest's shards as every rank does
(``data.shards.ShardDataset``: paths always checked) with the sha256 check and without, the hash pass
alone, and ``verify_manifest`` (``magdi-dist preprocess --verify``'s check), each the median of
``--reps`` back-to-back repetitions, with the file cache warm (the first read is discarded).

    python scripts/shard_verify_cost.py NAME=MANIFEST [...] --out benchmarks/results/shard_verify_cost.json

Reads the shards only: nothing in a shards folder is written.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # `python scripts/...` puts scripts/ on sys.path, not the repo


def _timed(fn, reps: int) -> list[float]:
    fn()  # warm: the file cache and the imports, as a rank that reads them once has them
    out = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t0)
    return out


def measure(manifest: Path, reps: int) -> dict:
    from magdi_dist.data.shards import ShardDataset, load_manifest, verify_manifest

    entries = load_manifest(manifest)["shards"]
    files = [manifest.parent / s["file"] for s in entries]

    def hash_only() -> None:
        for f in files:
            hashlib.sha256(f.read_bytes()).hexdigest()

    runs = {"read_verified_s": _timed(lambda: ShardDataset(manifest, verify=True), reps),
            "read_unverified_s": _timed(lambda: ShardDataset(manifest, verify=False), reps),
            "sha256_only_s": _timed(hash_only, reps),
            "verify_manifest_s": _timed(lambda: verify_manifest(manifest), reps)}
    medians = {k: statistics.median(v) for k, v in runs.items()}
    return {"manifest": str(manifest), "shards": len(entries), "bytes": sum(f.stat().st_size for f in files),
            "rows": sum(s["rows"] for s in entries), "median": medians,
            "hash_cost_s": medians["read_verified_s"] - medians["read_unverified_s"], "samples": runs}


def _commit() -> str:
    def git(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True)

    dirty = git("diff", "--quiet", "HEAD", "--").returncode != 0
    return git("rev-parse", "--short", "HEAD").stdout.strip() + ("+dirty" if dirty else "")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("manifests", nargs="+", help="NAME=path/to/manifest.json")
    parser.add_argument("--reps", type=int, default=7)
    parser.add_argument("--out", required=True)
    args = parser.parse_args(argv)
    import torch

    torch.set_num_threads(1)  # what a rank of the 2-rank configs has
    result = {"what": __doc__.splitlines()[0], "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]),
              "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "commit": _commit(), "machine": platform.processor()
              or platform.machine(), "cores": os.cpu_count(), "loadavg": list(os.getloadavg()), "reps": args.reps,
              "cases": {}}
    for item in args.manifests:
        name, _, path = item.partition("=")
        result["cases"][name] = measure(Path(path), args.reps)
    result["loadavg_after"] = list(os.getloadavg())
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    for name, case in result["cases"].items():
        m = case["median"]
        print(f"{name}: {case['shards']} shards, {case['bytes'] / 1e6:.2f} MB: read {m['read_unverified_s']:.4f} s, "
              f"with sha256 {m['read_verified_s']:.4f} s (+{case['hash_cost_s']:.4f} s); --verify "
              f"{m['verify_manifest_s']:.4f} s")


if __name__ == "__main__":
    main()
