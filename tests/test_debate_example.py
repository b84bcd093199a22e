"""The shipped example of a generated discussion set (docs/examples/debate_strategyqa_smollm2.jsonl: 16
StrategyQA questions, 3 SmolLM2-135M-Instruct agents x 2 Du rounds from a local ``transformers serve``,
written by ``magdi-dist debate``): it passes ``inspect --strict``, its MAGs carry their provenance, each
content hash recomputes, and it has the correct/incorrect mix that training pairs need."""

from __future__ import annotations

import copy
import hashlib
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


def independent_sha(raw: dict) -> str:
    """The content hash from its definition (debate/build.py ``content_sha256``'s docstring), on the raw
    JSON line, not through the MAG model or the function that wrote it: sha256 of the sorted-key, ASCII
    JSON of id, task, question, gold, options, each response's [agent, round, reasoning, answer] in file
    order, and ``generation`` without the hash itself."""
    content = {
        "id": raw["id"], "task": raw["task"], "question": raw.get("question"), "gold_answer": raw["gold_answer"],
        "options": raw.get("options"),
        "responses": [[r["agent"], r["round"], r.get("reasoning"), r.get("answer")] for r in raw["responses"]],
        "generation": {k: v for k, v in raw["generation"].items() if k != "content_sha256"},
    }  # fmt: skip
    return hashlib.sha256(json.dumps(content, sort_keys=True, ensure_ascii=True).encode()).hexdigest()


def test_example_provenance_and_content_hashes(tmp_path):
    raws = [json.loads(line) for line in EXAMPLE.read_text(encoding="utf-8").splitlines()]
    mags = read_mags([EXAMPLE]).mags
    assert len(raws) == len(mags) == 16
    for raw, mag in zip(raws, mags, strict=True):
        assert mag.generation["generator"] == "magdi-dist debate" and mag.generation["protocol"] == "du"
        assert independent_sha(raw) == raw["generation"]["content_sha256"] == content_sha256(mag)
        for r in mag.responses:
            assert r.meta["usage"]["completion_tokens"] > 0 and r.meta["started_at"] < r.meta["finished_at"]
    # What the hash covers changes it; what the definition leaves out (labels, meta) does not; and the
    # hash the project computes for each edited record is the independent one.
    raw = raws[0]
    for path, value in [(("question",), "?"), (("responses", 2, "reasoning"), "edited"),
                        (("responses", 4, "answer"), "maybe"), (("generation", "run_seed"), 1),
                        (("responses", 0, "label"), "correct"), (("responses", 1, "meta", "seed"), 7)]:
        edited = copy.deepcopy(raw)
        node = edited
        for key in path[:-1]:
            node = node[key]
        node[path[-1]] = value
        (tmp_path / "edited.jsonl").write_text(json.dumps(edited) + "\n", encoding="utf-8")
        (mag,) = read_mags([tmp_path / "edited.jsonl"]).mags
        covered = path[0] != "responses" or path[2] in ("reasoning", "answer")
        assert content_sha256(mag) == independent_sha(edited), path
        assert (independent_sha(edited) != raw["generation"]["content_sha256"]) == covered, path
