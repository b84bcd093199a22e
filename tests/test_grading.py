"""Grading per task family, driven by real teacher answers from the shared data.

Strings in the tables are copied verbatim from ../shared/data (the file and record are named next
to each); the whole-file tests read the data through conftest's ``shared_data`` fixture.
"""

from __future__ import annotations

import json
import re
import threading
import time
from pathlib import Path

import pytest

from magdi_dist.mag import math_equiv
from magdi_dist.mag.grading import (
    GoldAnswerError,
    check_gold,
    extract_boxed,
    extract_final_number,
    grade_answer,
    grade_mag,
    infer_task,
    parse_choice,
)
from magdi_dist.mag.schema import MAG, Label, Response

# Real option sets: ECQA (plain options, 1-based index answers), AQuA (letter-prefixed, letter answers).
ECQA_1 = ["cabinet", "meeting", "office", "cupboard", "home"]  # ECQA record 1, gold '2'
ECQA_14 = ["play football", "sporting event", "at a laundry mat.", "soccer game", "hockey game"]  # gold '4'
AQUA_2 = ["A)2.5498", "B)0.4167", "C)3.3987", "D)8.5497", "E)5.6312"]  # Aqua record 2, gold 'B'
AQUA_18 = ["A)47", "B)91", "C)41", "D)67", "E)44"]  # Aqua record 18, gold 'C'
AQUA_1 = ["A)Rs.1560", "B)Rs.1680", "C)Rs.1840", "D)Rs.1950", "E)Rs.1690"]  # gold 'B'
AQUA_3 = ["A)$83", "B)$92", "C)$90", "D)$97", "E)$104"]  # gold 'D'
AQUA_9 = ["A)46", "B)81", "C)126", "D)252", "E)None"]  # gold 'C'
AQUA_11 = ["A)62, 35", "B)62, 34", "C)34, 62", "D)42, 62", "E)62, 42"]  # gold 'B'
AQUA_20 = ["A)s.5050", "B)s.5723", "C)s.5040", "D)s.4950", "E)s.4870"]  # gold 'B'


# --- \boxed{} ---------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("text", "expected"),
    [
        # gsm_v4_stateful record 24: a box inside $...$, with a "$" inside the box.
        ("Kelly's budget is $65, so she has $65 - $156 = $ \\boxed{-$91}$ left in her budget.", "-$91"),
        ("So the answer is: $\\boxed{18}$.", "18"),
        # gsm_3_3_top100 record 87: the box inside \( \), a \text{} unit inside the box.
        ("ready to serve it at 5:00 pm is \\(\\boxed{2:00 \\text{ pm}}\\).", "2:00 \\text{ pm}"),
        # gsm_3_2_100 record 29: nested braces.
        (
            "So the answer is: $\\boxed{\\text{Any number }b\\text{ greater than }71}$.",
            "\\text{Any number }b\\text{ greater than }71",
        ),
        ("= \\boxed{\\frac{5w}{2}+2}", "\\frac{5w}{2}+2"),
        # gsm_v4_stateful record 37: a template the model never filled in.
        ("Therefore, \\boxed{{answer}} is 20 years.", "{answer}"),
        ("first \\boxed{12} then \\boxed{13}.", "13"),  # the last box wins
        ("a box that never closes \\boxed{12} \\boxed{13", "12"),  # truncated generation
        ("the answer is $\\boxed 5$", "5"),
        ("\\fbox{7}", "7"),
        ("After reviewing the other solutions provided, I agree that the correct answer is 60.", None),
        ("", None),
        (None, None),
    ],
)
def test_extract_boxed(text, expected):
    assert extract_boxed(text) == expected


