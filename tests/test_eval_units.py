"""Evaluation pieces that need no model: statistics, answer extraction, voting, question files,
finding an export inside downloaded artifacts, and the per-row sampler's independence."""

from __future__ import annotations

import json

import pytest
import torch

from magdi_dist.eval.generate import PerRowSampler, sample_seed
from magdi_dist.eval.loader import ModelNotFoundError, find_hf_dirs
from magdi_dist.eval.questions import QuestionFileError, detect_format, load_questions
from magdi_dist.eval.stats import wilson_interval
from magdi_dist.mag.answers import extract_answer, grade_answer, majority_vote


def test_wilson_interval_matches_hand_computation():
    # 8/10, z = 1.959964: z^2 = 3.841459; denom = 1 + z^2/n = 1.3841459;
    # centre = (0.8 + z^2/(2n)) / denom = 0.99207295 / 1.3841459 = 0.716737;
    # half = z * sqrt(0.8*0.2/10 + z^2/(4n^2)) / denom = 1.959964 * 0.160011 / 1.3841459 = 0.226577
    lo, hi = wilson_interval(8, 10)
    assert lo == pytest.approx(0.716737 - 0.226577, abs=1e-5)
    assert hi == pytest.approx(0.716737 + 0.226577, abs=1e-5)
    assert wilson_interval(0, 12)[0] == 0.0 and wilson_interval(0, 12)[1] == pytest.approx(0.242494, abs=1e-5)
    assert wilson_interval(5, 5)[1] == 1.0
    assert wilson_interval(0, 0) == (0.0, 1.0)


@pytest.mark.parametrize(
    "text, expected",
    [
        ("Step 1: 3 + 4 = 7. So the answer is 7. The answer is 7.", "7"),
        ("The answer is 3.5.", "3.5"),
        ("The answer is $1,000.\nQuestion: next", "$1,000"),
        ("the answer is B) 300. And more", "B) 300"),
        ("The answer is 18 The answer is 19", "18"),  # no full stop: the first statement still wins
        ("So the answer is 9.\nQuestion: Ava has 2 pens.\nAnswer: The answer is 2.", "9"),  # never the rambling
        ("The answer isn't 5.", None),
        ("We get \\boxed{12}", "12"),
        ("Step 1: 3 + 4 = 7.", None),
        ("The answer is .", None),
    ],
)
def test_extract_answer(text, expected):
    assert extract_answer(text) == expected


def test_majority_vote_groups_by_grader_equivalence_and_breaks_ties_by_first_appearance():
    vote = majority_vote("numeric", ["17", "18", "$18.00", None, "17", "18 dollars"])
    assert (vote.answer, vote.count, vote.groups) == ("18", 3, [[0, 4], [1, 2, 5]])
    tie = majority_vote("numeric", ["17", "18", "18.0", "17.00"])  # 2 vs 2: the group seen first wins
    assert (tie.answer, tie.count) == ("17", 2)
    tie_rev = majority_vote("numeric", ["18", "17", "17.00", "18.0"])
    assert tie_rev.answer == "18"
    assert majority_vote("numeric", [None, None]).answer is None
    aqua = ["A)270", "B)300", "C)280", "D)320", "E)315"]
    mc = majority_vote("multiple_choice", ["B", "A", "B)300", "300", "A"], aqua)  # "300" is B's value
    assert (mc.answer, mc.count) == ("B", 3) and grade_answer("multiple_choice", mc.answer, "B", aqua)
    yn = majority_vote("yes_no", ["No.", "yes", "Yes, because", "no", "YES"])
    assert (yn.answer, yn.count) == ("yes", 3)


def test_sample_seeds_depend_only_on_seed_question_and_sample():
    assert sample_seed(0, 5, 1) == sample_seed(0, 5, 1)
    seeds = {sample_seed(s, q, j) for s in (0, 1) for q in range(20) for j in range(4)}
    assert len(seeds) == 160


