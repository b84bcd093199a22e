"""The synthetic MAG generator: deterministic, labelled synthetic, arithmetic that checks out."""

import re
from collections import Counter

from magdi_dist.mag.synth import synth_mags


def test_same_seed_same_mags_other_seed_other_mags():
    a = [m.model_dump() for m in synth_mags(30, seed=3)]
    b = [m.model_dump() for m in synth_mags(30, seed=3)]
    c = [m.model_dump() for m in synth_mags(30, seed=4)]
    assert a == b
    assert a != c


def test_shape_and_synthetic_label():
    mags = synth_mags(10, agents=4, rounds=5, seed=0)
    for m in mags:
        assert m.synthetic and m.id.startswith("synth-")
        assert m.agents == ["agent0", "agent1", "agent2", "agent3"]
        assert m.num_rounds == 5
        assert len(m.responses) == 4 * 5
        assert m.to_json_dict()["synthetic"] is True


KIND_OPS = {"packs of": ["*", "+"], "more.": ["+"], "away.": ["-"], "in each box": ["*"]}


def test_correct_chains_check_out_and_wrong_chains_contain_a_slip():
    step = re.compile(r"(\d+) ([+\-*]) (\d+) = (\d+)\.")
    ops = {"+": lambda x, y: x + y, "-": lambda x, y: x - y, "*": lambda x, y: x * y}
    wrong_chains = 0
    for m in synth_mags(200, seed=1):
        for r in m.responses:
            steps = step.findall(r.reasoning)
            assert steps, r.reasoning
            assert r.answer == steps[-1][3], "the stated answer is the last step's result"
            arithmetic_ok = all(ops[op](int(x), int(y)) == int(z) for x, op, y, z in steps)
            if r.answer == m.gold_answer:
                assert arithmetic_ok, r.reasoning
            else:
                wrong_chains += 1
                # a slip is a wrong result or a right result of the wrong operation
                expected = next(v for k, v in KIND_OPS.items() if k in m.question)
                wrong_op = [op for _, op, _, _ in steps] != expected
                assert not arithmetic_ok or wrong_op, (m.question, r.reasoning)
    assert wrong_chains > 50


def test_answers_converge_over_rounds_and_error_rates_matter():
    mags = synth_mags(300, agents=3, rounds=3, seed=2, error_rates=[0.5, 0.5, 0.5], convergence=0.9)
    distinct = Counter()
    for m in mags:
        for rnd in range(3):
            distinct[rnd] += len({r.answer for r in m.responses if r.round == rnd})
    assert distinct[2] < distinct[1] < distinct[0]

    def accuracy(rate):
        ms = synth_mags(300, agents=3, rounds=1, seed=5, error_rates=[rate] * 3)
        rs = [r for m in ms for r in m.responses]
        return sum(r.answer == m.gold_answer for m in ms for r in m.responses) / len(rs)

    assert accuracy(0.1) > 0.8 > 0.4 > accuracy(0.7)


def test_early_stop_leaves_missing_nodes_on_the_grid():
    mags = synth_mags(100, agents=3, rounds=3, seed=9, early_stop=True)
    completed = [m.completed() for m in mags]
    assert all(len(m.responses) == 9 for m in completed)
    assert any(r.missing for m in completed for r in m.responses)