# --- numeric ----------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("answer", "gold", "correct"),
    [
        # ReConcile GSM8k_gpt4o_round_2: '7.00' (record 22, gold 7), '7.5' (record 5, gold 60).
        ("7.00", "7", True),
        ("7.5", "60", False),
        ("160000", "162000", False),
        # Boxed answers from the debate_du files, graded against the gold after '####'.
        ("$18.00", "18", True),  # gsm_v4 record 1
        ("$20.00", "18", False),
        ("24\\%", "24", True),  # gsm_v4 record 21: a percent sign is a unit, "24%" == 24
        ("76\\%", "24", False),
        ("-$91", "5", False),  # gsm_v4 record 24
        ("15,336,011.72", "1,450,000", False),
        ("43,500", "43,500", True),  # gsm_v4 gold with a thousands separator
        ("1875.", "1,875", True),  # gsm_v4 record 91: unboxed answer with a full stop
        ("60 miles per day", "60", True),  # gsm_v4 record 4
        ("Soledad must hike an additional 60 miles per day to complete her journey on time", "60", True),
        ("James paid $105", "75", False),  # gsm_v4 record 28
        ("Answer: $2100", "2100", True),  # gsm_v4 record 63
        ("1128 \\text{ minutes}", "1128", True),  # gsm_v4 record 44
        ("18 \\text{ hours and 48 minutes}", "1128", False),
        ("30 \\text{ hours/week}", "30", True),  # gsm_v4 record 26
        ("6 \\text{ miles per hour}", "6", True),
        ("Julia \\ and \\ Nadine's \\ mother \\ gave \\ each \\ one \\ of \\ them \\ $14", "14", True),
        ("2:00 \\text{ pm}", "2", True),  # gsm_3_3 record 87: a clock time reads as hours
        ("2:00 \\, \\text{pm}", "2", True),  # gsm_v4 record 17
        ("1:40 \\text{ pm}", "2", False),
        ("{answer}", "168000", False),  # gsm_v4 record 30: no number at all
        ("\\text{uncertain}", "163", False),  # gsm_3_2 record 46
        ("3 + 15 = 18. Subtracting 3 as \n1/5*$15= $3", "18", False),  # llama record 14: last number
        ("160 \\leq distance \\leq 230", "230", False),  # gsm_3_2 record 16: a range commits to nothing
        ("x > 5", "5", False),
        ("d \u2264 230", "230", False),
        ("Since 3 < 5, the answer is 8", "8", True),  # only a bound on the *last* number disqualifies
        # Rules.
        ("$1,000.00", "1000", True),
        ("18.", "18", True),
        ("18.0", "18", True),
        ("1/2", "0.5", True),
        ("\\frac{1}{2}", "0.5", True),
        ("50%", "50", True),
        ("50%", "0.5", False),
        ("-3", "-3", True),
        ("-3", "3", False),
        ("-$4", "-4", True),
        ("18 dollars", "18", True),
        ("x = 3", "3", True),
        ("$65 - $156 = $ -91", "-91", True),  # a sign after "=", a subtraction between numbers
        ("the range 160-230", "230", True),
        ("5 m^2", "5", True),  # a unit's power is not the answer
        ("The answer is $\\boxed{18}$.", "18", True),  # whole response: its box is graded
        ("1000001", "1000000", False),  # integers compare exactly, whatever the tolerance
        ("0.30000000000000004", "0.3", True),  # decimals within a relative 1e-6
        ("0.3001", "0.3", False),
        ("NONE", "18", False),
        ("", "18", False),
        (None, "18", False),
    ],
)
def test_numeric(answer, gold, correct):
    assert grade_answer("numeric", answer, gold) is correct


@pytest.mark.parametrize(
    ("text", "value"),
    [("18 dollars", 18.0), ("$1,000.00", 1000.0), ("1/2", 0.5), ("no number", None), (None, None)],
)
def test_extract_final_number(text, value):
    assert extract_final_number(text) == value


