"""The demo's multiparty CKKS key: every hospital a key party, no key at the aggregator.

Under ``--secure ckks`` the hospitals run the key setup among themselves (simulated in this
process: commitments, reveals, the combined public key and its known-answer test; with
``--threshold T`` each also deals Shamir shares of its key), the task's owner records the key
as the task's key epoch, each hospital checks the context against the chain before it
encrypts, and each round's aggregate is decrypted by the active hospitals together, each after
checking that it is the sum of the round's signed payloads
(:func:`~bcfl_engine.decryption.party_share`). A hospital's account key signs its payloads and
its decryption shares.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..errors import PreconditionError
from ..he import multiparty as mp
from ..he import presets
from ..he.mpepoch import KeyEpoch, active_default, check_context, open_epoch, parties_of

# The hospitals' key: lean payloads (11.25 bytes per parameter, 16 bits on the mean of 1,000
# under up to 8 parties) at a 16-bit smudging margin; "threshold" (41 bits) costs 60 bytes.
# Every hospital encrypts |x| <= 1 (its client refuses more); the weights (patients) sum to at
# most 1,000, checked by the round.
PRESET = "lean16"

SCALE = 4.0
"""The hospitals encrypt their updates divided by this public constant, so that an honest
update stays within the preset's bound ``|x| <= 1`` with room to spare (the largest measured is
1.36: 5 local epochs at lr 0.3 on breast_cancer); it costs 2 of the preset's bits on the mean.
Median, trimmed mean, Krum and FedAvg commute with the scale, so the rules run unchanged on the
scaled bucket means and :func:`unscale` brings their result back."""


@dataclass
class DemoKeys:
    """The hospitals' key shares and the key's description (epoch 0 until a task opens it)."""

    parties: dict[int, mp.KeyShare]
    accounts: dict[int, bytes]
    keys: KeyEpoch

    @property
    def public(self) -> bytes:
        return self.keys.public

    def open(self, ledger: Any, task: int) -> KeyEpoch:
        """Record the key as ``task``'s key epoch; every hospital then checks its context."""
        keys = open_epoch(ledger, task, self.keys)
        check_context(ledger, task, self.public, keys.epoch)
        return keys

    def decrypt(self, rnd: Any, ledger: Any, participants: list[str]) -> Any:
        """Have the active hospitals answer ``rnd``'s decryption request; returns it."""
        from ..decryption import party_share

        request = rnd.decryption_request()
        for party in request.active:
            rnd.add_share(
                party_share(
                    self.parties[party], self.accounts[party], request, keys=rnd.keys,
                    ledger=ledger, participants=participants, min_clients=2,
                )
            )  # fmt: skip
        return request

    def who_decrypts(self) -> str:
        """One line for the report: who holds what and who can decrypt what."""
        n, t = len(self.parties), self.keys.threshold
        together = f"all {n} together" if t == n else f"any {t} of the {n} together"
        active = ", ".join(f"h{p - 1}" for p in active_default(self.keys))
        return (
            f"CKKS keys: each of the {n} hospitals holds a key share and the aggregator none; "
            f"a round's aggregate is decrypted by {together} (each round: {active}), each after "
            f"checking that it is the sum of the round's signed payloads; a single update "
            f"decrypts only if {t} hospitals collude"
        )


def encrypt(update: Any, context: Any, byzantine: bool = False) -> bytes:
    """A hospital's lean payload of ``update / SCALE`` (a float tensor) under the public
    ``context``; the decrypted aggregate is multiplied back by :data:`SCALE` (:func:`unscale`).

    An honest hospital's update divided by ``SCALE`` lies within the preset's bound (measured
    over 10 rounds of mean, median and trimmed_mean with 2 of 10 hospitals Byzantine: ``|x| <=
    1.36`` on breast_cancer, ``0.56`` on diabetes, so ``|x| / SCALE <= 0.34``); its client
    refuses one beyond (HeadroomExceeded), never clips it. A Byzantine hospital that uses this
    client library can send at most the bound: its corrupted update (sign_flip and scaled_noise
    reached 7.4 and 12.7) clipped to it. One that bypasses the library can make its bucket's sum
    wrap; the bucketed robust round is the answer (README).
    """
    from ..he import encrypt as lean_encrypt

    bound = presets.get(PRESET).bound
    assert bound is not None  # a lean preset states it
    x = update / SCALE
    x = x.clamp(-bound, bound) if byzantine else x
    return lean_encrypt(x.detach().cpu().double().numpy(), context)