def test_per_row_sampler_draws_do_not_depend_on_the_other_rows():
    torch.manual_seed(0)
    scores = torch.randn(6, 50)
    seeds = [sample_seed(3, q, 0) for q in range(6)]

    def picks(rows):
        out = [PerRowSampler([seeds[r] for r in rows], 0.8)(None, scores[rows]) for _ in range(5)]
        return torch.stack([o.argmax(-1) for o in out], 1)  # [rows, steps]

    together = picks([0, 1, 2, 3, 4, 5])
    alone = torch.cat([picks([r]) for r in range(6)])
    shuffled = picks([4, 2, 0])
    assert torch.equal(together, alone)
    assert torch.equal(shuffled, together[[4, 2, 0]])
    assert len({tuple(r) for r in together.tolist()}) > 1  # really sampling, not argmax


# --- question files ------------------------------------------------------------------------------

BENCH = {
    "gsm8k/test.jsonl": ("gsm8k", "numeric"),
    "strategyqa/dev.json": ("strategyqa", "yes_no"),
    "ecqa/cqa_data_test.csv": ("ecqa", "multiple_choice"),
    "arc_challenge/test.json": ("arc", "multiple_choice"),
    "aqua/test.json": ("aqua", "multiple_choice"),
}


@pytest.mark.parametrize("rel", sorted(BENCH))
def test_benchmark_files_are_detected_and_read_with_gradable_golds(shared_data, rel):
    fmt, task = BENCH[rel]
    path = shared_data / "benchmarks" / rel
    assert detect_format(path) == fmt
    questions, got = load_questions(path, limit=4)
    assert got == fmt and len(questions) == 4
    assert [q.index for q in questions] == [0, 1, 2, 3]
    for q in questions:
        assert q.task == task and q.question.strip()
        assert grade_answer(q.task, q.gold, q.gold, q.options)  # the gold parses and grades itself right
        if task == "multiple_choice":
            assert len(q.options) >= 3


def test_benchmark_golds_follow_the_teacher_answer_conventions(shared_data):
    b = shared_data / "benchmarks"
    assert load_questions(b / "gsm8k/test.jsonl", limit=1)[0][0].gold == "18"
    sqa = load_questions(b / "strategyqa/dev.json", limit=1)[0][0]
    assert (sqa.id, sqa.gold) == ("e0044a7b4d146d611e73", "no")
    ecqa = load_questions(b / "ecqa/cqa_data_test.csv", limit=1)[0][0]
    assert ecqa.gold == "3" and ecqa.options[2] == "have knowledge"  # q_ans text -> 1-based index
    arc = load_questions(b / "arc_challenge/test.json", limit=1)[0][0]
    assert arc.gold == "3" and arc.options[2] == "Planetary days will become shorter."
    assert arc.question.startswith("An astronomer observes") and "Answer1" not in arc.question
    aqua = load_questions(b / "aqua/test.json", limit=1)[0][0]
    assert aqua.gold == "A" and aqua.options[0].startswith("A)")


def test_mag_files_are_read_through_the_readers(shared_data, tmp_path):
    path = shared_data / "mag" / "magdi_layout" / "ECQA_gpt4o_round_2.json"
    questions, fmt = load_questions(path, limit=3)
    assert fmt == "mag" and len(questions) == 3
    assert questions[0].gold == "4" and len(questions[0].options) == 5
    debate = shared_data / "mag" / "debate_du" / "gsm_3_2_100.json"
    assert detect_format(debate) == "mag"
    bad = tmp_path / "bad.csv"
    bad.write_text("a,b\n1,2\n")
    with pytest.raises(QuestionFileError, match="not ECQA"):
        load_questions(bad)
    with pytest.raises(QuestionFileError, match="unknown data format"):
        load_questions(path, format="nope")


# --- finding the export inside downloaded artifacts -----------------------------------------------


