"""SYNTHETIC multi-agent discussions for demos and tests (never mistaken for teacher data).

Arithmetic word problems small enough for a ~1M-parameter student to learn on a CPU. Each agent has
its own error rate; a wrong answer is a believable slip (an off-by-a-little result or the wrong
operation), written step by step like a correct one. From round 1 on, an agent that disagrees with
the majority of the previous round switches to the majority with probability ``convergence``, so
answers tend to converge over rounds. A revised chain is written as a plain solution: the revision is
in its steps, never a quote of the peers (a student trained on it has no peers at test time). With
``early_stop`` the discussion ends once every agent agrees and the remaining (agent, round) nodes are
missing, as in ReConcile's early consensus.
Every MAG carries ``synthetic=True`` and an id starting with ``synth-``.
"""

from __future__ import annotations

import random
from collections import Counter

from magdi_dist.mag.schema import MAG, Response

NAMES = ["Ava", "Ben", "Cara", "Dev", "Eli", "Fay", "Gus", "Hana", "Ivo", "Jun", "Kai", "Lea"]
ITEMS = ["apples", "books", "coins", "pens", "shells", "stamps", "cards", "marbles"]


def _problem(rng: random.Random) -> tuple[str, list[tuple[str, int, int, int]], int]:
    """A question, its steps as (op, left, right, result) and the answer."""
    name, item = rng.choice(NAMES), rng.choice(ITEMS)
    kind = rng.choice(["add", "sub", "mul", "two_step"])
    if kind == "add":
        a, b = rng.randint(2, 30), rng.randint(2, 30)
        q = f"{name} has {a} {item}. {name} gets {b} more. How many {item} does {name} have now?"
        return q, [("+", a, b, a + b)], a + b
    if kind == "sub":
        a = rng.randint(10, 40)
        b = rng.randint(1, a - 1)
        q = f"{name} has {a} {item} and gives {b} of them away. How many {item} are left?"
        return q, [("-", a, b, a - b)], a - b
    if kind == "mul":
        a, b = rng.randint(2, 9), rng.randint(2, 9)
        q = f"{name} buys {a} boxes with {b} {item} in each box. How many {item} does {name} buy?"
        return q, [("*", a, b, a * b)], a * b
    a, b, c = rng.randint(2, 20), rng.randint(2, 6), rng.randint(2, 6)
    q = (
        f"{name} has {a} {item} and buys {b} packs of {c} {item}. "
        f"How many {item} does {name} have in total?"
    )
    return q, [("*", b, c, b * c), ("+", a, b * c, a + b * c)], a + b * c


def _apply(op: str, x: int, y: int) -> int:
    return {"+": x + y, "-": x - y, "*": x * y}[op]


def _slip(rng: random.Random, steps: list[tuple[str, int, int, int]]) -> list[tuple[str, int, int, int]]:
    """The same steps with one believable mistake, carried through to the end."""
    wrong = list(steps)
    k = rng.randrange(len(wrong))
    op, x, y, result = wrong[k]
    if rng.random() < 0.5:
        bad = max(result + rng.choice([-2, -1, 1, 2]), 0)
        bad = bad if bad != result else result + 1
    else:
        # no "-" when it would go negative: a word problem's slip still gives a count
        other = rng.choice([o for o in "+-*" if o != op and not (o == "-" and x < y)])
        op, bad = other, _apply(other, x, y)
        if bad == result:
            bad = result + 1
    wrong[k] = (op, x, y, bad)
    for j in range(k + 1, len(wrong)):  # a later step's right operand is the previous result
        op_j, x_j, _, _ = wrong[j]
        y_j = wrong[j - 1][3]
        wrong[j] = (op_j, x_j, y_j, _apply(op_j, x_j, y_j))
    return wrong


def _write(steps: list[tuple[str, int, int, int]], prefix: str = "") -> str:
    sentences = [f"Step {i + 1}: {x} {op} {y} = {r}." for i, (op, x, y, r) in enumerate(steps)]
    return (prefix + " ".join(sentences) + f" So the answer is {steps[-1][3]}.").strip()


def synth_mags(
    n: int,
    agents: int = 3,
    rounds: int = 3,
    seed: int = 0,
    error_rates: list[float] | None = None,
    convergence: float = 0.6,
    early_stop: bool = False,
) -> list[MAG]:
    """``n`` graded synthetic MAGs; the same arguments always give the same MAGs."""
    if n < 0 or agents < 1 or rounds < 1:
        raise ValueError("synth needs n >= 0, agents >= 1 and rounds >= 1")
    rates = error_rates or [0.2 + 0.5 * i / max(agents - 1, 1) for i in range(agents)]
    if len(rates) != agents or not all(0.0 <= r <= 1.0 for r in rates):
        raise ValueError(f"error_rates must be {agents} values in [0, 1], got {rates}")
    rng = random.Random(seed)
    names = [f"agent{i}" for i in range(agents)]
    mags = []
    for i in range(n):
        question, steps, answer = _problem(rng)
        # Each agent's current solution: a list of steps whose last result is its answer.
        current = [_slip(rng, steps) if rng.random() < rates[a] else steps for a in range(agents)]
        responses = [
            Response(agent=names[a], round=0, reasoning=_write(current[a]), answer=str(current[a][-1][3]))
            for a in range(agents)
        ]
        for rnd in range(1, rounds):
            votes = Counter(sol[-1][3] for sol in current)
            if early_stop and len(votes) == 1:
                break
            majority = votes.most_common(1)[0][0]
            nxt = []
            for a in range(agents):
                own = current[a][-1][3]
                if own != majority and rng.random() < convergence:
                    nxt.append(next(sol for sol in current if sol[-1][3] == majority))  # convinced
                elif own != answer and rng.random() < (1 - rates[a]) / 2:
                    nxt.append(steps)  # the agent re-checks its work and fixes it
                else:
                    nxt.append(current[a])
                responses.append(
                    Response(agent=names[a], round=rnd, reasoning=_write(nxt[a]), answer=str(nxt[a][-1][3]))
                )
            current = nxt
        mags.append(
            MAG(
                id=f"synth-{seed}-{i}",
                task="numeric",
                question=question,
                gold_answer=str(answer),
                responses=responses,
                rounds=rounds,
                synthetic=True,
            )
        )
    return mags
