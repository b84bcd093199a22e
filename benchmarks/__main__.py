"""``python -m benchmarks`` (or ``magdi-dist bench``): run the figures (benchmarks/figure.py), write
results/<figure>.json, results/summary.json and the generated table in docs/benchmarks.md.

Where: results go to ``--results-dir``, by default benchmarks/results of the source checkout the
working directory is in (not the one ``magdi_dist`` was installed from); the docs to docs/benchmarks.md
of that checkout. ``--quick`` is the smoke-test size (tiny-1m only, one repetition): it exercises the
code paths quickly but its numbers mean nothing, so by default it writes under ``--workdir``
(quick-results/, its docs there too) and never over the committed results. In ``--quick`` the peer
figure runs only when named (``--quick --only peers``: a tiny Llama in place of SmolLM2, still four
processes importing DeepSpeed and TRL, about a minute on its own), and the preprocessing figure skips
the real student. The experiments (benchmarks/experiments/, ``--list``) run only when named.

``results/summary.json`` is the source of truth: one entry per goal (value, goal, met, date, commit). A
run of some figures (``--only``) replaces their entries and keeps the others' from the previous
summary, each with the date and commit of the run that measured it.

Figures run one after another in this process (the ZeRO ones launch their own torchrun jobs); a figure
that fails is recorded with its error and the others still run, so one broken figure never costs the
whole 15-minute run, and the exit status is 1. A figure whose optional packages are missing stops the
run before anything starts, with the install command, exit status 2.
"""

from __future__ import annotations

import argparse
import ast
import importlib.util
import json
import os
import sys
import time
import traceback
from pathlib import Path

from benchmarks.figure import EXPERIMENTS, FIGURES, load, module_name, unmet_needs


def merge_rows(path: Path, figures: dict, rows: list[dict], summary: dict) -> list[dict]:
    """This run's goal entries, plus the previous summary's entries (and figure JSON) of the figures
    not run now, in registry order. Mutates ``summary["figures"]`` to hold every figure shown."""
    prev = json.loads(path.read_text()) if path.is_file() else {}
    old_machine = prev.get("machine", {})
    kept = [r for r in prev.get("table", []) if r.get("figure") not in figures]
    for r in kept:  # entries written before entries carried their own date and commit
        r.setdefault("date", old_machine.get("date", "?"))
        r.setdefault("commit", old_machine.get("git_commit", "?"))
    for name, fig in prev.get("figures", {}).items():
        if name not in figures and any(r.get("figure") == name for r in kept):
            summary["figures"][name] = fig
    order = {n: i for i, n in enumerate(FIGURES + EXPERIMENTS)}
    return sorted(kept + rows, key=lambda r: order.get(r.get("figure"), len(order)))


def _listing() -> str:
    def first_line(name: str) -> str:  # read, not imported: a figure's imports may need an extra
        doc = ast.get_docstring(ast.parse(Path(importlib.util.find_spec(module_name(name)).origin).read_text()))
        return (doc or "").split("\n\n")[0].replace("\n", " ")

    lines = ["figures (the default run):"] + [f"  {n}: {first_line(n)}" for n in FIGURES]
    lines += ["experiments (run by name, --only NAME):"] + [f"  {n}: {first_line(n)}" for n in EXPERIMENTS]
    return "\n".join(lines)


def _where(args, workdir: Path) -> tuple[Path, Path] | None:
    """(results dir, docs file): explicit, else the working directory's checkout (--quick: the workdir).
    None outside a checkout without --results-dir."""
    from benchmarks.common import checkout_of

    checkout = checkout_of(Path.cwd())
    results = args.results_dir
    if results is None and args.quick:
        results = workdir / "quick-results"
    elif results is None and checkout is not None:
        results = checkout / "benchmarks" / "results"
    elif results is None:
        return None
    own_docs = checkout is not None and not args.quick and args.results_dir is None
    docs = args.docs or (checkout / "docs" / "benchmarks.md" if own_docs else results / "benchmarks.md")
    return results.resolve(), docs.resolve()