# --- yes / no ---------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("answer", "gold", "correct"),
    [
        ("yes", "yes", True),  # SQA_gpt4o_round_2 answers are 'yes' / 'no'
        ("no", "yes", False),  # SQA record 1
        ("Yes.", "yes", True),
        ("YES", "True", True),
        ("no", "no", True),
        ("true", "yes", True),
        ("False", "no", True),
        ("False", "yes", False),
        (str(True), "True", True),
        (str(False), "False", True),
        ("No, because perch live in fresh water.", "no", True),
        ("Answer: yes", "yes", True),
        ("\\boxed{\\text{no}}", "no", True),
        ("maybe", "no", False),
        ("", "no", False),
        (None, "yes", False),
    ],
)
def test_yes_no(answer, gold, correct):
    assert grade_answer("yes_no", answer, gold) is correct


# --- multiple choice --------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("answer", "gold", "options", "correct"),
    [
        ("2", "2", ECQA_1, True),  # ECQA record 1: agents answered '1', '3', '2'
        ("1", "2", ECQA_1, False),
        ("3", "2", ECQA_1, False),
        ("B", "2", ECQA_1, True),  # a letter names the same option as its 1-based index
        ("meeting", "2", ECQA_1, True),  # the option's text
        ("Meeting.", "2", ECQA_1, True),
        ("6", "2", ECQA_1, False),  # out of range
        ("0", "1", ECQA_1, False),  # indices are 1-based
        ("at a laundry mat", "3", ECQA_14, True),  # option text ends in "." in the data
        ("NONE", "B", AQUA_2, False),  # Aqua record 2
        ("", "B", AQUA_2, False),  # Aqua record 2, round 1
        ("B", "B", AQUA_2, True),
        ("(B)", "B", AQUA_2, True),
        ("B)", "B", AQUA_2, True),
        ("b", "B", AQUA_2, True),
        ("B) 0.4167", "B", AQUA_2, True),
        ("B)0.4167", "B", AQUA_2, True),
        ("Answer: B", "B", AQUA_2, True),
        ("The answer is (B).", "B", AQUA_2, True),
        ("\\boxed{B}", "B", AQUA_2, True),
        ("0.4167", "B", AQUA_2, True),  # a bare number is an option's value with lettered options
        ("2", "B", AQUA_2, False),  # ... never its position
        ("91", "C", AQUA_18, False),  # Aqua record 18: '91' is option B's value
        ("91", "B", AQUA_18, True),
        ("F", "B", AQUA_2, False),  # no option F
        ("s.5723", "B", AQUA_20, True),  # an option's text wins over reading "s." as a letter
        ("s.5050", "B", AQUA_20, False),
        ("1680", "B", AQUA_1, True),  # the value inside "Rs.1680"
        ("1560", "B", AQUA_1, False),
        ("$97", "D", AQUA_3, True),
        ("97", "D", AQUA_3, True),
        ("None", "E", AQUA_9, True),  # 'None' is an option's text here, unlike 'NONE' for AQUA_2
        ("62, 34", "B", AQUA_11, True),
        ("62", "B", AQUA_11, False),  # options with two numbers have no single value
        ("B", "b", None, True),  # without options: letters against letters
        ("(C)", "C", None, True),
        ("2", "2", None, True),
        ("B", "2", None, False),  # ... and a letter never equals a number
        ("NONE", "A", None, False),
        (None, "B", AQUA_2, False),
    ],
)
def test_multiple_choice(answer, gold, options, correct):
    assert grade_answer("multiple_choice", answer, gold, options) is correct


def test_parse_choice_normalises_to_a_zero_based_index():
    assert parse_choice("B", AQUA_2) == parse_choice("2", ECQA_1) == 1
    assert parse_choice("A)2.5498", AQUA_2) == 0  # the option's own full text
    assert parse_choice("E", ECQA_1) == 4
    assert parse_choice("NONE", AQUA_2) is None


