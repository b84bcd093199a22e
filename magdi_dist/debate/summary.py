"""What a debate run reports: per-round accuracy and agreement over the finished MAGs, tokens spent per
agent, and this run's own work (turns asked and reused, failures, requests/s, tokens/s).

Agreement of one question in one round is the share of agents in its largest answer group, answers
grouped as the grader equates them (``mag.answers.majority_vote``: "18", "$18" and "18.0" agree); a
node without an answer is its own group. ``unanimous`` counts the questions where every agent agrees.
"""

from __future__ import annotations

from collections import defaultdict

from magdi_dist.mag.answers import majority_vote
from magdi_dist.mag.schema import MAG, Label


def discussion_stats(mags: list[MAG], agents: list[str], rounds: int) -> dict:
    correct, answered = [0] * rounds, [0] * rounds
    agreement, unanimous = [0.0] * rounds, [0] * rounds
    tokens = {a: {"prompt_tokens": 0, "completion_tokens": 0, "turns": 0, "unknown_usage": 0} for a in agents}
    for mag in mags:
        by_round = defaultdict(list)
        for r in mag.responses:
            by_round[r.round].append(r)
            if r.label is not Label.MISSING:
                answered[r.round] += 1
                correct[r.round] += r.label is Label.CORRECT
            usage = (r.meta or {}).get("usage") or {}
            t = tokens[r.agent]
            t["turns"] += 1
            if usage.get("prompt_tokens") is None or usage.get("completion_tokens") is None:
                t["unknown_usage"] += 1
            t["prompt_tokens"] += usage.get("prompt_tokens") or 0
            t["completion_tokens"] += usage.get("completion_tokens") or 0
        for rnd in range(rounds):
            answers = [r.answer for r in by_round[rnd]]
            vote = majority_vote(mag.task, answers, mag.options)
            share = vote.count / len(answers) if answers else 0.0
            agreement[rnd] += share
            unanimous[rnd] += share == 1.0
    n = len(mags)
    return {
        "mags": n,
        "per_round_accuracy": [correct[k] / answered[k] if answered[k] else None for k in range(rounds)],
        "per_round_agreement": [agreement[k] / n if n else None for k in range(rounds)],
        "per_round_unanimous": unanimous,
        "tokens_per_agent": tokens,
    }


def run_stats(asked: list[dict], failures: list[dict], wall_s: float) -> dict:
    """This run's requests: turns that came back, failures, and the rates over the run's wall time."""
    completion = sum((t.get("usage") or {}).get("completion_tokens") or 0 for t in asked)
    prompt = sum((t.get("usage") or {}).get("prompt_tokens") or 0 for t in asked)
    attempts = sum(t.get("attempts", 1) for t in asked) + sum(f.get("attempts", 1) for f in failures)
    return {
        "turns_asked": len(asked),
        "requests_sent": attempts,
        "failures": len(failures),
        "failed": [{k: f[k] for k in ("question_id", "agent", "round", "error", "attempts")} for f in failures],
        "wall_s": round(wall_s, 3),
        "requests_per_s": round(len(asked) / wall_s, 4) if wall_s > 0 else None,
        "completion_tokens_per_s": round(completion / wall_s, 2) if wall_s > 0 else None,
        "prompt_tokens": prompt,
        "completion_tokens": completion,
    }


def format_summary(summary: dict) -> str:
    def pct(x):
        return "-" if x is None else f"{x:.1%}"

    lines = [
        f"questions: {summary['questions']} ({summary['complete']} complete, {summary['incomplete']} incomplete); "
        f"wrote {summary['mags']} MAGs to {summary['out']}" + (" (unchanged)" if summary["unchanged"] else ""),
        f"this run: {summary['turns_asked']} turns asked, {summary['turns_reused']} reused, "
        f"{summary['failures']} failed requests, {summary['requests_sent']} requests sent in "
        f"{summary['wall_s']:.1f} s ({summary['requests_per_s'] or 0:.2f} turns/s, "
        f"{summary['completion_tokens_per_s'] or 0:.1f} completion tokens/s)",
        "round  accuracy  agreement  unanimous",
    ]
    for k, (acc, agr) in enumerate(zip(summary["per_round_accuracy"], summary["per_round_agreement"], strict=True)):
        lines.append(f"{k:>5}  {pct(acc):>8}  {pct(agr):>9}  {summary['per_round_unanimous'][k]:>9}")
    lines.append("agent  turns  prompt_tokens  completion_tokens")
    for agent, t in summary["tokens_per_agent"].items():
        lines.append(f"{agent}  {t['turns']}  {t['prompt_tokens']}  {t['completion_tokens']}"
                     + (f"  ({t['unknown_usage']} turns without usage)" if t["unknown_usage"] else ""))
    for f in summary["failed"][:10]:
        lines.append(f"FAILED {f['question_id']} agent {f['agent']} round {f['round']} after {f['attempts']} "
                     f"attempts: {f['error']}")
    if summary["incomplete"]:
        lines.append(f"{summary['incomplete']} questions are incomplete: run the same command again to ask what is "
                     f"missing (failures are logged in {summary['state_dir']}/failures.jsonl)")
    return "\n".join(lines)
