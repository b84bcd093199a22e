"""``magdi-dist results``: collect a run's raw files into docs/results/, and regenerate the documents'
generated blocks from them (a sub-command group of its own, added to the CLI by ``magdi_dist.cli``)."""

from __future__ import annotations

from pathlib import Path

import typer

results_app = typer.Typer(help="Results anyone can re-derive: collect a run's raw files into docs/results/, "
                          "and regenerate every generated table and plot of the documents from them.",
                          invoke_without_command=True)
_ROOT = typer.Option(None, "--root", help="The checkout whose docs/ to use (default: the one the working "
                     "directory is in).")


def _results_root(root: Path | None) -> Path:
    from magdi_dist.results.docs import checkout

    return checkout(root or Path.cwd(), explicit=root is not None)


@results_app.callback()
def results(
    ctx: typer.Context,
    check: bool = typer.Option(False, "--check", help="Regenerate in memory only; exit 1 with a unified diff "
                               "when a document differs from what its raw files give."),
    root: Path | None = _ROOT,
) -> None:
    """Regenerate the blocks between <!-- results:NAME:KIND --> and <!-- /results --> in README.md and
    docs/ from docs/results/NAME/ (tables and text; plots are redrawn but never compared)."""
    if ctx.invoked_subcommand is not None:
        return
    from magdi_dist.config import exit_on_error
    from magdi_dist.results import docs
    from magdi_dist.results.files import ResultsError

    try:
        where = _results_root(root)
        if check:
            diffs = docs.check(where)
            for text in diffs:
                typer.echo(text, nl=False)
            if diffs:
                typer.echo(f"error: {len(diffs)} document(s) differ from docs/results/: run `magdi-dist results`",
                           err=True)
            raise typer.Exit(1 if diffs else 0)
        for doc in docs.write(where):
            typer.echo(f"regenerated {doc.relative_to(where)}")
    except ResultsError as err:
        exit_on_error(err)


@results_app.command("collect")
def results_collect(
    src: Path = typer.Argument(..., help="A finished (or partly finished) study's or the demo's output folder."),
    name: str = typer.Option(..., "--name", help="Collect into docs/results/NAME/."),
    extra: list[Path] = typer.Option([], "--extra", help="A text file to keep beside the cells (repeatable): "
                                     "the run's output, /usr/bin/time -v output, uptime before and after."),
    study: str | None = typer.Option(None, "--study", help="The study's name, when the store holds several."),
    tracking_uri: str | None = typer.Option(None, "--tracking-uri", help="The study's MLflow store (default: "
                                            "SRC/mlflow/mlflow.db)."),
    max_mb: float | None = typer.Option(None, "--max-mb", min=0.0, help="Refuse a collection larger than this, "
                                        "in MiB (default: results.collect.MAX_MB, a few MiB)."),
    replace: bool = typer.Option(False, "--replace", help="Drop what docs/results/NAME held before (a re-run "
                                 "that replaces the last one); by default earlier cells are kept."),
    root: Path | None = _ROOT,
) -> None:
    """Copy the small raw files of SRC (summary, YAMLs, fit, per cell its evaluation, predictions, metrics
    and resolved config) into docs/results/NAME/, with each cell's commit from its MLflow run; never
    checkpoints, exports or weights. Re-running adds the cells that finished since."""
    from magdi_dist.config import exit_on_error
    from magdi_dist.results.collect import collect
    from magdi_dist.results.files import ResultsError

    try:
        report = collect(src, name, _results_root(root), extras=list(extra), study=study,
                         tracking_uri=tracking_uri, replace=replace,
                         **({} if max_mb is None else {"max_mb": max_mb}))
    except ResultsError as err:
        exit_on_error(err)
    typer.echo(f"{report['dest']}: study {report['study']}, {report['files']} files, "
               f"{report['bytes'] / 2**20:.2f} MiB; added {', '.join(report['added']) or 'no cell'}"
               + (f"; updated {', '.join(report['updated'])}" if report["updated"] else ""))
    for cell, status in sorted(report["unfinished"].items()):
        typer.echo(f"  not collected: {cell} (its latest run is {status})")
