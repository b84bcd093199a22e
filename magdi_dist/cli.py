"""The ``magdi-dist`` command. Each command is a thin wrapper: the work lives in the library, imported
lazily so ``magdi-dist --help`` starts fast and a command only pays for the stack it uses.

Every command fails on bad input the same way, here, not in each command: the project's input errors
become one ``error: ...`` line on stderr and exit code 2 (config.exit_on_error); anything else is a bug
and keeps its traceback."""

from __future__ import annotations

import sys
from pathlib import Path

import typer
from typer.core import TyperGroup

from magdi_dist.cli_options import options_from
from magdi_dist.eval.config import EvalConfig
from magdi_dist.results.command import results_app

# The input errors, by module and name: checking an exception then imports nothing (a class whose module
# was never imported cannot have raised). FileNotFoundError is how the readers and loaders say an input
# file or model is missing.
_INPUT_ERRORS = (("magdi_dist.config", "ConfigError"), ("magdi_dist.eval.errors", "EvalInputError"),
                 ("magdi_dist.mag.errors", "MAGInputError"), ("magdi_dist.debate.store", "StateError"),
                 ("magdi_dist.model.shapes", "ShapeError"), ("magdi_dist.model.sources", "ModelSourceError"),
                 ("magdi_dist.train.checkpoint", "CheckpointMismatch"), ("magdi_dist.launch.lock", "RunLocked"),
                 ("magdi_dist.train.checkpoint", "CheckpointSpaceError"), ("magdi_dist.train.loop", "TrainingDiverged"),
                 ("magdi_dist.data.shards", "ShardIntegrityError"), ("builtins", "FileNotFoundError"))


def _is_input_error(err: BaseException) -> bool:
    kinds = tuple(getattr(sys.modules[m], name) for m, name in _INPUT_ERRORS if m in sys.modules)
    return isinstance(err, kinds)


class _Commands(TyperGroup):
    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except Exception as err:
            if not _is_input_error(err):
                raise
            from magdi_dist.config import exit_on_error

            exit_on_error(err)


app = typer.Typer(
    help="Distil multi-agent interaction graphs (MAGDi) into one student LM with DeepSpeed ZeRO on Ray.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    cls=_Commands,
)


# --- commands are added below, one block each ---------------------------------------------------


@app.command()
def preprocess(
    config: Path = typer.Option(..., "--config", "-c", help="Run config YAML (the one train uses)."),
    overrides: list[str] | None = typer.Argument(None, help="Overrides key.sub=value."),
    address: str | None = typer.Option(None, "--address",
                                       help="Ray cluster (default: RAY_ADDRESS, else an embedded local Ray)."),
    local: bool = typer.Option(False, "--local", help="Run the same stages in this process, without Ray."),
    verify: bool = typer.Option(False, "--verify", help="Afterwards, check that every shard lies inside the shards "
                                                       "folder and re-hash it against the manifest (exit 2 if not)."),
    storage: str | None = typer.Option(None, "--storage", envvar="MAGDI_STORAGE",
                                       help="Root for relative output paths (default: the working directory)."),
) -> None:
    """Teacher transcripts -> graded MAGs -> pair rows with tokens and frozen node features -> Parquet
    shards + manifest.json (Ray Data). Re-runs only process new or changed inputs. The same preparation
    every training launcher runs first."""
    from magdi_dist.config import load_config, with_durable_outputs

    cfg = with_durable_outputs(load_config(config, list(overrides or [])), storage)
    from magdi_dist.launch.stage import prepare
    from magdi_dist.preprocess.manifest import verify_manifest

    # A unit record naming a shard outside the folder is refused while preparing (ShardIntegrityError).
    report, where = prepare(cfg, engine="local" if local else "ray", address=address)
    typer.echo(f"manifest: {where}")
    if verify:
        problems = verify_manifest(report.manifest)
        for problem in problems:  # one line per shard, each naming the manifest, the field and the file
            typer.echo(f"error: {problem}", err=True)
        if problems:
            raise typer.Exit(2)  # input to fix, as every command's
        typer.echo("verify: every shard is inside the shards folder and matches the sha256 recorded at write time")


