"""The shipped example of a generated discussion set (docs/examples/debate_strategyqa_smollm2.jsonl: 16
StrategyQA questions, 3 SmolLM2-135M-Instruct agents x 2 Du rounds from a local ``transformers serve``,
written by ``magdi-dist debate``): it passes ``inspect --strict``, its MAGs carry their provenance, each
content hash recomputes, and it has the correct/incorrect mix that training pairs need."""

from __future__ import annotations

import json
from pathlib import Path

from typer.testing import CliRunner

from magdi_dist.cli import app
from magdi_dist.debate.build import content_sha256
from magdi_dist.mag.readers import read_mags

EXAMPLE = Path(__file__).resolve().parents[1] / "docs" / "examples" / "debate_strategyqa_smollm2.jsonl"


def test_example_passes_inspect_strict_with_pairs_to_train_on():
    result = CliRunner().invoke(app, ["inspect", "--strict", "--json", str(EXAMPLE)])
    assert result.exit_code == 0, result.stderr
    summary = json.loads(result.stdout)
    assert (summary["mags"], summary["rejected"], summary["rounds"], summary["tasks"]) == (16, 0, 2, {"yes_no": 16})
    assert summary["agents"] == ["agent0", "agent1", "agent2"] and summary["mixed_mags"] >= 8


def test_example_provenance_and_content_hashes():
    mags = read_mags([EXAMPLE]).mags
    for mag in mags:
        assert mag.generation["generator"] == "magdi-dist debate" and mag.generation["protocol"] == "du"
        assert content_sha256(mag) == mag.generation["content_sha256"]
        for r in mag.responses:
            assert r.meta["usage"]["completion_tokens"] > 0 and r.meta["started_at"] < r.meta["finished_at"]
    edited = mags[0].model_copy(update={"question": mags[0].question + "?"})
    assert content_sha256(edited) != mags[0].generation["content_sha256"]
