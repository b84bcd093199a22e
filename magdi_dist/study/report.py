"""The human end of a study: a table of cells, where the plot is, how to look at it in MLflow."""

from __future__ import annotations

from io import StringIO


def _num(value, fmt: str) -> str:
    return "-" if value is None else format(value, fmt)


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
    for c in summary["cells"]:
        if c["status"] == "failed":
            console.print(f"[red]cell {c['cell']} failed:[/red] {c['error']}")
    return buf.getvalue()


def mlflow_ui_command(tracking_uri: str) -> str:
    """The command that shows this store in a browser (sqlite stores are read directly)."""
    if tracking_uri.startswith("sqlite:"):
        return f"mlflow ui --backend-store-uri {tracking_uri} --host 127.0.0.1 --port 5000"
    return f"open {tracking_uri} in a browser"