# --- math (MATH-style) ------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("answer", "gold", "correct"),
    [
        ("\\frac{1}{2}", "0.5", True),  # equal values are equal answers (exact, no sympy needed)
        ("\\dfrac{3}{4}", "\\frac34", True),  # \dfrac and the \frac34 shorthand
        ("\\tfrac{3}{4}", "0.75", True),
        ("\\frac{1}{3}", "0.33", False),
        ("2\\sqrt{2}", "\\sqrt{8}", True),  # sympy
        ("2\\sqrt{3}", "\\sqrt{8}", False),
        ("\\frac{\\sqrt{3}}{2}", "\\frac{1}{2}\\sqrt3", True),
        ("x=5", "5", True),
        ("x = 5", "6", False),
        ("10^\\circ", "10", True),
        ("10^{\\circ}", "10", True),
        ("\\text{(A)}", "(A)", True),
        ("\\text{(A)}", "A", True),
        ("\\text{(B)}", "A", False),
        ("10\\text{ cm}", "10", True),  # a \text{} unit after the value
        ("\\$5.50", "5.5", True),
        ("\\left( 3, -1 \\right)", "(3,-1)", True),
        ("(1, 2.0)", "(1,2)", True),  # tuples compare element-wise
        ("(1,2)", "(2,1)", False),
        ("x^2+2x+1", "(x+1)^2", True),
        ("\\pi r^2", "r^2\\pi", True),
        ("\\sqrt[3]{8}", "2", True),
        ("3 \\cdot 4", "12", True),
        ("5.", "5", True),
        (".5", "0.5", True),
        ("1,000", "1000", True),
        ("1000001", "1000000", False),  # integers compare exactly
        ("\\sqrt[]{8}", "2", False),  # malformed root index: unreadable, not an error
        ("\\frac{" * 2000 + "1" + "}{2}" * 2000, "1", False),  # absurd nesting: no RecursionError
        ("The answer is \\boxed{\\frac{1}{2}}.", "\\boxed{\\dfrac12}", True),  # both sides un-boxed
        ("\\boxed{}", "1", False),
        ("an essay, not an expression", "1", False),
        (None, "1", False),
    ],
)
def test_math(answer, gold, correct):
    assert grade_answer("math", answer, gold) is correct


@pytest.mark.parametrize(
    "code",
    ["__import__('os').system('touch {m}')", "1+__import__('os').system('touch {m}')",
     "\\text{{__import__('os').system('touch {m}')}}", "x = open('{m}', 'w')", "lambda: open('{m}', 'w')"],
)
def test_untrusted_text_is_never_run(tmp_path, code):
    """Teacher text goes to math-verify; nothing in it may be evaluated as Python (sympy's parse_expr
    would: math-verify must keep it from that)."""
    marker = tmp_path / "ran"
    text = code.format(m=marker)
    for answer, gold in ((text, "1"), ("1", text)):  # unequal text: both reach math-verify
        grade_answer("math", answer, gold)
    assert not marker.exists()


def test_pathological_expression_times_out_in_a_thread_and_the_helper_recovers(monkeypatch):
    assert math_equiv.math_equal("2\\sqrt{2}", "\\sqrt{8}", timeout_s=60)  # the helper is up
    monkeypatch.setattr(math_equiv, "MATH_TIMEOUT_S", 0.5)
    result: dict[str, object] = {}

    def grade() -> None:  # off the main thread, as in a Ray worker: no SIGALRM there
        start = time.monotonic()
        result["ok"] = grade_answer("math", "9^{9^{9^{9}}}", "1")
        result["s"] = time.monotonic() - start

    worker = threading.Thread(target=grade)
    worker.start()
    worker.join(timeout=30)
    assert not worker.is_alive()
    assert result["ok"] is False
    assert result["s"] < 5.0  # a 0.5 s deadline (slack for a loaded CI box), not the minutes 9^(9^(9^9)) takes
    assert math_equiv.math_equal("x^2-1", "(x-1)(x+1)", timeout_s=60)  # a fresh helper after the kill


MATH_ROWS = [("2\\sqrt{2}", "\\sqrt{8}", True), ("2\\sqrt{3}", "\\sqrt{8}", False), ("x^2+2x+1", "(x+1)^2", True),
             ("(1,2)", "(2,1)", False), ("\\frac{1}{2}", "0.5", True)]


