"""The one config loader (config.load_yaml_config) behind every kind of config, its one error format,
the CLI's one way to fail on input, and the ``evaluate`` options derived from EvalConfig."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml
from typer.main import get_command
from typer.testing import CliRunner

from magdi_dist.cli import app
from magdi_dist.config import ConfigError, MAGDiConfig, apply_override, load_yaml_config
from magdi_dist.eval.config import EvalConfig, EvalSettings

REPO = Path(__file__).resolve().parents[1]
PACKAGE = REPO / "magdi_dist"


def _debate_tree(tmp_path: Path) -> dict:
    return {"agents": [{"name": "a", "base_url": "http://127.0.0.1:1/v1", "model": "m"}],
            "questions": {"path": "q.jsonl"}, "out": str(tmp_path / "o.jsonl")}


def _study_tree(tmp_path: Path) -> dict:
    return {"name": "s", "base_config": str(REPO / "configs" / "tiny.yaml"), "model_name": "m",
            "sizes": [{"name": "1m", "overrides": {"model.base": "tiny-1m"}}], "output_dir": str(tmp_path / "study")}


def _loaders(tmp_path: Path) -> dict:
    """kind -> (a valid tree of that kind, its loader: path -> config)."""
    from magdi_dist.config import load_config
    from magdi_dist.debate.config import load_debate_config
    from magdi_dist.study.config import load_study

    return {
        "config": ({}, load_config),
        "study config": (_study_tree(tmp_path), load_study),
        "debate config": (_debate_tree(tmp_path), load_debate_config),
        "evaluation config": ({"model": "m", "data": "d.jsonl"},
                              lambda p: load_yaml_config(EvalConfig, p, kind="evaluation config")),
    }


@pytest.mark.parametrize("kind", ["config", "study config", "debate config", "evaluation config"])
def test_every_kind_of_config_reports_errors_in_one_format(tmp_path, kind):
    tree, load = _loaders(tmp_path)[kind]
    load(_write(tmp_path / "ok.yaml", tree))  # valid as written: only the bad key below fails
    path = _write(tmp_path / "bad.yaml", {**tree, "nope": 1, "extra": {"x": 2}})
    with pytest.raises(ConfigError) as err:
        load(path)
    assert str(err.value) == f"invalid {kind} ({path}): extra: unknown key; nope: unknown key"
    with pytest.raises(ConfigError, match=re.escape(f"{kind} file not found: {tmp_path / 'none.yaml'}")):
        load(tmp_path / "none.yaml")
    listed = _write(tmp_path / "list.yaml", [1, 2])
    with pytest.raises(ConfigError, match=re.escape(f"{listed}: the top level of a {kind} must be a mapping")):
        load(listed)
    broken = tmp_path / "broken.yaml"
    broken.write_text("a: [1,\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load(broken)


def _write(path: Path, tree) -> Path:
    path.write_text(yaml.safe_dump(tree))
    return path


def test_overrides_then_values_layer_over_the_file(tmp_path):
    path = _write(tmp_path / "e.yaml", {"model": "m", "data": "d.jsonl", "limit": 5, "k": 2, "temperature": 0.5})
    cfg = load_yaml_config(EvalConfig, path, ["limit=7", "exclude=[a.jsonl]"], values={"k": 3})
    assert (cfg.limit, cfg.exclude, cfg.k, cfg.temperature) == (7, ["a.jsonl"], 3, 0.5)
    tree = {"train": {"lr": 1.0}}
    for bad, why in [("train.lr", "must look like key.sub=value"), ("train..lr=1", "empty key component"),
                     ("train.lr.x=1", "train.lr is a value"), ("train.lr=[1", "the value is not YAML")]:
        with pytest.raises(ConfigError, match=re.escape(why)):
            apply_override(tree, bad)
    with pytest.raises(ConfigError, match=r"^invalid config: train\.lr: learning rate must be > 0, got -1\.0$"):
        load_yaml_config(MAGDiConfig, None, ["train.lr=-1"])


def test_the_loader_and_its_error_format_are_written_once():
    sources = {p: p.read_text() for p in PACKAGE.rglob("*.py")}
    for definition in ("def apply_override(", "def _format_errors(", "def load_yaml_config("):
        where = [str(p.relative_to(REPO)) for p, text in sources.items() if definition in text]
        assert where == ["magdi_dist/config_loader.py"], (definition, where)
    # (MAG records have their own messages: mag/readers; a config's come from config_loader.py alone)
    again = [str(p.relative_to(REPO)) for p, text in sources.items()
             if "except ValidationError" in text and "ConfigError" in text]
    assert again == ["magdi_dist/config_loader.py"], again


def test_every_eval_config_field_is_an_evaluate_option():
    params = {p.name: p for p in get_command(app).commands["evaluate"].params}
    for name, field in EvalConfig.model_fields.items():
        flag = "--" + name.replace("_", "-")
        assert flag in params[name].opts, (name, params[name].opts)
        assert " ".join(field.description.replace("``", "").split()) in params[name].help
    readme = (REPO / "README.md").read_text()  # the flags the README shows still exist
    used = set(re.findall(r"magdi-dist evaluate[^\n]*", readme))
    flags = {o for p in params.values() for o in p.opts}
    assert used and all(set(re.findall(r"--[a-z-]+", line)) <= flags for line in used), used


def test_evaluate_layers_file_overrides_and_flags(tmp_path, monkeypatch):
    import magdi_dist.recipes.evaluate as recipe

    seen = []
    summary = {"accuracy": 1.0, "ci95_low": 0.5, "ci95_high": 1.0, "n": 1, "tokens_per_question": 3.0,
               "extraction_failure_rate": 0.0, "out": "o"}
    monkeypatch.setattr(recipe, "evaluate", lambda cfg: seen.append(cfg) or summary)
    path = _write(tmp_path / "e.yaml", {"model": "m", "data": "d.jsonl", "limit": 5, "max_new_tokens": 9,
                                        "batch_size": 3, "exclude": ["a.jsonl"]})
    runner = CliRunner()
    result = runner.invoke(app, ["evaluate", "--config", str(path), "limit=6", "batch_size=4", "--batch-size", "2",
                                 "--exclude", "b.jsonl", "--no-progress"])
    assert result.exit_code == 0, result.output
    cfg = seen[-1]
    # file < overrides < flags; what no one gave keeps the file's value or the default
    assert (cfg.limit, cfg.batch_size, cfg.exclude, cfg.max_new_tokens, cfg.progress, cfg.k) == (
        6, 2, ["b.jsonl"], 9, False, 1)
    result = runner.invoke(app, ["evaluate", "--model", "m", "--data", "d.jsonl", "--exclude", "x", "--exclude", "y"])
    assert result.exit_code == 0 and seen[-1].exclude == ["x", "y"] and seen[-1].max_new_tokens == 256


def test_study_evaluation_is_evaluates_settings(tmp_path):
    from magdi_dist.study.config import StudyEval

    assert issubclass(StudyEval, EvalSettings)
    e = StudyEval(limit=4, k=2, temperature=0.5, worker_gpus=1.0)
    run = e.for_run(model="m", data="d.jsonl", seed=7)
    assert (run.limit, run.k, run.temperature, run.worker_gpus, run.seed, run.max_new_tokens) == (4, 2, 0.5, 1.0, 7, 64)
    with pytest.raises(ValueError, match="temperature > 0"):
        StudyEval(k=3)


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["study", "--config", "{study}"], "invalid study config ({study}): nope: unknown key"),
        (["debate", "--config", "{debate}"], "invalid debate config ({debate}): nope: unknown key"),
        (["evaluate", "--config", "{eval}"], "invalid evaluation config ({eval}): nope: unknown key"),
        (["evaluate", "--model", "m", "--data", "d.jsonl", "--k", "0"], "invalid evaluation config: <root>: k must"),
        (["evaluate", "--data", "d.jsonl"], "invalid evaluation config: model: Field required"),
        (["inspect", "{missing}"], "no such file"),
        (["submit", "--address", "http://127.0.0.1:1", "--config", "{eval}", "--env", "X"], "--env takes KEY=VALUE"),
    ],
)
def test_input_errors_are_one_error_line_and_exit_2(tmp_path, argv, message):
    files = {"study": _write(tmp_path / "study.yaml", {**_study_tree(tmp_path), "nope": 1}),
             "debate": _write(tmp_path / "debate.yaml", {**_debate_tree(tmp_path), "nope": 1}),
             "eval": _write(tmp_path / "eval.yaml", {"model": "m", "data": "d.jsonl", "nope": 1}),
             "missing": tmp_path / "missing.jsonl"}
    result = CliRunner().invoke(app, [a.format(**files) for a in argv])
    assert result.exit_code == 2, result.output
    assert result.stdout == "" and result.stderr.count("\n") == 1, result.stderr
    assert result.stderr.startswith("error: ") and message.format(**files) in result.stderr, result.stderr
