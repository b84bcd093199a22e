"""The debate run's state directory: the resumable request log of magdi_dist.eval.requestlog (shared
with remote evaluation), keyed by (question id, agent, round). ``turns.jsonl`` holds every completed
turn; the output MAGs are rebuilt from it after every run, which is what makes a finished run's re-run
ask nothing and write the same bytes.
"""

from __future__ import annotations

from magdi_dist.eval.requestlog import FAILURES, FINGERPRINT, LOCK, TURNS, RequestLog, StateError, fingerprint_diff

__all__ = ["FAILURES", "FINGERPRINT", "LOCK", "TURNS", "StateError", "TurnKey", "TurnStore", "fingerprint_diff"]

TurnKey = tuple[str, str, int]  # (question id, agent, round)


class TurnStore(RequestLog):
    """Open (and lock) a debate's state directory; ``turns`` holds every persisted turn."""

    key_fields = ("question_id", "agent", "round")
    item = "turn"
    user = "debate run"

    @property
    def turns(self) -> dict[TurnKey, dict]:
        return self.records

    def add_turn(self, record: dict) -> None:
        self.add(record)
