"""The audit's lines about a round's aggregators (bcfl_engine.audit_quorum), from round statuses
built by hand: who attested the final tuple, who attested another, and what is a problem."""

from __future__ import annotations

from dataclasses import dataclass

from bcfl_engine.audit_quorum import quorum_lines
from bcfl_engine.chain.quorum import Conflict, QuorumInfo, RoundStatus

A, B, C = ("0x" + c * 40 for c in "abc")
FINAL, OTHER = b"\x01" * 24, b"\x02" * 24


@dataclass
class _Ledger:
    status: RoundStatus

    def round_status(self, task: int, round: int) -> RoundStatus:
        assert (task, round) == (self.status.task, self.status.round)
        return self.status


def _status(attestations: dict[str, bytes], conflicts: list[Conflict]) -> RoundStatus:
    return RoundStatus(
        7, 3, QuorumInfo((A, B, C), 2), attestations=attestations, final=FINAL, conflicts=conflicts
    )


def test_a_named_conflict_is_evidence_not_a_problem() -> None:
    problems: list[str] = []
    status = _status({C: OTHER, A: FINAL, B: FINAL}, [Conflict(C, OTHER, FINAL)])
    lines = quorum_lines(_Ledger(status), 7, 3, problems)
    assert problems == []
    assert lines[0] == f"quorum 2 of 3: final tuple 0x{FINAL.hex()[:16]} attested by {A}, {B}"
    assert lines[1:] == [
        f"{C} attested 0x{OTHER.hex()[:16]}, not the final tuple (conflict evidence)"
    ]


def test_an_unnamed_other_vote_and_an_unattested_final_are_problems() -> None:
    problems: list[str] = []
    quorum_lines(_Ledger(_status({C: OTHER, A: FINAL}, [])), 7, 3, problems)
    assert problems == [f"{C}'s vote for 0x{OTHER.hex()[:16]} is named by no conflict event"]
    problems = []
    quorum_lines(_Ledger(_status({C: OTHER}, [Conflict(C, OTHER, FINAL)])), 7, 3, problems)
    assert problems == [f"no aggregator is recorded attesting the final tuple 0x{FINAL.hex()[:16]}"]


def test_a_ledger_without_quorum_calls_or_a_round_not_final_gives_no_lines() -> None:
    problems: list[str] = []
    assert quorum_lines(object(), 7, 3, problems) == [] and problems == []
    open_round = RoundStatus(7, 3, QuorumInfo((A, B, C), 2), attestations={A: FINAL})
    assert quorum_lines(_Ledger(open_round), 7, 3, problems) == [] and problems == []
