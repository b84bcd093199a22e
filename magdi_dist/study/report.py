"""The human end of a study: a table of cells, each size's mean +- sd over its seeds, the paired
comparison of two variants (study.paired), where the plot is, how to look at it in MLflow."""

from __future__ import annotations

from io import StringIO

LOSS = "eval_ntp_loss"  # the curve's metric (study.curve.LOSS), named here without importing numpy


def _num(value, fmt: str) -> str:
    return "-" if value is None else format(value, fmt)


def _mean_sd(row: dict, key: str, fmt: str, scale: float = 1.0) -> str:
    if row.get(key) is None:
        return "-"
    sd = row.get(f"{key}_sd")
    return format(scale * row[key], fmt) + ("" if sd is None else f" ± {format(scale * sd, fmt)}")


def _seed_table(rows: list[dict]):
    from rich.table import Table

    table = Table(title="mean ± sd over seeds (sample sd; the curve fits the means)")
    for col in ("size", "variant", "lr", "seeds", "params", "held-out NTP loss", "accuracy %"):
        table.add_column(col, justify="left" if col in ("size", "variant") else "right")
    for r in rows:
        table.add_row(str(r["size"]), str(r["variant"]), "-" if r.get("lr") is None else f"{r['lr']:g}",
                      str(len(r.get("seeds") or [])), _num(r.get("params"), ",.0f"),
                      _mean_sd(r, LOSS, ".4f"), _mean_sd(r, "accuracy", ".1f", 100.0))
    return table


def format_summary(summary: dict) -> str:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"study {summary['study']} ({summary['status']})")
    for col in ("cell", "status", "lr", "params", "train FLOPs", "held-out NTP loss", "accuracy (95% CI)", "wall s",
                "version"):
        table.add_column(col, justify="left" if col in ("cell", "status") else "right")
    for c in summary["cells"]:
        ci = c.get("accuracy_ci")
        acc = _num(c.get("accuracy"), ".1%")
        if ci:
            acc += f" [{ci[0]:.0%}, {ci[1]:.0%}]"
        lr = "-" if c.get("lr") is None else f"{c['lr']:g}" + (" *" if c.get("best_lr") else "")
        table.add_row(c["cell"], c["status"], lr, _num(c.get("params"), ",.0f"), _num(c.get("flops"), ".2e"),
                      _num(c.get("eval_ntp_loss"), ".3f"), acc, _num(c.get("wall_time_s"), ".0f"),
                      c.get("model_version") or "-")
    buf = StringIO()
    console = Console(file=buf, width=120)
    console.print(table)
    if any(c.get("lr") is not None for c in summary["cells"]):
        console.print("* the size's best lr by held-out NTP loss: its point on the scaling curve")
    if summary.get("seeds") and summary.get("curve_rows"):
        console.print(_seed_table(summary["curve_rows"]))
    paired = summary.get("paired")
    if paired and paired.get("error"):
        console.print(f"[red]paired comparison {paired['a']} vs {paired['b']} failed:[/red] {paired['error']}")
    elif paired:
        from magdi_dist.study.paired import markdown

        console.print(markdown(paired), markup=False, highlight=False, soft_wrap=True)  # a table: no wrapping
    for c in summary["cells"]:
        if c["status"] == "failed":
            console.print(f"[red]cell {c['cell']} failed:[/red] {c['error']}")
        elif c.get("tracking_error"):  # trained and evaluated; MLflow lacks part of it until a re-run
            console.print(f"[red]cell {c['cell']} not tracked (re-run the study to repair):[/red] "
                          f"{c['tracking_error']}")
    if summary.get("tracking_error"):
        console.print(f"[red]study not tracked (re-run the study to repair):[/red] {summary['tracking_error']}")
    return buf.getvalue()


def mlflow_ui_command(tracking_uri: str) -> str:
    """The command that shows this store in a browser (sqlite stores are read directly)."""
    if tracking_uri.startswith("sqlite:"):
        return f"mlflow ui --backend-store-uri {tracking_uri} --host 127.0.0.1 --port 5000"
    return f"open {tracking_uri} in a browser"