@app.command()
def submit(
    address: str = typer.Option(..., "--address", help="Ray job API, e.g. http://127.0.0.1:8265."),
    config: Path = typer.Option(..., "--config", "-c", help="Run config YAML inside the working dir."),
    job: str = typer.Option("train", "--job", help="Entrypoint ray_jobs/<job>.py: preprocess, train, study or debate."),
    args: list[str] | None = typer.Argument(None, help="Passed on to the entrypoint (after --), e.g. "
                                                       "-- --workers 2 --storage /shared/magdi."),
    env: list[str] = typer.Option([], "--env", help="KEY=VALUE for the job's processes (repeatable)."),
    working_dir: Path = typer.Option(Path("."), "--working-dir", help="Uploaded to the cluster."),
    follow: bool = typer.Option(True, "--follow/--no-follow", help="Stream the logs until the job ends."),
) -> None:
    """Submit a ray_jobs/ entrypoint to a Ray cluster (job SDK) and stream its logs; exit 0 on SUCCEEDED."""
    from magdi_dist.config import ConfigError
    from magdi_dist.launch.jobs import submit as submit_job

    bad = [item for item in env if "=" not in item]
    if bad:
        raise ConfigError(f"--env takes KEY=VALUE, got {', '.join(map(repr, bad))}")
    pairs = dict(item.split("=", 1) for item in env)
    _, status = submit_job(address, job, config, list(args or []), working_dir=working_dir, env=pairs,
                           follow=follow)
    ok = status == "SUCCEEDED" if follow else status not in ("FAILED", "STOPPED")
    raise typer.Exit(0 if ok else 1)


@app.command()
def train(
    config: Path | None = typer.Option(None, "--config", "-c", help="Run config YAML (see configs/tiny.yaml)."),
    overrides: list[str] | None = typer.Argument(None, help="Overrides key.sub=value, e.g. train.lr=3e-4."),
    resume: bool = typer.Option(True, "--resume/--no-resume",
                                help="Resume from the newest complete checkpoint in train.output_dir; "
                                     "--no-resume deletes its checkpoints and starts over."),
    nproc_per_node: int = typer.Option(1, "--nproc-per-node", min=1,
                                       help="Local ranks to start with torchrun (1: train in this process)."),
    keys: bool = typer.Option(False, "--keys", help="List every config key with its default and meaning."),
    storage: str | None = typer.Option(None, "--storage", envvar="MAGDI_STORAGE",
                                       help="Root for relative output paths (default: the working directory)."),
    ray_preprocess: bool = typer.Option(False, "--ray-preprocess",
                                        help="Prepare the shards with Ray Data instead of in this process."),
) -> None:
    """Train the MAGDi student with DeepSpeed ZeRO. The config is validated and the shards prepared
    before any rank starts; under torchrun / the deepspeed launcher run ``python -m
    magdi_dist.launch.rank`` on every rank instead."""
    if keys:
        from magdi_dist.config import describe_config

        typer.echo(describe_config())
        raise typer.Exit(0)
    if config is None:
        raise typer.BadParameter("--config is required", param_hint="--config")
    import os

    from magdi_dist.recipes.train import run

    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        typer.echo("error: `magdi-dist train` is the driver; under torchrun or the deepspeed launcher run "
                   "`python -m magdi_dist.launch.rank` on every rank", err=True)
        raise typer.Exit(2)
    # A bad config, a checkpoint of another run or a folder another run holds: one error line, exit 2
    # (the commands' shared handler), before any rank starts.
    code = run(config, list(overrides or []), storage=storage, resume=resume, nproc_per_node=nproc_per_node,
               ray_preprocess=ray_preprocess)
    raise typer.Exit(code)


