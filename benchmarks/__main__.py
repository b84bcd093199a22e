"""``python -m benchmarks`` (or ``magdi-dist bench``): run every figure, write benchmarks/results/*.json
and the generated table in docs/benchmarks.md. ``--quick`` is the smoke-test size (tiny-1m only, one
repetition): it exercises the code paths quickly but its numbers mean nothing. In ``--quick`` the peer
figure runs only when named (``--quick --only peers``: a tiny Llama in place of SmolLM2, still four
processes importing DeepSpeed and TRL, about a minute on its own), and the preprocessing figure skips
the real student (SmolLM2 in every feature actor).

``benchmarks/results/summary.json`` is the source of truth: one entry per goal (value, goal, met, date,
commit). A run of some figures (``--only``) replaces their entries and keeps the others' from the
previous summary, each with the date and commit of the run that measured it.

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

FIGURES = ("padding", "step_overhead", "mfu", "data_path", "checkpoint", "zero_memory", "preprocessing", "peers")
MODULES = {"checkpoint": "checkpoint_bench"}


def _preprocessing(settings, results_dir: Path) -> dict:
    """benchmarks/preprocess_bench.py (pipeline: single process vs Ray with 1 and 2 actors, repeated;
    the real student's frozen-feature cost), through its ``main(argv)``, raw runs in results_dir."""
    from benchmarks.preprocess_bench import main as preprocess_main

    argv = ["--workdir", str(settings.workdir / "preprocess"), "--results-dir", str(results_dir)]
    if settings.quick:
        argv += ["--sizes", "60", "120", "--reps", "1", "--real-sizes"]
    result = preprocess_main(argv)
    goal = result["goals"][0]
    return {"figure": "preprocessing", "what": "preprocess_bench: single process vs Ray Data with 1 and 2 feature "
            "actors, repeated; SmolLM2 frozen-feature cost per MAG", "value": goal["value"], "goal": goal["goal"],
            "met": goal["met"], "goals": result["goals"], "pipeline": _strip(result["pipeline"]),
            "real": _strip(result.get("real")), "raw": "results/preprocess.json"}


def _strip(part: dict | None) -> dict | None:
    return None if part is None else {k: v for k, v in part.items() if k != "runs"}


def run_figure(name: str, settings, results_dir: Path) -> dict:
    if name == "preprocessing":
        return _preprocessing(settings, results_dir)
    mod = importlib.import_module(f"benchmarks.{MODULES.get(name, name)}")
    return mod.run(settings)


def merge_rows(path: Path, figures: dict, rows: list[dict], summary: dict) -> list[dict]:
    """This run's goal entries, plus the previous summary's entries (and figure JSON) of the figures
    not run now, in FIGURES order. Mutates ``summary["figures"]`` to hold every figure shown."""
    prev = json.loads(path.read_text()) if path.is_file() else {}
    old_machine = prev.get("machine", {})
    kept = [r for r in prev.get("table", []) if r.get("figure") not in figures]
    for r in kept:  # entries written before entries carried their own date and commit
        r.setdefault("date", old_machine.get("date", "?"))
        r.setdefault("commit", old_machine.get("git_commit", "?"))
    for name, fig in prev.get("figures", {}).items():
        if name not in figures and any(r.get("figure") == name for r in kept):
            summary["figures"][name] = fig
    order = {n: i for i, n in enumerate(FIGURES)}
    return sorted(kept + rows, key=lambda r: order.get(r.get("figure"), len(order)))


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
    names = list(args.only) if args.only else [n for n in FIGURES if not (args.quick and n == "peers")]
    names = [n for n in FIGURES if n in names]

    t_start = time.perf_counter()
    machine = machine_info(settings)
    figures: dict[str, dict] = {}
    failed = False
    for name in names:
        t0 = time.perf_counter()
        print(f"[bench] {name} ...", file=sys.stderr, flush=True)
        try:
            fig = run_figure(name, settings, results_dir)
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
    rows = summary_rows(figures, None if args.save_baseline else baseline, machine)
    for row in rows:
        row["loadavg_start"] = machine["loadavg_start"][0]
    summary["table"] = merge_rows(results_dir / "summary.json", figures, rows, summary)
    (results_dir / "summary.json").write_text(json.dumps(summary, indent=2, sort_keys=True) + "\n")
    if args.save_baseline:
        baseline_path.write_text(json.dumps(summary, indent=2, sort_keys=True) + "\n")
    if not args.no_docs:
        write_docs(args.docs or DOCS, summary)
    print(f"[bench] all done in {summary['wall_s'] / 60:.1f} min; results in {results_dir}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
