"""An ablation's report: one row per variant of a study, and each variant against the others on the
same questions (paired: the difference of accuracies with its 95% interval and McNemar's p).

    python -m magdi_dist.study.ablation runs/study_smollm2_ablation/study_summary.json \
        --plot docs/smollm2_ablation.png

prints the Markdown tables of docs/results.md and draws the plot. Everything is recomputed from the
study's files (``study_summary.json``, each cell's ``eval/predictions.jsonl`` and ``metrics.jsonl``).
A study of several sizes or seeds is compared size by size instead (``study.paired``: two variants,
paired per question and per seed; ``--compare A B``, default the pair the study compared).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from magdi_dist.eval.stats import paired_difference


def _records(cell_dir: Path) -> list[dict]:
    path = cell_dir / "eval" / "predictions.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _metrics(cell_dir: Path) -> tuple[list[dict], dict | None]:
    """(training steps, the last held-out evaluation) from the cell's metrics.jsonl."""
    rows = [json.loads(line) for line in (cell_dir / "metrics.jsonl").read_text().splitlines()
            if line.startswith("{")]
    evals = [r for r in rows if "eval_ntp_loss" in r]
    return [r for r in rows if "loss" in r and "eval_loss" not in r], (evals[-1] if evals else None)


def tokens_per_s(steps: list[dict], key: str = "tokens") -> float | None:
    """Tokens per second of training over the logged steps: ``tokens`` counts every row the LM ran
    (negatives and extra nodes for MAGDi, positives only for NTP-only), ``positive_tokens`` the positive
    chains alone, the same work in every variant. None when a step lacks the count (a metrics.jsonl
    written before it was logged)."""
    if not steps or any(key not in s for s in steps):
        return None
    return sum(s[key] for s in steps) / sum(s["step_time_s"] for s in steps)


