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
def evaluate(
    model: str = typer.Option(..., help="Exported student directory, or an MLflow URI (models:/NAME@ALIAS)."),
    data: Path = typer.Option(..., help="Held-out questions: GSM8K/StrategyQA/ECQA/ARC/AQuA file or a MAG file."),
    format: str | None = typer.Option(None, "--format", help="gsm8k, strategyqa, ecqa, arc, aqua or mag."),
    task: str | None = typer.Option(None, help="Force the task family used for grading."),
    k: int = typer.Option(1, "--k", help="Samples per question; k > 1 is self-consistency (majority vote)."),
    temperature: float = typer.Option(0.0, help="0 = greedy; > 0 samples (needed for k > 1)."),
    max_new_tokens: int = typer.Option(256, help="Generation budget per sample."),
    limit: int | None = typer.Option(None, help="Evaluate only the first N questions."),
    seed: int = typer.Option(0, help="Per-sample seeds derive from (seed, question index, sample)."),
    batch_size: int = typer.Option(8, help="Questions per generate call (each with its k samples)."),
    out: Path | None = typer.Option(None, help="Output folder (predictions.jsonl, summary.json)."),
    as_json: bool = typer.Option(False, "--json", help="Print the summary as one JSON object."),
    teachers: Path | None = typer.Option(None, help="MAG file: compare the teachers' tokens per question."),
    ray_address: str | None = typer.Option(None, help="Shard over Ray actors on this cluster ('auto' ok)."),
    workers: int = typer.Option(1, help="Ray actors; > 1 without --ray-address starts a local Ray."),
    worker_cpus: float = typer.Option(1.0, help="CPUs per Ray actor."),
    worker_gpus: float = typer.Option(0.0, help="GPUs per Ray actor (1 on a GPU cluster)."),
    mlflow_run_id: str | None = typer.Option(None, help="Log metrics and predictions to this MLflow run."),
    tracking_uri: str | None = typer.Option(None, envvar="MLFLOW_TRACKING_URI", help="MLflow tracking URI."),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Show a progress bar (stderr)."),
) -> None:
    """Evaluate an exported student on held-out questions (accuracy with 95% CI, cost, self-consistency)."""
    import json

    from magdi_dist.eval.errors import EvalInputError
    from magdi_dist.eval.runner import EvalConfig
    from magdi_dist.eval.runner import evaluate as run_evaluation
    from magdi_dist.mag.errors import MAGInputError

    cfg = EvalConfig(
        model=model, data=str(data), format=format, task=task, k=k, temperature=temperature,
        max_new_tokens=max_new_tokens, limit=limit, seed=seed, batch_size=batch_size,
        out=str(out) if out else None, teachers=str(teachers) if teachers else None,
        ray_address=ray_address, workers=workers, worker_cpus=worker_cpus, worker_gpus=worker_gpus,
        mlflow_run_id=mlflow_run_id,
        tracking_uri=tracking_uri, progress=progress,
    )  # fmt: skip
    try:
        summary = run_evaluation(cfg)
    except (EvalInputError, MAGInputError, FileNotFoundError) as err:  # bad data, options or model
        typer.echo(f"error: {err}", err=True)
        raise typer.Exit(2) from None
    if as_json:
        typer.echo(json.dumps(summary, sort_keys=True))
    else:
        lo, hi = summary["ci95_low"], summary["ci95_high"]
        typer.echo(
            f"accuracy {summary['accuracy']:.4f} (95% CI {lo:.4f}-{hi:.4f}) on n={summary['n']}, "
            f"{summary['tokens_per_question']:.1f} tokens/question, extraction failures "
            f"{summary['extraction_failure_rate']:.2%}; wrote {summary['out']}"
        )


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