def unscale(aggregate: Any) -> Any:
    """The aggregate of ``update / SCALE`` payloads back in the updates' own units."""
    return aggregate * SCALE


def setup(account_keys: list[bytes], threshold: int | None = None) -> DemoKeys:
    """The hospitals' key setup: hospital ``i`` is party ``i + 1``, its account key signs its
    decryption shares. ``threshold``: t-of-n (None: all hospitals decrypt together)."""
    from eth_account import Account

    parties = [mp.KeyShare.generate(party=i + 1, preset=PRESET) for i in range(len(account_keys))]
    public, crs = mp.local_setup(parties, threshold=threshold)
    accounts = {i + 1: k for i, k in enumerate(account_keys)}
    described = parties_of(
        {p.party: p.commitment(crs) for p in parties},
        {i: Account.from_key(k).address for i, k in accounts.items()},
    )
    keys = KeyEpoch(public, described, threshold or len(parties))
    return DemoKeys({p.party: p for p in parties}, accounts, keys)


def check_buckets(rule: str, n: int, f: int) -> None:
    """PreconditionError, before any work, if a robust rule cannot run on buckets of at least
    2 of the ``n`` hospitals with ``f`` Byzantine ones."""
    from .. import buckets

    if rule != "mean":
        try:
            buckets.bucket_size(rule, n, f)
        except PreconditionError as exc:
            raise PreconditionError(f"--secure ckks --rule {rule}: {exc}") from None


def summary(hospitals: DemoKeys, runs: list[Any], rounds: int, echo: Any) -> dict[str, Any]:
    """The ``ckks`` part of the demo's summary: the key, who decrypts what, the bucket sizes
    and what each decrypted value hides; each encrypted line against its plaintext line."""
    n_parties = len(hospitals.parties)
    out: dict[str, Any] = {
        "preset": hospitals.parties[1].preset,
        "keys": "multiparty",
        "parties": n_parties,
        "threshold": hospitals.keys.threshold,
        "who_decrypts": hospitals.who_decrypts(),
        "scale": SCALE,  # updates are encrypted divided by it
        "precision": mp.precision(n_parties, PRESET) * SCALE,  # in the updates' units
        "lines": {},
    }
    for run in (r for r in runs if r.secure):
        plain = next(
            r for r in runs if r.rule == run.rule and not r.secure and r.attacked == run.attacked
        )
        bucket = run.history[-1].get("bucket")
        hides = (
            f"each decrypted value is a sum of at least {bucket} hospitals' updates (a bucket)"
            if bucket
            else "the one decrypted value is the sum of every hospital's update"
        )
        diff = float((run.params - plain.params).abs().max())
        out["lines"][run.label] = {
            "bucket_size": bucket,
            "hides": hides,
            "max_abs_param_diff_vs_plaintext": diff,
        }
        if run.rule == "mean":
            out["max_abs_param_diff_vs_plaintext"] = diff
        why = (
            f" (its Byzantine hospitals' updates held to the client library's bound "
            f"|x| <= {SCALE * (presets.get(PRESET).bound or 1.0):g}, the plaintext line's not: "
            "compare with --byzantine 0)"
            if run.attacked
            else ""
        )
        echo(f"{run.label}: {hides}; max |param diff| vs {plain.label} {diff:.3g}{why}")
    return out