def cell_row(variant: str, cell_dir: str | Path, wall_s: float | None = None) -> dict:
    """One variant's row from its cell folder (``train.output_dir``): held-out loss and step figures
    from ``metrics.jsonl``, accuracy from ``eval/`` when the cell has been evaluated (else None)."""
    cell_dir = Path(cell_dir)
    steps, heldout = _metrics(cell_dir)
    step_times = sorted(s["step_time_s"] for s in steps)
    row = {"variant": variant, "steps": len(steps), "eval_ntp_loss": heldout["eval_ntp_loss"] if heldout else None,
           "step_s": step_times[len(step_times) // 2] if step_times else None,
           "positive_tokens_per_s": tokens_per_s(steps, "positive_tokens"), "tokens_per_s": tokens_per_s(steps),
           "wall_s": wall_s, "accuracy": None}
    summary = cell_dir / "eval" / "summary.json"
    if summary.is_file():
        ev = json.loads(summary.read_text())
        records = _records(cell_dir)
        row.update(accuracy=ev["accuracy"], ci=(ev["ci95_low"], ev["ci95_high"]), n=ev["n"],
                   extraction_failures=ev["extraction_failure_rate"], tokens_per_answer=ev["tokens_per_sample"],
                   teacher_tokens_per_question=(ev.get("efficiency") or {}).get("teacher_tokens_per_question"),
                   correct=[bool(r["correct"]) for r in records], questions=[r["id"] for r in records])
    return row


def ablation_rows(summary: dict) -> list[dict]:
    """One row per cell of a study that ran (finished or skipped), in study order."""
    return [cell_row(c["variant"], Path(c["export_dir"]).parent, c["wall_time_s"])
            for c in summary["cells"] if c["status"] != "failed" and c.get("export_dir")]


def _fmt(value, spec: str, none: str = "-") -> str:
    return none if value is None else format(value, spec)


def markdown(rows: list[dict]) -> str:
    head = ("| variant | steps | held-out NTP loss | accuracy (95% CI) | no answer extracted | tokens per answer "
            "| answer / teacher discussion tokens | step (median, s) | positive-chain tokens/s | tokens/s (all rows) "
            "| cell wall time (s) |\n"
            "| --- | ---: | ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    lines = [head]
    for r in rows:
        if r["accuracy"] is None:
            acc = "not evaluated yet | - | - | -"
        else:
            ratio = (r["tokens_per_answer"] / r["teacher_tokens_per_question"]
                     if r["tokens_per_answer"] and r["teacher_tokens_per_question"] else None)
            acc = (f"{r['accuracy']:.1%} [{r['ci'][0]:.1%}, {r['ci'][1]:.1%}] (n={r['n']}) "
                   f"| {r['extraction_failures']:.1%} | {_fmt(r['tokens_per_answer'], '.0f')} | {_fmt(ratio, '.2f')}")
        lines.append(f"| {r['variant']} | {r['steps']} | {_fmt(r['eval_ntp_loss'], '.4f')} | {acc} "
                     f"| {_fmt(r['step_s'], '.1f')} | {_fmt(r['positive_tokens_per_s'], '.0f')} "
                     f"| {_fmt(r['tokens_per_s'], '.0f')} | {_fmt(r['wall_s'], '.0f')} |")
    return "\n".join(lines)


def comparisons(rows: list[dict]) -> str:
    """Every pair of variants, paired on the same questions."""
    lines = ["| a vs b | accuracy a - b (95% CI) | only a right | only b right | McNemar p |",
             "| --- | --- | ---: | ---: | ---: |"]
    rows = [r for r in rows if r["accuracy"] is not None]
    for i, a in enumerate(rows):
        for b in rows[i + 1:]:
            if a["questions"] != b["questions"]:
                raise ValueError(f"{a['variant']} and {b['variant']} were evaluated on different questions")
            d = paired_difference(b["correct"], a["correct"])
            lines.append(f"| {b['variant']} vs {a['variant']} | {d['difference']:+.1%} "
                         f"[{d['ci95_low']:+.1%}, {d['ci95_high']:+.1%}] | {d['only_a']} | {d['only_b']} "
                         f"| {d['mcnemar_p']:.3f} |")
    return "\n".join(lines)


def plot(rows: list[dict], path: str | Path, title: str) -> Path:
    """Accuracy with its Wilson interval and held-out NTP loss, one bar per variant (Agg, no pyplot)."""
    from matplotlib.figure import Figure

    rows = [r for r in rows if r["accuracy"] is not None]
    names = [r["variant"] for r in rows]
    fig = Figure(figsize=(10, 4), layout="constrained")
    acc_ax, loss_ax = fig.subplots(1, 2)
    acc = [100 * r["accuracy"] for r in rows]
    err = [[a - 100 * r["ci"][0] for a, r in zip(acc, rows, strict=True)],
           [100 * r["ci"][1] - a for a, r in zip(acc, rows, strict=True)]]
    acc_ax.bar(names, acc, yerr=err, capsize=6, color="#4c72b0")
    acc_ax.set_ylabel("GSM8K test accuracy, % (95% Wilson CI)")
    acc_ax.set_title(f"accuracy, n={rows[0]['n']} clean questions")
    loss_ax.bar(names, [r["eval_ntp_loss"] or 0 for r in rows], color="#dd8452")
    loss_ax.set_ylabel("held-out NTP loss (per token)")
    loss_ax.set_title("teachers' correct chains of held-out questions")
    fig.suptitle(title)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    return path


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("summary", nargs="?", help="study_summary.json of the ablation study")
    parser.add_argument("--cell", nargs=2, action="append", metavar=("VARIANT", "DIR"), default=[],
                        help="a cell folder to report instead of a study summary (repeatable)")
    parser.add_argument("--plot", help="write the plot (PNG) here")
    parser.add_argument("--compare", nargs=2, metavar=("A", "B"), help="the two variants compared per size")
    args = parser.parse_args(argv)
    if args.summary:
        summary = json.loads(Path(args.summary).read_text())
        cells = [c for c in summary["cells"] if c["status"] != "failed"]
        pair = args.compare or [(summary.get("paired") or {}).get(k) for k in ("a", "b")]
        if len({c["size"] for c in cells}) > 1 or any(c.get("seed") is not None for c in cells):
            from magdi_dist.study.paired import compare_cells
            from magdi_dist.study.paired import markdown as paired_markdown

            if None in pair:
                parser.error("a study of several sizes or seeds is compared per size: name the pair, --compare A B")
            print(paired_markdown(compare_cells(cells, *pair)))
            return
        rows, title = ablation_rows(summary), f"{summary['study']}: MAGDi ablation"
    else:
        rows, title = [cell_row(variant, folder) for variant, folder in args.cell], "MAGDi ablation"
    print(markdown(rows) + "\n\n" + comparisons(rows))
    if args.plot and any(r["accuracy"] is not None for r in rows):
        plot(rows, args.plot, title)


if __name__ == "__main__":
    main()