@pytest.mark.slow
def test_math_grading_in_a_ray_worker_thread():
    """Where evaluation and the debate grade: a Ray worker, here a threaded actor, whose methods run
    off the main thread (math-verify's own signal timeouts raise there). The deadline still holds."""
    import ray

    started = not ray.is_initialized()
    if started:
        ray.init(num_cpus=1, include_dashboard=False, log_to_driver=False)
    try:
        @ray.remote(max_concurrency=2)
        class Grader:
            def grade(self, answer, gold, timeout_s=None):
                import threading
                import time

                from magdi_dist.mag import math_equiv as me

                assert threading.current_thread() is not threading.main_thread()
                start = time.monotonic()
                ok = me.math_equal(answer, gold, timeout_s=timeout_s)
                return ok, time.monotonic() - start

        grader = Grader.remote()
        assert ray.get(grader.grade.remote("x^2-1", "(x-1)(x+1)", 120))[0]  # starts the helper
        got = ray.get([grader.grade.remote(a, g) for a, g, _ in MATH_ROWS])
        assert [ok for ok, _ in got] == [c for _, _, c in MATH_ROWS]
        ok, seconds = ray.get(grader.grade.remote("9^{9^{9^{9}}}", "1", 0.5))
        assert ok is False and seconds < 5.0
        assert ray.get(grader.grade.remote("\\sqrt[3]{8}", "2", 120))[0]  # a fresh helper after the kill
    finally:
        if started:
            ray.shutdown()


# --- gold errors, task inference ----------------------------------------------------------------------
@pytest.mark.parametrize(
    ("task", "gold", "options"),
    [
        ("yes_no", "maybe", None),
        ("numeric", "between 3 and 5", None),
        ("numeric", "seventeen", None),
        ("multiple_choice", "F", AQUA_2),
        ("multiple_choice", "6", ECQA_1),
        ("multiple_choice", "NONE", None),
        ("math", "\\frac{1}{2", None),
        ("math", "   ", None),
        ("math", "\\frac{" * 60 + "1" + "}{2}" * 60, None),  # nested past any real answer
    ],
)
def test_bad_gold_raises_naming_family_and_value(task, gold, options):
    with pytest.raises(GoldAnswerError, match=re.escape(task)) as err:
        grade_answer(task, "1", gold, options)
    assert repr(gold) in str(err.value)
    assert isinstance(err.value, ValueError)


@pytest.mark.parametrize(
    ("gold", "options", "task"),
    [
        ("2", ECQA_1, "multiple_choice"),
        ("B", AQUA_2, "multiple_choice"),
        ("yes", None, "yes_no"),
        ("False", None, "yes_no"),
        ("1,450,000", None, "numeric"),
        ("-3.5", None, "numeric"),
        ("\\frac{\\sqrt{3}}{2}", None, "math"),
        ("(3,-1)", None, "math"),
    ],
)
def test_infer_task(gold, options, task):
    assert infer_task(gold, options) == task


# --- grade_mag ----------------------------------------------------------------------------------------
def _mag(responses: list[Response], gold: str = "2", options: list[str] | None = ECQA_1) -> MAG:
    return MAG(id="q1", task="multiple_choice", gold_answer=gold, options=options, responses=responses)


def test_grade_mag_completes_the_grid_and_labels_every_node():
    mag = _mag(
        [
            Response(agent="claude", round=0, reasoning="r", answer="2", label="incorrect"),  # stale
            Response(agent="gpt3", round=0, reasoning="r", answer="1"),
            Response(agent="gpt3", round=1, reasoning="r", answer="meeting"),
            Response(agent="bard", round=0, reasoning="r", answer=None),
        ]
    )
    graded = grade_mag(mag)
    got = [(r.agent, r.round, r.label) for r in graded.responses]
    assert got == [
        ("claude", 0, Label.CORRECT),  # re-graded, not kept
        ("gpt3", 0, Label.INCORRECT),
        ("bard", 0, Label.INCORRECT),  # reasoning without an answer
        ("claude", 1, Label.MISSING),
        ("gpt3", 1, Label.CORRECT),
        ("bard", 1, Label.MISSING),
    ]
    assert mag.responses[0].label == Label.INCORRECT  # the input is not mutated