def _touch(path, text="{}"):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def test_find_hf_dirs_in_export_pyfunc_and_transformers_layouts(tmp_path):
    flat = tmp_path / "flat"
    for name in ("config.json", "model.safetensors", "tokenizer.json"):
        _touch(flat / name)
    assert find_hf_dirs(flat).model == flat and find_hf_dirs(flat).tokenizer == flat

    pyfunc = tmp_path / "pyfunc"
    _touch(pyfunc / "MLmodel", "flavors: {}")
    for name in ("config.json", "model.safetensors", "tokenizer_config.json", "tokenizer.json"):
        _touch(pyfunc / "artifacts" / "student" / name)
    assert find_hf_dirs(pyfunc).model == pyfunc / "artifacts" / "student"

    hf_flavour = tmp_path / "transformers"
    _touch(hf_flavour / "model" / "config.json")
    _touch(hf_flavour / "model" / "model.safetensors")
    _touch(hf_flavour / "components" / "tokenizer" / "tokenizer.json")
    dirs = find_hf_dirs(hf_flavour)
    assert (dirs.model, dirs.tokenizer) == (hf_flavour / "model", hf_flavour / "components" / "tokenizer")

    _touch(tmp_path / "empty" / "config.json", json.dumps({"no": "weights"}))
    with pytest.raises(ModelNotFoundError, match="no Hugging Face model"):
        find_hf_dirs(tmp_path / "empty")


@pytest.mark.parametrize(
    "text, kept",
    [
        # a student that rambles into a question of its own is cut before it
        ("Step 1: 3 + 4 = 7. So the answer is 7. Question: Ben has 2 pens. Answer: The answer is 2.",
         "Step 1: 3 + 4 = 7. So the answer is 7."),
        ("Step 1: 3 + 4 = 7.\nQuestion: Ben has 2 pens.", "Step 1: 3 + 4 = 7."),
        ("The answer is 7. Also note that the answer is 8.", "The answer is 7."),
        ("The answer is:\n42\nMore text", "The answer is:\n42"),
        ("The answer is 3.5", "The answer is 3.5"),  # not over yet: "3.5" may go on
        ("Step 1: 3 + 4 = 7", "Step 1: 3 + 4 = 7"),
    ],
)
def test_generation_is_cut_after_its_first_answer(text, kept):
    from magdi_dist.data.prompt import truncate_answer

    assert truncate_answer(text) == kept


def test_stopping_criterion_stops_each_row_at_its_own_answer(tmp_path):
    """Fed one token at a time, as generate does: each row stops at the first token that shows its
    answer is over (the one after "The answer is 4.": "4." alone could still become "4.5"), whatever
    its batch mates do; the text is then cut back to the statement."""
    import torch

    from magdi_dist.data.prompt import truncate_answer
    from magdi_dist.data.tokenizer import train_tokenizer
    from magdi_dist.eval.generate import StopAtAnswer

    texts = ["Step 1: 2 + 2 = 4. The answer is 4. Question: more", "Step 1: 5 - 1 = 4. So 4 it is and so on"]
    tok = train_tokenizer(texts * 20, tmp_path / "tok", vocab_size=300)
    ids = [tok(t, add_special_tokens=False)["input_ids"] for t in texts]
    width = max(map(len, ids))
    rows = torch.tensor([r + [tok.pad_token_id] * (width - len(r)) for r in ids])
    prompt = torch.zeros((2, 3), dtype=torch.long)
    stop = StopAtAnswer(tok, prompt_len=3, rows=2)
    history = [stop(torch.cat([prompt, rows[:, :k]], dim=1), None).tolist() for k in range(1, width + 1)]
    first = stop.stopped_at[0]
    assert first is not None and stop.stopped_at[1] is None and not history[-1][1]
    assert truncate_answer(tok.decode(ids[0][:first])) == "Step 1: 2 + 2 = 4. The answer is 4."
    assert tok.decode(ids[0][: first - 1]).rstrip().endswith("The answer is 4.")  # one token to be sure
    assert "Question" not in tok.decode(ids[0][: first - 1])


def test_registered_student_cuts_its_answer_as_evaluation_does():
    """The pyfunc model loads prompt.py by path (no training stack in a serving env) and cuts its
    generations with the same rule evaluation grades by."""
    from magdi_dist.track.pyfunc_student import resolve_truncate

    text = "Step 1: 3 + 4 = 7. So the answer is 7. The answer is 7.\nQuestion: Ben has 2 pens."
    assert resolve_truncate()(text) == "Step 1: 3 + 4 = 7. So the answer is 7."