@app.command()
def plan(
    config: Path | None = typer.Option(None, "--config", "-c", help="Run config YAML (default: the defaults)."),
    overrides: list[str] | None = typer.Argument(None, help="Overrides key.sub=value, as for train."),
    nodes: int = typer.Option(1, "--nodes", min=1, help="Nodes of the planned cluster."),
    gpus_per_node: int | None = typer.Option(None, "--gpus-per-node", min=1,
                                             help="Devices (ranks) per node (default: this machine's GPUs, "
                                                  "or 1 rank without a GPU)."),
    device_memory_gb: float | None = typer.Option(None, "--device-memory-gb", min=0.001,
                                                  help="GiB per device: plan for these GPUs instead of "
                                                       "this machine's."),
    node_memory_gb: float | None = typer.Option(None, "--node-memory-gb", min=0.001,
                                                help="Host RAM GiB per node (default: this machine's; not "
                                                     "checked for a cluster given by --device-memory-gb)."),
    as_json: bool = typer.Option(False, "--json", help="Print the plan as one JSON object."),
) -> None:
    """Capacity plan before launch: per ZeRO preset, the memory of model states per device and per node
    (DeepSpeed's estimators), this config's activations, and which presets fit. Builds no weights."""
    import contextlib
    import json
    import sys

    from magdi_dist.config import load_config
    from magdi_dist.launch.plan import format_plan, planned_hardware
    from magdi_dist.launch.plan import plan as make_plan

    cfg = load_config(config, list(overrides or []))
    with contextlib.redirect_stdout(sys.stderr):  # DeepSpeed logs to stdout when imported: --json parses
        result = make_plan(cfg, planned_hardware(nodes, gpus_per_node, device_memory_gb, node_memory_gb))
    typer.echo(json.dumps(result) if as_json else format_plan(result))


@app.command()
@options_from(EvalConfig, envvars={"tracking_uri": "MLFLOW_TRACKING_URI"})
def evaluate(
    config: Path | None = typer.Option(None, "--config", "-c", help="Evaluation config YAML: the options "
                                       "above as keys (max_new_tokens: 64). Overrides and options win over it."),
    overrides: list[str] | None = typer.Argument(None, help="Overrides key=value, e.g. limit=50 (after --config, "
                                                 "before the options)."),
    as_json: bool = typer.Option(False, "--json", help="Print the summary as one JSON object."),
    flags: dict | None = None,
) -> None:
    """Evaluate an exported student on held-out questions (accuracy with 95% CI, cost, self-consistency),
    never on its own training questions; here, on Ray actors, or through OpenAI-compatible servers
    (--base-url). Exit 1 when a server left samples unanswered (run again: only they are asked)."""
    import json

    from magdi_dist.config import load_yaml_config
    from magdi_dist.eval.errors import EvalIncomplete
    from magdi_dist.recipes.evaluate import evaluate as run_evaluation

    cfg = load_yaml_config(EvalConfig, config, list(overrides or []), kind="evaluation config", values=flags)
    try:
        summary = run_evaluation(cfg)
    except EvalIncomplete as err:  # samples no endpoint answered: logged, and the next run asks only them
        typer.echo(f"error: {err}", err=True)
        raise typer.Exit(1) from None
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
def debate(
    config: Path | None = typer.Option(None, "--config", "-c", help="Debate config YAML (configs/debate_gsm8k.yaml)."),
    overrides: list[str] | None = typer.Argument(None, help="With --config: overrides key.sub=value, e.g. rounds=3."),
    questions: Path | None = typer.Option(None, help="Without --config: questions (any file `evaluate` reads)."),
    limit: int | None = typer.Option(None, help="Without --config: only the first N questions."),
    agents: int | None = typer.Option(None, help="Without --config: agents on the one endpoint [3]; agent i has "
                                      "seed i and temperature 0.7 + 0.1 i."),
    rounds: int | None = typer.Option(None, help="Without --config: discussion rounds [2]."),
    base_url: str | None = typer.Option(None, help="Without --config: OpenAI-compatible API root (.../v1)."),
    model: str | None = typer.Option(None, help="Without --config: model name the endpoint serves."),
    max_tokens: int | None = typer.Option(None, help="Without --config: completion budget per turn [256]."),
    protocol: str | None = typer.Option(None, help="Without --config: du (Du et al.) or reconcile [du]."),
    api_key_env: str | None = typer.Option(None, help="Without --config: env variable holding the API key."),
    extra_body: str | None = typer.Option(None, help="Without --config: JSON object of extra request fields "
                                          "(transformers serve samples only with a generation_config: README)."),
    out: Path | None = typer.Option(None, help="Without --config: output MAG JSONL."),
    workers: int | None = typer.Option(None, help="Without --config: Ray workers [1] (with --config: workers=N)."),
    address: str | None = typer.Option(None, "--address", help="Ray cluster (default: RAY_ADDRESS, else a local Ray)."),
    storage: str | None = typer.Option(None, "--storage", envvar="MAGDI_STORAGE",
                                       help="Root for relative output paths (default: the working directory)."),
    keys: bool = typer.Option(False, "--keys", help="List every config key with its default and meaning."),
    as_json: bool = typer.Option(False, "--json", help="Print the summary as one JSON object."),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Show a progress bar (stderr)."),
) -> None:
    """Generate teacher discussions: agents on OpenAI-compatible endpoints discuss each question (sharded over
    Ray), every turn is logged as it arrives, graded MAGs are written for `preprocess`. Re-running asks only
    what is missing. Exit 1 while questions are incomplete (failed requests are logged; run again)."""
    import json

    from magdi_dist.config import describe_config
    from magdi_dist.debate.config import DebateConfig, config_from_cli

    if keys:
        typer.echo(describe_config(DebateConfig))
        raise typer.Exit(0)
    simple = {"questions": questions, "limit": limit, "agents": agents, "rounds": rounds, "base_url": base_url,
              "model": model, "max_tokens": max_tokens, "protocol": protocol, "api_key_env": api_key_env,
              "extra_body": extra_body, "out": out, "workers": workers}
    cfg = config_from_cli(config, list(overrides or []), simple, storage)
    from magdi_dist.debate.run import run_debate
    from magdi_dist.debate.summary import format_summary

    summary = run_debate(cfg, address=address, progress=progress)

    typer.echo(json.dumps(summary, sort_keys=True) if as_json else format_summary(summary))
    raise typer.Exit(0 if summary["incomplete"] == 0 else 1)


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
    from magdi_dist.mag.readers import read_mags

    return read_mags(paths, format=format, task=task, strict=strict, rejects=rejects)


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


