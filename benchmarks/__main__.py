"""``python -m benchmarks`` (or ``magdi-dist bench``): run every figure, write benchmarks/results/*.json
and the generated table in docs/benchmarks.md. ``--quick`` is the smoke-test size (tiny-1m only, one
repetition): it exercises every code path in about a minute but its numbers mean nothing.

Figures run one after another in this process (the ZeRO one launches its own 2-process torchrun job);
a figure that fails is recorded with its error and the others still run, so one broken figure never
costs the whole 15-minute run, and the exit status is 1.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import json
import os
import sys
import time
import traceback
from pathlib import Path

FIGURES = ("padding", "step_overhead", "mfu", "data_path", "checkpoint", "zero_memory", "preprocessing")
MODULES = {"checkpoint": "checkpoint_bench"}


def _preprocessing(settings, results_dir: Path, docs: Path | None) -> dict:
    """Another engineer's benchmarks/preprocess_bench.py (Ray workers vs one process, cost per MAG at
    1k..8k MAGs), if present: called through its ``main(argv)``, with its JSON and its "Preprocessing"
    docs section redirected to this run's results dir / docs file (the smoke test must not overwrite
    the real ones). Its figures are summarised here for the table."""
    if importlib.util.find_spec("benchmarks.preprocess_bench") is None:
        return {"figure": "preprocessing", "error": "benchmarks/preprocess_bench.py not present", "absent": True}
    mod = importlib.import_module("benchmarks.preprocess_bench")
    mod.RESULTS_DIR = results_dir
    mod.DOCS = docs if docs is not None else settings.workdir / "preprocess_docs.md"
    argv = ["--workdir", str(settings.workdir / "preprocess")]
    if settings.quick:
        argv += ["--sizes", "60"]
    result = mod.main(argv)
    return {"figure": "preprocessing", **summarise_preprocessing(result), "raw": "results/preprocess.json"}


def summarise_preprocessing(result: dict) -> dict:
    """Speed-up of 2 Ray workers over 1 at the largest size (wall clock, start-up included) and the
    flatness of the 2-worker cost per MAG across sizes, two ways: wall clock per MAG (includes the
    fixed start-up, so it falls with size) and incremental (extra seconds / extra MAGs between
    consecutive sizes: start-up cancels, what is left grows only if the pipeline scales worse than
    linearly). Flatness = max / min - 1; the goal uses the incremental one."""
    runs = result["runs"]
    by = {(r["engine"], r["workers"], r["n_mags"]): r for r in runs}
    sizes = sorted({r["n_mags"] for r in runs})
    top = sizes[-1]
    speedup = by[("ray", 1, top)]["seconds"] / by[("ray", 2, top)]["seconds"]
    vs_local = by[("local", 1, top)]["seconds"] / by[("ray", 2, top)]["seconds"]
    cost = [by[("ray", 2, n)]["ms_per_mag"] for n in sizes]
    flat_wall = max(cost) / min(cost) - 1
    secs = [by[("ray", 2, n)]["seconds"] for n in sizes]
    incr = [1000 * (secs[i + 1] - secs[i]) / (sizes[i + 1] - sizes[i]) for i in range(len(sizes) - 1)]
    flat = max(incr) / min(incr) - 1 if incr and min(incr) > 0 else (float("nan") if incr else 0.0)
    fits = result.get("fits", {})
    marginal = None
    if fits.get("ray x1", {}).get("per_mag_ms") and fits.get("ray x2", {}).get("per_mag_ms"):
        marginal = fits["ray x1"]["per_mag_ms"] / fits["ray x2"]["per_mag_ms"]
    return {
        "what": "preprocess_bench: 2 Ray workers vs 1 at the largest size (wall clock), cost per MAG over sizes",
        "goal": ">= 1.6x and cost per MAG flat within 15%",
        "value": speedup,
        "met": speedup >= 1.6 and flat <= 0.15,
        "speedup_2_vs_1_ray": speedup,
        "speedup_2_ray_vs_single_process": vs_local,
        "marginal_speedup_from_fit": marginal,
        "sizes": sizes,
        "ray2_ms_per_mag": cost,
        "ray2_incremental_ms_per_mag": incr,
        "flatness": flat,
        "flatness_wall_clock": flat_wall,
        "fits": fits,
        "summary": {"2 vs 1 workers": round(speedup, 2), "2 workers vs single process": round(vs_local, 2),
                    "marginal 2 vs 1 (fit)": round(marginal, 2) if marginal else None,
                    "ms/MAG by size (2 workers)": dict(zip(sizes, cost, strict=True)),
                    "incremental ms/MAG (2 workers)": [round(x, 2) for x in incr],
                    "flatness incremental": round(flat, 3), "flatness wall clock": round(flat_wall, 3)},
    }


def run_figure(name: str, settings, results_dir: Path, docs: Path | None) -> dict:
    if name == "preprocessing":
        return _preprocessing(settings, results_dir, docs)
    mod = importlib.import_module(f"benchmarks.{MODULES.get(name, name)}")
    return mod.run(settings)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smoke-test size (numbers are meaningless)")
    parser.add_argument("--only", nargs="+", choices=FIGURES, help="run only these figures")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads per process")
    parser.add_argument("--results-dir", type=Path, default=None, help="default benchmarks/results")
    parser.add_argument("--docs", type=Path, default=None, help="default docs/benchmarks.md")
    parser.add_argument("--no-docs", action="store_true", help="do not touch the docs file")
    parser.add_argument("--workdir", type=Path, default=None, help="scratch space (default /tmp/magdi_bench)")
    parser.add_argument("--save-baseline", action="store_true",
                        help="also write results/before.json (run this once before optimising)")
    args = parser.parse_args(argv)

    # Threads before torch is imported anywhere: the OpenMP pool size is fixed at first use.
    from benchmarks.common import DOCS, RESULTS_DIR, Settings, machine_info, set_threads

    set_threads(args.threads)
    workdir = args.workdir or Path(os.environ.get("MAGDI_BENCH_WORKDIR", "/tmp/magdi_bench"))
    workdir.mkdir(parents=True, exist_ok=True)
    settings = Settings(quick=args.quick, threads=args.threads, workdir=workdir)
    results_dir = args.results_dir or RESULTS_DIR
    results_dir.mkdir(parents=True, exist_ok=True)
    names = [n for n in FIGURES if not args.only or n in args.only]

    t_start = time.perf_counter()
    machine = machine_info(settings)
    figures: dict[str, dict] = {}
    failed = False
    for name in names:
        t0 = time.perf_counter()
        print(f"[bench] {name} ...", file=sys.stderr, flush=True)
        try:
            fig = run_figure(name, settings, results_dir, None if args.no_docs else (args.docs or DOCS))
        except Exception as err:  # noqa: BLE001 -- recorded, the other figures still run
            traceback.print_exc()
            fig = {"figure": name, "error": f"{type(err).__name__}: {err}"[:2000]}
        failed = failed or ("error" in fig and not fig.get("absent"))  # an absent optional module is fine
        fig["seconds"] = time.perf_counter() - t0
        figures[name] = fig
        (results_dir / f"{name}.json").write_text(json.dumps(fig, indent=2, sort_keys=True) + "\n")
        print(f"[bench] {name} done in {fig['seconds']:.0f} s: value={fig.get('value')} "
              f"met={fig.get('met')}{' ERROR ' + fig['error'] if 'error' in fig else ''}",
              file=sys.stderr, flush=True)

    from benchmarks.report import summary_rows, write_docs

    baseline_path = results_dir / "before.json"
    baseline = json.loads(baseline_path.read_text()) if baseline_path.exists() else None
    summary = {
        "command": "python -m benchmarks" + (" " + " ".join(argv if argv is not None else sys.argv[1:])).rstrip(),
        "wall_s": time.perf_counter() - t_start,
        "machine": machine,
        "loadavg_end": list(os.getloadavg()),
        "figures": figures,
    }
    summary["table"] = summary_rows(figures, None if args.save_baseline else baseline)
    (results_dir / "summary.json").write_text(json.dumps(summary, indent=2, sort_keys=True) + "\n")
    if args.save_baseline:
        baseline_path.write_text(json.dumps(summary, indent=2, sort_keys=True) + "\n")
    if not args.no_docs:
        write_docs(args.docs or DOCS, summary)
    print(f"[bench] all done in {summary['wall_s'] / 60:.1f} min; results in {results_dir}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
