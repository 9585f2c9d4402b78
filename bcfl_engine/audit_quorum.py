"""What an audit says about a round's aggregators: who attested which tuple, which one is final.

A round of a task with a quorum (:mod:`bcfl_engine.chain.quorum`) is final when t of its m
aggregators attested the same tuple; the others' votes are kept as evidence. The audit of
:func:`bcfl_engine.audit.audit` recomputes the final tuple from the store; these lines name who
agreed with it and who did not. A conflicting vote is not a finding about the round (the round
is what the quorum and the recomputation agree on): it is evidence against its aggregator.
"""

from __future__ import annotations

from typing import Any


def _short(tuple_id: bytes) -> str:
    return "0x" + tuple_id.hex()[:16]


def quorum_lines(ledger: Any, task: int, round: int, problems: list[str]) -> list[str]:
    """One line for the final tuple and its attesters, one per vote for another tuple.

    Appends to ``problems`` when the final tuple has no attestation the chain can show, or a
    vote for another tuple has no conflict event (a ledger without quorum calls gives no lines).
    """
    status_of = getattr(ledger, "round_status", None)
    if status_of is None:
        return []
    status = status_of(task, round)
    if status.final is None:
        return []
    q = status.quorum
    agreed = status.attested(status.final)
    if not agreed:
        problems.append(
            f"no aggregator is recorded attesting the final tuple {_short(status.final)}"
        )
    lines = [
        f"quorum {q.threshold} of {len(q.aggregators)}: final tuple {_short(status.final)} "
        f"attested by {', '.join(agreed)}"
    ]
    named = {c.aggregator for c in status.conflicts}
    for aggregator, tup in status.attestations.items():
        if tup == status.final:
            continue
        lines.append(
            f"{aggregator} attested {_short(tup)}, not the final tuple (conflict evidence)"
        )
        if aggregator not in named:
            problems.append(f"{aggregator}'s vote for {_short(tup)} is named by no conflict event")
    return lines