_VERBOSE = ("Show Ray's, the workers' and the libraries' logs here, as they come (by default they go to a "
            "log file in the output folder, and only the phases, their progress and the results show).")


@app.command()
def study(
    config: Path = typer.Option(..., "--config", help="Study YAML (sizes x variants over one training config)."),
    overrides: list[str] = typer.Argument(None, help="key=value overrides of the study file."),
    as_json: bool = typer.Option(False, "--json", help="Print the study summary as JSON."),
    storage: str | None = typer.Option(None, "--storage", envvar="MAGDI_STORAGE",
                                       help="Root for a relative output_dir (default: the working directory)."),
    verbose: bool = typer.Option(False, "--verbose", help=_VERBOSE),
) -> None:
    """Run a scaling study: train, evaluate and register every cell; log the curve; crown the champion."""
    import json

    from magdi_dist.recipes.study import run_study
    from magdi_dist.study.config import load_study
    from magdi_dist.study.report import format_summary, mlflow_ui_command
    from magdi_dist.study.terminal import study_terminal

    spec = load_study(config, overrides or [], storage)
    with study_terminal("magdi-dist study", Path(spec.output_dir) / "study.log", verbose=verbose) as term:
        summary = run_study(spec, progress=term.progress)
        if as_json:
            term.print(json.dumps(summary, default=str))
        else:
            term.print(format_summary(summary))
            term.print(f"scaling plot: {summary['plot']}")
            term.print(f"look at it:   {mlflow_ui_command(summary['tracking_uri'])}")
    raise typer.Exit(0 if summary["status"] == "FINISHED" else 1)