def main(argv: list[str] | None = None) -> int:
    names_all = FIGURES + EXPERIMENTS
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smoke-test size (numbers are meaningless)")
    parser.add_argument("--only", nargs="+", choices=names_all, metavar="NAME",
                        help=f"run only these: figures or experiments ({', '.join(names_all)})")
    parser.add_argument("--list", action="store_true", help="list the figures and experiments, then exit")
    parser.add_argument("--set", nargs="+", default=[], metavar="KEY=VALUE", dest="options",
                        help="a knob of the figures run (their OPTIONS), e.g. --set steps=3 modes=zero_init")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads per process")
    parser.add_argument("--results-dir", type=Path, default=None,
                        help="default: benchmarks/results of the checkout the working directory is in "
                             "(--quick: WORKDIR/quick-results)")
    parser.add_argument("--docs", type=Path, default=None,
                        help="default: docs/benchmarks.md of that checkout (--quick or --results-dir: "
                             "RESULTS_DIR/benchmarks.md)")
    parser.add_argument("--no-docs", action="store_true", help="do not touch the docs file")
    parser.add_argument("--workdir", type=Path, default=None, help="scratch space (default /tmp/magdi_bench)")
    parser.add_argument("--save-baseline", action="store_true",
                        help="also write results/before.json (run this once before optimising)")
    args = parser.parse_args(argv)
    if args.list:
        print(_listing())
        return 0

    # Threads in the environment before any figure module imports torch: OpenMP reads them when loaded.
    from benchmarks.common import thread_env

    thread_env(args.threads)
    names = list(args.only) if args.only else [n for n in FIGURES if not (args.quick and n == "peers")]
    names = [n for n in names_all if n in names]
    modules = {n: load(n) for n in names}
    if unmet := [line for mod in modules.values() for line in unmet_needs(mod)]:
        print("\n".join(f"error: {line}" for line in unmet), file=sys.stderr)
        print("[bench] nothing run: install the above, or leave these figures out (--only the others)",
              file=sys.stderr)
        return 2
    options = dict(kv.split("=", 1) for kv in args.options if "=" in kv)
    known = {k for mod in modules.values() for k in getattr(mod, "OPTIONS", {})}
    if bad := [kv for kv in args.options if "=" not in kv or kv.split("=", 1)[0] not in known]:
        print(f"error: --set {' '.join(bad)}: not KEY=VALUE of a figure run now; theirs: "
              f"{', '.join(sorted(known)) or 'none'}", file=sys.stderr)
        return 2

    workdir = args.workdir or Path(os.environ.get("MAGDI_BENCH_WORKDIR", "/tmp/magdi_bench"))
    if (where := _where(args, workdir)) is None:
        print(f"error: {Path.cwd()} is not in a source checkout of magdi-dist (no benchmarks/ in it or above "
              "it): run from the checkout whose results you want, or pass --results-dir", file=sys.stderr)
        return 2
    results_dir, docs = where

    from benchmarks.common import Settings, machine_info, set_threads

    set_threads(args.threads)
    workdir.mkdir(parents=True, exist_ok=True)
    settings = Settings(quick=args.quick, threads=args.threads, workdir=workdir, options=options)
    results_dir.mkdir(parents=True, exist_ok=True)
    print(f"[bench] results in {results_dir}", file=sys.stderr, flush=True)

    t_start = time.perf_counter()
    machine = machine_info(settings)
    figures: dict[str, dict] = {}
    failed = False
    for name, mod in modules.items():
        t0 = time.perf_counter()
        print(f"[bench] {name} ...", file=sys.stderr, flush=True)
        fig: dict = {}
        try:
            fig = mod.run(settings)
            measured = "error" not in fig and not fig.get("skipped")
            rows = mod.rows(fig) if measured else []
            if measured:
                mod.details(fig)  # a result its own report cannot read fails now, not at the end of the run
        except Exception as err:  # noqa: BLE001 -- recorded, the other figures still run
            traceback.print_exc()
            fig = {**fig, "error": f"{type(err).__name__}: {err}"[:2000]}
            rows = []
        fig.setdefault("figure", name)
        failed = failed or ("error" in fig and not fig.get("absent"))  # an absent optional model is fine
        fig["seconds"] = time.perf_counter() - t0
        figures[name] = fig
        (results_dir / f"{name}.json").write_text(json.dumps(fig, indent=2, sort_keys=True) + "\n")
        shown = "; ".join(f"{r.id}={r.value:.4g}" if isinstance(r.value, int | float) else f"{r.id}={r.value}"
                          for r in rows)
        print(f"[bench] {name} done in {fig['seconds']:.0f} s: {shown}"
              f"{' ERROR ' + fig['error'] if 'error' in fig else ''}", file=sys.stderr, flush=True)

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
        write_docs(docs, summary)
    print(f"[bench] {'done with failures' if failed else 'all done'} in {summary['wall_s'] / 60:.1f} min; "
          f"results in {results_dir}{'' if args.no_docs else f', docs {docs}'}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
