"""The registered student as MLflow serves it: logged from code (no pickle), with an input example and a
signature from ``predict``'s type hints, and ``mlflow models serve -m models:/NAME@champion`` answering
over HTTP exactly as ``mlflow.pyfunc.load_model(...).predict`` does.

Real parts only: an embedded sqlite store, the ``mlflow models serve`` CLI on a free 127.0.0.1 port in
its own process group (stopped by that group's id), plain HTTP requests.
"""

from __future__ import annotations

import json
import logging
import socket
import time
import urllib.error
import urllib.request
import warnings
from pathlib import Path

import pandas as pd
import pytest
from mlflow.types import DataType
from mlflow_server import fresh_sqlite_store, make_tiny_student, mlflow_globals_restored, serving_model

from magdi_dist.track import cell_run, ensure_experiment, log_cell_result, start_study_run, use_tracking
from magdi_dist.track.registry import EXAMPLE_QUESTION, log_student, set_champion

MAX_NEW_TOKENS = 6
QUESTIONS = ["Is the sky blue?", "What is 2 + 3? Think step by step."]
# What MLflow says when a model is logged the old way; none of it may appear any more.
OLD_WAY = ("CloudPickle", "input example was not provided", "Add type hints", "python_model.pkl")


class _Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


def _post(url: str, payload: dict) -> list[str]:
    request = urllib.request.Request(f"{url}/invocations", data=json.dumps(payload).encode(),
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=120) as resp:
        return json.loads(resp.read())["predictions"]


@pytest.fixture
def registered(tmp_path):
    """Two versions of one model; the champion is version 1, so serving the alias is not 'latest'."""
    with mlflow_globals_restored():
        uri = fresh_sqlite_store(tmp_path / "out")
        parent = start_study_run(uri, ensure_experiment(uri, "serve"), "serve", {}, rank=0)
        mlflow_log = logging.getLogger("mlflow")  # MLflow's loggers do not propagate: listen on them
        records = _Records()
        mlflow_log.addHandler(records)
        try:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                for seed, loss in [(0, 1.0), (1, 2.0)]:
                    student = make_tiny_student(tmp_path / f"student-{seed}", seed=seed)
                    with cell_run(uri, parent, "serve", f"c{seed}", {"seed": seed}, rank=0) as run_id:
                        log_cell_result(uri, run_id, rank=0, eval_metrics={"eval_loss": loss})
                        log_student(student, tracking_uri=uri, run_id=run_id, model_name="served", study="serve",
                                    cell=f"c{seed}", rank=0, metrics={"eval_loss": loss},
                                    primary_metric="eval_loss", max_new_tokens=MAX_NEW_TOKENS)
        finally:
            mlflow_log.removeHandler(records)
        assert int(set_champion("served", "eval_loss", tracking_uri=uri).version) == 1
        said = records.messages + [str(w.message) for w in caught]
        yield uri, said


def test_student_is_logged_from_code_with_example_and_type_hint_signature(registered):
    import mlflow
    import yaml

    uri, said = registered
    assert not [m for m in said if any(old in m for old in OLD_WAY)], said
    with use_tracking(uri):
        local = Path(mlflow.artifacts.download_artifacts("models:/served@champion"))
        model = mlflow.pyfunc.load_model("models:/served@champion")
    flavor = yaml.safe_load((local / "MLmodel").read_text())["flavors"]["python_function"]
    assert flavor["loader_module"] == "mlflow.pyfunc.loaders.code_model"
    assert Path(flavor["model_code_path"]).name == "student_code.py" and (local / "student_code.py").is_file()
    assert "python_model" not in flavor and not (local / "python_model.pkl").exists()
    assert model.metadata._is_signature_from_type_hint()
    assert model.metadata.signature.outputs.input_types() == [DataType.string]
    assert model.metadata.signature.inputs.input_types() == [DataType.string]
    params = {p.name: p.default for p in model.metadata.signature.params}
    assert params == {"max_new_tokens": MAX_NEW_TOKENS}
    example = json.loads((local / "serving_input_example.json").read_text())
    assert example == {"inputs": [EXAMPLE_QUESTION], "params": {"max_new_tokens": MAX_NEW_TOKENS}}
    # The type hints convert a one-column frame; anything not a list of strings is refused.
    assert model.predict(pd.DataFrame({"question": QUESTIONS})) == model.predict(QUESTIONS)
    with pytest.raises(mlflow.exceptions.MlflowException):
        model.predict([{"question": 1}])


def test_mlflow_models_serve_answers_as_load_model_predicts(registered, tmp_path):
    import mlflow

    uri, _ = registered
    with use_tracking(uri):
        model = mlflow.pyfunc.load_model("models:/served@champion")
        expected = model.predict(QUESTIONS)
        short = model.predict(QUESTIONS, params={"max_new_tokens": 2})
    assert len(expected) == 2 and all(isinstance(a, str) for a in expected) and short != expected
    with serving_model("models:/served@champion", uri, tmp_path / "serve") as url:
        port = int(url.rsplit(":", 1)[1])
        assert _post(url, {"inputs": QUESTIONS}) == expected
        assert _post(url, {"inputs": QUESTIONS, "params": {"max_new_tokens": 2}}) == short
        # A type-hinted model is served the ``inputs`` way only, and a list of strings only: the rest
        # is refused with MLflow's reason, not guessed at.
        for bad, reason in [({"dataframe_split": {"columns": ["question"], "data": [[QUESTIONS[0]]]}}, "'inputs' key"),
                            ({"inputs": [{"question": 1}]}, "list[str]")]:
            with pytest.raises(urllib.error.HTTPError) as refused:
                _post(url, bad)
            assert refused.value.code == 400 and reason in refused.value.read().decode()
    # Stopped by its process group: soon nothing listens on the port (a killed process's socket
    # closes once the kernel has reaped it, which is not instant on a loaded machine).
    deadline = time.monotonic() + 30
    while _listening(port) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert not _listening(port)


def _listening(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0
