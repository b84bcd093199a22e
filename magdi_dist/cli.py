"""The ``magdi-dist`` command. Each command is a thin wrapper: the work lives in the library, imported
lazily so ``magdi-dist --help`` starts fast and a command only pays for the stack it uses."""

from __future__ import annotations

from pathlib import Path

import typer

app = typer.Typer(
    help="Distil multi-agent interaction graphs (MAGDi) into one student LM with DeepSpeed ZeRO on Ray.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)


# --- commands are added below, one block each ---------------------------------------------------


@app.command()
def synth(
    out: Path = typer.Option(..., help="Output MAG JSONL file."),
    n: int = typer.Option(200, help="Number of questions (MAGs)."),
    agents: int = typer.Option(3, help="Agents per discussion."),
    rounds: int = typer.Option(3, help="Rounds per discussion."),
    seed: int = typer.Option(0, help="Seed: the same arguments always write the same file."),
    early_stop: bool = typer.Option(False, help="End a discussion at consensus (later nodes missing)."),
) -> None:
    """Write a deterministic SYNTHETIC MAG set (arithmetic word problems) for demos and tests."""
    from magdi_dist.mag.readers import write_mags_jsonl
    from magdi_dist.mag.synth import synth_mags

    mags = synth_mags(n, agents=agents, rounds=rounds, seed=seed, early_stop=early_stop)
    write_mags_jsonl(mags, out)
    typer.echo(f"wrote {len(mags)} SYNTHETIC MAGs to {out}")


def _read(paths, format, task, strict, rejects):
    from magdi_dist.mag.errors import MAGInputError
    from magdi_dist.mag.readers import read_mags

    try:
        return read_mags(paths, format=format, task=task, strict=strict, rejects=rejects)
    except MAGInputError as err:
        typer.echo(f"error: {err}", err=True)
        raise typer.Exit(2) from None


@app.command()
def inspect(
    paths: list[Path] = typer.Argument(..., help="Teacher transcript files (any supported format)."),
    format: str | None = typer.Option(None, "--format", help="Force a format instead of detecting it."),
    task: str | None = typer.Option(None, help="Force a task family (yes_no, multiple_choice, numeric, math)."),
    strict: bool = typer.Option(True, "--strict/--lenient", help="Fail on the first bad record, or reject it."),
    rejects: Path | None = typer.Option(None, help="Lenient mode: write bad records here (JSONL)."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object instead of a table."),
) -> None:
    """Read MAG files and print counts, agents, rounds and per-round accuracy."""
    import json

    from magdi_dist.mag.stats import format_table, summarize

    summary = summarize(_read(paths, format, task, strict, rejects))
    typer.echo(json.dumps(summary, sort_keys=True) if as_json else format_table(summary))


@app.command()
def convert(
    paths: list[Path] = typer.Argument(..., help="Teacher transcript files (any supported format)."),
    out: Path = typer.Option(..., help="Output generic MAG JSONL file."),
    format: str | None = typer.Option(None, "--format", help="Force a format instead of detecting it."),
    task: str | None = typer.Option(None, help="Force a task family."),
    strict: bool = typer.Option(True, "--strict/--lenient", help="Fail on the first bad record, or reject it."),
    rejects: Path | None = typer.Option(None, help="Lenient mode: write bad records here (JSONL)."),
) -> None:
    """Convert teacher transcripts to the canonical generic MAG JSONL (graded)."""
    from magdi_dist.mag.readers import write_mags_jsonl

    result = _read(paths, format, task, strict, rejects)
    write_mags_jsonl(result.mags, out)
    typer.echo(f"wrote {len(result.mags)} MAGs to {out} ({len(result.rejected)} rejected)")


if __name__ == "__main__":
    app()