def test_grade_mag_rejects_missing_label_with_reasoning():
    mag = _mag([Response(agent="a", round=0, reasoning="r", answer="2"),
                Response(agent="b", round=0, reasoning="r", answer="2", label="missing")])
    with pytest.raises(ValueError, match=r"responses\[1\]"):
        grade_mag(mag)


def test_grade_mag_rejects_bad_gold_even_without_answers():
    mag = _mag([Response(agent="a", round=0, label="missing")], gold="7")
    with pytest.raises(GoldAnswerError, match="multiple_choice.*'7'"):
        grade_mag(mag)


# --- whole files of real data ---------------------------------------------------------------------------
def _magdi_records(shared_data: Path, name: str) -> list[dict]:
    return json.loads((shared_data / "mag" / "magdi_layout" / f"{name}_gpt4o_round_2.json").read_text())


@pytest.mark.parametrize("name", ["ECQA", "Aqua"])
def test_every_mc_gold_grades_against_itself_and_not_against_a_wrong_option(shared_data, name):
    records = _magdi_records(shared_data, name)
    assert len(records) == 30
    for i, rec in enumerate(records):
        gold, options = rec["gold_answer"], rec["options"]
        index = parse_choice(gold, options)
        assert index is not None, i
        wrong = (index + 1) % len(options)
        assert grade_answer("multiple_choice", gold, gold, options), i
        assert grade_answer("multiple_choice", chr(65 + index), gold, options), i  # its letter
        assert not grade_answer("multiple_choice", chr(65 + wrong), gold, options), i
        assert not grade_answer("multiple_choice", str(wrong + 1), gold, options) or name == "Aqua", i
        if name == "Aqua":  # the option's value, as an agent would write it
            assert grade_answer("multiple_choice", options[index][2:], gold, options), i
        else:
            assert grade_answer("multiple_choice", options[index], gold, options), i
            assert not grade_answer("multiple_choice", options[wrong], gold, options), i


@pytest.mark.parametrize(
    ("name", "task"),
    [("SQA", "yes_no"), ("ECQA", "multiple_choice"), ("GSM8k", "numeric"), ("Aqua", "multiple_choice")],
)
def test_real_agent_answers_grade_like_an_independent_oracle(shared_data, name, task):
    """Every agent answer in the ReConcile files is a clean token, so exact match (numbers by value)
    is a correct oracle; grading must agree on all of them, 'NONE', '' and '91' included."""
    n = 0
    for rec in _magdi_records(shared_data, name):
        gold, options = rec["gold_answer"], rec.get("options")
        assert infer_task(gold, options) == task
        for key, out in rec.items():
            if "_output_" in key:
                answer = out["answer"]
                expected = answer == gold if task != "numeric" else float(answer) == float(gold)
                assert grade_answer(task, answer, gold, options) is expected, (key, answer, gold)
                n += 1
    assert n >= 90


def test_debate_du_golds_and_plain_boxed_answers(shared_data):
    """Every gold after '####' is numeric and grades against itself; every boxed answer that is a
    plain integer grades exactly like integer equality; every assistant message is gradable."""
    checked = 0
    for path in sorted((shared_data / "mag" / "debate_du").glob("*.json")):
        for contexts, solution in json.loads(path.read_text()).values():
            gold = solution.split("####")[-1].strip()
            check_gold("numeric", gold)
            assert grade_answer("numeric", gold, gold)
            for message in (m for ctx in contexts for m in ctx if m["role"] == "assistant"):
                boxed = extract_boxed(message["content"])
                graded = grade_answer("numeric", boxed, gold)
                if boxed is not None and re.fullmatch(r"-?\d+", boxed):
                    assert graded is (int(boxed) == int(gold.replace(",", ""))), (path.name, boxed, gold)
                    checked += 1
    assert checked > 2000
