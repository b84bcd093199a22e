"""What ``magdi-dist inspect`` reports about a set of teacher files: sizes, agents, rounds, how often
the teachers are right per round, and how many MAGs can feed the contrastive objective at all (a
"mixed" MAG has both a correct and an incorrect response, i.e. a positive/negative pair)."""

from __future__ import annotations

import io
from collections import Counter
from typing import TYPE_CHECKING

from magdi_dist.mag.clean import DEFAULT_PATTERNS, CleanStats, clean_mag
from magdi_dist.mag.schema import Label

if TYPE_CHECKING:
    from magdi_dist.mag.readers import ReadResult


def summarize(result: ReadResult, clean_patterns: tuple[str, ...] | None = DEFAULT_PATTERNS) -> dict:
    """JSON-ready statistics of a ``read_mags`` result (MAGs are graded and completed), with what chain
    cleaning (``clean_patterns``; None: not reported) would change, per file."""
    agents: dict[str, None] = {}  # insertion-ordered set: first appearance across files
    labels: Counter[str] = Counter({label.text: 0 for label in Label})
    tasks: Counter[str] = Counter()
    formats: Counter[str] = Counter()
    files: dict[str, None] = {}
    correct_by_round: Counter[int] = Counter()
    answered_by_round: Counter[int] = Counter()
    rounds = responses = nodes = mixed = 0
    cleaning: dict[str, CleanStats] = {}
    for mag in result.mags:
        if clean_patterns is not None:
            file = mag.source.file if mag.source is not None else "-"
            cleaning.setdefault(file, CleanStats()).add(clean_mag(mag, tuple(clean_patterns))[1])
        tasks[mag.task] += 1
        if mag.source is not None:
            formats[mag.source.format] += 1
            files.setdefault(mag.source.file, None)
        rounds = max(rounds, mag.num_rounds)
        seen = set()
        for r in mag.responses:
            agents.setdefault(r.agent, None)
            nodes += 1
            label = r.label if r.label is not None else (Label.MISSING if r.missing else None)
            if label is None:  # ungraded input: count the node, not its class
                continue
            labels[label.text] += 1
            if label is Label.MISSING:
                continue
            responses += 1
            answered_by_round[r.round] += 1
            correct_by_round[r.round] += label is Label.CORRECT
            seen.add(label)
        mixed += {Label.CORRECT, Label.INCORRECT} <= seen
    per_round = [(correct_by_round[k] / answered_by_round[k]) if answered_by_round[k] else None for k in range(rounds)]
    return {
        "records_in": result.records_in,
        "mags": len(result.mags),
        "rejected": len(result.rejected),
        "responses": responses,
        "nodes": nodes,
        "agents": list(agents),
        "rounds": rounds,
        "responses_per_round": [answered_by_round[k] for k in range(rounds)],
        "per_round_accuracy": per_round,
        "mixed_mags": mixed,
        "label_counts": dict(labels),
        "tasks": dict(tasks),
        "formats": dict(formats),
        "files": list(files),
        "cleaning": {file: stats.as_dict() for file, stats in cleaning.items()},
    }


def format_table(summary: dict) -> str:
    """The summary as a readable table (rich), for the CLI's non-JSON output."""
    from rich.console import Console
    from rich.table import Table

    table = Table(title="MAG statistics", show_header=True, header_style="bold")
    table.add_column("metric")
    table.add_column("value", overflow="fold")
    mags = summary["mags"]
    mixed_share = f" ({summary['mixed_mags'] / mags:.0%})" if mags else ""
    rows = [
        ("records read", summary.get("records_in", mags + summary["rejected"])),
        ("MAGs", mags),
        ("rejected", summary["rejected"]),
        ("responses (non-missing)", summary["responses"]),
        ("nodes (incl. missing)", summary["nodes"]),
        ("agents", ", ".join(summary["agents"]) or "-"),
        ("rounds (max)", summary["rounds"]),
        ("mixed MAGs (correct + incorrect)", f"{summary['mixed_mags']}{mixed_share}"),
        ("labels", ", ".join(f"{k} {v}" for k, v in summary["label_counts"].items())),
    ]
    if summary.get("tasks"):
        rows.append(("tasks", ", ".join(f"{k} {v}" for k, v in summary["tasks"].items())))
    for k, acc in enumerate(summary["per_round_accuracy"]):
        n = summary.get("responses_per_round", [None] * (k + 1))[k]
        shown = "-" if acc is None else f"{acc:.1%}"
        rows.append((f"round {k} accuracy", shown + (f" of {n}" if n is not None else "")))
    for file, c in summary.get("cleaning", {}).items():
        rows.append((f"cleaned chains ({file})", f"{c['changed']} of {c['chains']} changed, "
                                                 f"{c['chars_removed']} characters removed"))
    for name, value in rows:
        table.add_row(name, str(value))
    buf = io.StringIO()
    Console(file=buf, width=100, force_terminal=False, color_system=None).print(table)
    return buf.getvalue()