_SERVING_ENV = """
import importlib.abc, importlib.util, sys

# What a serving environment lacks (it has MLflow, so pydantic, and the pinned torch/transformers,
# blocked here too: prompt.py must not need them).
BLOCKED = {"torch", "transformers", "torch_geometric", "deepspeed", "ray", "sympy", "math_verify",
           "latex2sympy2_extended", "numpy", "pyarrow", "yaml", "mlflow"}

class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            raise ImportError(f"{name} is not in the serving environment")

sys.meta_path.insert(0, Block())
spec = importlib.util.spec_from_file_location("_magdi_student_prompt", sys.argv[1])
module = importlib.util.module_from_spec(spec)
spec.loader.exec_module(module)
print(module.truncate_answer("So 3 + 4 = 7. The answer is 7. The answer is 8."))
print(module.format_target("3 + 4 = 7", "7"))
"""


def test_prompt_loads_by_path_without_the_training_stack():
    """prompt.py reads and writes the answer statement through magdi_dist.mag.answers; loaded by path
    as the pyfunc model loads it, that import must work with nothing but pydantic installed."""
    import subprocess
    import sys
    from pathlib import Path

    import magdi_dist.data.prompt as prompt

    proc = subprocess.run([sys.executable, "-c", _SERVING_ENV, str(Path(prompt.__file__))],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines() == ["So 3 + 4 = 7. The answer is 7.", "3 + 4 = 7 The answer is 7."]


def test_exclude_drops_every_question_a_training_discussion_holds(shared_data):
    """The shared GSM8K discussions are GSM8K test questions: excluding them leaves 1,010 of 1,319,
    and ``limit`` counts clean questions."""
    from magdi_dist.eval.questions import QuestionFileError, excluded_keys, load_questions
    from magdi_dist.mag.split import contamination_key

    test = shared_data / "benchmarks" / "gsm8k" / "test.jsonl"
    mags = sorted((shared_data / "mag" / "debate_du").glob("gsm*.json"))
    mags.append(shared_data / "mag" / "magdi_layout" / "GSM8k_gpt4o_round_2.json")
    everything, _ = load_questions(test)
    clean, _ = load_questions(test, exclude=mags)
    seen = excluded_keys(mags)
    assert (len(everything), len(seen), len(clean)) == (1319, 309, 1010)
    assert not {contamination_key(q.question) for q in clean} & seen
    first, _ = load_questions(test, exclude=mags, limit=25)
    assert [q.index for q in first] == [q.index for q in clean[:25]]
    with pytest.raises(QuestionFileError, match="no question text"):  # a pickle cannot be matched
        excluded_keys([shared_data / "mag" / "reconcile_pickle" / "GSM8k_round_2.pkl"])


def test_paired_difference_interval_covers_and_mcnemar_matches_a_binomial_test():
    """The paired interval's coverage, simulated: 95% +- noise on correlated pairs at ablation size;
    the McNemar p-value equals scipy's exact binomial test on the discordant questions."""
    import random

    from scipy.stats import binomtest

    from magdi_dist.eval.stats import paired_difference

    rng = random.Random(0)
    n, trials, covered = 200, 1000, 0
    cells = [(True, True, 0.20), (True, False, 0.12), (False, True, 0.06)]  # rest: both wrong
    truth = 0.12 - 0.06
    for _ in range(trials):
        a, b = [], []
        for _ in range(n):
            u, acc = rng.random(), 0.0
            pair = (False, False)
            for x, y, p in cells:
                acc += p
                if u < acc:
                    pair = (x, y)
                    break
            a.append(pair[0])
            b.append(pair[1])
        r = paired_difference(a, b)
        covered += r["ci95_low"] <= truth <= r["ci95_high"]
        assert -1 <= r["ci95_low"] <= r["difference"] <= r["ci95_high"] <= 1
    assert 0.93 <= covered / trials <= 0.975
    r = paired_difference(a, b)
    assert r["mcnemar_p"] == pytest.approx(binomtest(r["only_a"], r["only_a"] + r["only_b"]).pvalue, rel=1e-12)
    same = paired_difference([True, False] * 50, [True, False] * 50)
    assert same["difference"] == 0 and same["mcnemar_p"] == 1.0