@app.command()
def demo(
    out: Path = typer.Option(Path("runs/demo"), help="Output folder (data, shards, checkpoints, MLflow store)."),
    quick: bool = typer.Option(False, help="CI-sized variant: two small students, a few steps."),
    lr_sweep: bool = typer.Option(False, "--lr-sweep", help="Sweep each size's learning rate (how the demo's "
                                  "rates were chosen; about 30 minutes on 2 cores)."),
    verbose: bool = typer.Option(False, "--verbose", help=_VERBOSE),
) -> None:
    """The whole pipeline on SYNTHETIC data: preprocess with Ray, train 3 student sizes with DeepSpeed
    ZeRO-2 on 2 CPU ranks, log the study in MLflow, register the champion and ask it a question."""
    import time

    from magdi_dist.recipes.study import run_study
    from magdi_dist.study.demo import ask_champion, load_demo
    from magdi_dist.study.report import format_summary, mlflow_ui_command
    from magdi_dist.study.terminal import study_terminal

    started = time.perf_counter()
    study = load_demo(out, quick=quick, lr_sweep=lr_sweep)
    with study_terminal("magdi-dist demo", out / "demo.log", verbose=verbose) as term:
        summary = run_study(study, progress=term.progress)
        term.print(format_summary(summary))
        if summary["champion"]:
            question, answer = ask_champion(summary)  # loading it logs too: inside the quiet block
            term.print(f"champion {summary['champion']['uri']} (version {summary['champion']['version']})")
            term.print(f"  Q: {question}\n  A: {answer}")
        term.print(f"scaling plot: {summary['plot']}")
        term.print(f"look at it:   {mlflow_ui_command(summary['tracking_uri'])}")
        term.print(f"demo wall time: {time.perf_counter() - started:.0f} s")
    raise typer.Exit(0 if summary["status"] == "FINISHED" else 1)


@app.command()
def bench(
    quick: bool = typer.Option(False, help="Smoke-test size (about 3 minutes; the numbers mean nothing). Skips "
                               "the peer figure unless --only names it."),
    only: list[str] = typer.Option([], "--only", help="Run only this figure or experiment (repeatable): padding, "
                                   "step_overhead, mfu, data_path, checkpoint, zero_memory, preprocessing, "
                                   "peers (this project vs TRL's SFTTrainer on SmolLM2; needs the bench extra); "
                                   "or an experiment (not in the default run; benchmarks/figure.py EXPERIMENTS)."),
    threads: int = typer.Option(1, help="torch intra-op threads per process."),
    save_baseline: bool = typer.Option(False, help="Also write benchmarks/results/before.json."),
    docs: bool = typer.Option(True, "--docs/--no-docs", help="Rewrite the table in docs/benchmarks.md."),
    results_dir: Path | None = typer.Option(None, "--results-dir", help="Where the JSON goes (default: "
                                            "benchmarks/results of the checkout you are in; --quick: under "
                                            "/tmp/magdi_bench)."),
) -> None:
    """Run the performance benchmarks (benchmarks/, a source checkout only) of the checkout the working
    directory is in: JSON in its benchmarks/results/, the table in its docs/benchmarks.md; same as
    ``python -m benchmarks`` run there (this command runs exactly that, with the checkout as working
    directory)."""
    import subprocess
    import sys

    # The checkout the user stands in, not the one this package was installed from: with magdi_dist
    # installed from another clone, that clone's code would run and its results be overwritten.
    here = Path.cwd().resolve()
    root = next((d for d in (here, *here.parents) if (d / "benchmarks" / "__main__.py").is_file()), None)
    if root is None:
        typer.echo(f"error: {here} is not in a source checkout (the benchmarks ship only with the repository, "
                   "not with the package): run `magdi-dist bench` inside a clone.", err=True)
        raise typer.Exit(2)
    argv = (["--quick"] if quick else []) + (["--only", *only] if only else []) + ["--threads", str(threads)]
    argv += (["--save-baseline"] if save_baseline else []) + ([] if docs else ["--no-docs"])
    argv += ["--results-dir", str(results_dir.resolve())] if results_dir else []
    # ``-m`` puts the working directory first on sys.path: the checkout's benchmarks and its magdi_dist
    # run, whichever clone this process's package came from.
    proc = subprocess.run([sys.executable, "-m", "benchmarks", *argv], cwd=root, check=False)
    raise typer.Exit(proc.returncode)


app.add_typer(results_app, name="results")


if __name__ == "__main__":
    app()
