"""A secure round under a multiparty key, on the embedded chain: no key at the aggregator.

Three parties (the "threshold" preset) set up a collective key; the task's owner records it as
a key epoch; four clients encrypt with stock TenSEAL under it; the round asks the parties to
decrypt, each checks the request and signs its share, the round commits the decrypted sum and
the audit recombines the stored shares. Bad requests, bad shares and altered artifacts each
get a typed error or a finding naming the party or the step.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

pytest.importorskip("web3")
pytest.importorskip("tenseal")

import tenseal as ts
from eth_account import Account

from bcfl_engine import protocol
from bcfl_engine.chain import Ledger
from bcfl_engine.decryption import DecryptionRequest, SignedShare, party_share
from bcfl_engine.errors import (
    DecryptionRefused,
    InvalidArgument,
    KeyEpochError,
    KeyShareError,
    PayloadError,
)
from bcfl_engine.he import multiparty as mp
from bcfl_engine.he.mpepoch import KeyEpoch, check_context, open_epoch, parties_of
from bcfl_engine.round import AggregationRound, audit, sign_payload
from bcfl_engine.store import PayloadStore
from bcfl_engine.updates import keccak256

N, D = 4, 100
CLIENT_KEYS = [keccak256(f"mp client {i}".encode()) for i in range(N)]
CLIENTS = [Account.from_key(k).address for k in CLIENT_KEYS]
PARTY_KEYS = {i: keccak256(f"mp party {i}".encode()) for i in (1, 2, 3)}
PARTY_ACCOUNTS = {i: Account.from_key(k).address for i, k in PARTY_KEYS.items()}


def _setup(threshold: int | None) -> dict[str, Any]:
    parties = [mp.KeyShare.generate(party=i) for i in (1, 2, 3)]
    public, crs = mp.local_setup(parties, threshold=threshold)
    commitments = {p.party: p.commitment(crs) for p in parties}
    keys = KeyEpoch(public, parties_of(commitments, PARTY_ACCOUNTS), threshold or 3)
    return {"parties": {p.party: p for p in parties}, "keys": keys, "public": public}


@pytest.fixture(scope="module")
def ledger() -> Ledger:
    return Ledger.embedded()


@pytest.fixture(scope="module")
def n_of_n() -> dict[str, Any]:
    return _setup(None)


@pytest.fixture(scope="module")
def two_of_three() -> dict[str, Any]:
    return _setup(2)


def _xs(seed: int) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.uniform(-1, 1, D) for _ in range(N)]


def _round(ledger: Ledger, s: dict[str, Any], store: Path, seed: int = 0) -> tuple[Any, Any]:
    """A fresh task with ``s``'s key as epoch 1, and its round 1 with every client's payload."""
    task = ledger.create_task(aggregator=ledger.sender, participants=CLIENTS, model_spec=b"mp")
    keys = open_epoch(ledger, task, s["keys"])
    ctx = ts.context_from(s["public"])
    assert check_context(ledger, task, s["public"]) == keys.epoch == 1
    rnd = AggregationRound(ledger, task, 1, store, participants=CLIENTS, secure="ckks", keys=keys)
    for i, x in enumerate(_xs(seed)):
        blob = ts.ckks_vector(ctx, x.tolist()).serialize()
        rnd.submit(sign_payload(CLIENT_KEYS[i], task, 1, blob, ledger.domain, weight=i + 1))
    return rnd, keys


def _answer(
    s: dict[str, Any], keys: KeyEpoch, ledger: Ledger, req: DecryptionRequest, i: int
) -> SignedShare:
    party = s["parties"][i]
    return party_share(party, PARTY_KEYS[i], req, keys=keys, ledger=ledger, participants=CLIENTS)


def _expected(seed: int) -> np.ndarray:
    return sum((i + 1) * x for i, x in enumerate(_xs(seed)))


def test_n_of_n_round_decrypts_commits_and_audits(ledger, n_of_n, tmp_path) -> None:
    rnd, keys = _round(ledger, n_of_n, tmp_path)
    assert not ts.context_from(rnd.he_context).is_private()  # the aggregator holds no key
    req = rnd.decryption_request()
    assert req.active == (1, 2, 3) and rnd.decryption_request() is req
    for i in (3, 1, 2):
        rnd.add_share(_answer(n_of_n, keys, ledger, req, i))
    res = rnd.finalize()
    err = np.abs(res.update[:D] - _expected(0)).max()
    assert err <= 10 * mp.precision(3), err  # a weight sum of 10
    assert res.result_digest == protocol.payload_digest(res.update.astype("<f8").tobytes())
    report = audit(ledger, rnd.task, 1, tmp_path)
    assert report.ok, report.summary()
    assert any("decrypted by the parties' stored shares" in c for c in report.checked)
    # resumed after the commit: the same decrypted result, read back from the store
    again = AggregationRound(
        ledger, rnd.task, 1, tmp_path, participants=CLIENTS, secure="ckks", keys=keys
    ).finalize()
    assert np.array_equal(again.update, res.update) and again.receipt.noop


@pytest.mark.parametrize("active", [(1, 2), (2, 3), (1, 3)])
def test_two_of_three_any_active_pair_decrypts(ledger, two_of_three, tmp_path, active) -> None:
    rnd, keys = _round(ledger, two_of_three, tmp_path, seed=1)
    req = rnd.decryption_request(active=list(active))
    assert req.active == active
    with pytest.raises(InvalidArgument, match="second one"):
        rnd.decryption_request(active=[1, 2, 3][:2] if active != (1, 2) else [2, 3])
    outsider = ({1, 2, 3} - set(active)).pop()
    with pytest.raises(DecryptionRefused, match=f"party {outsider}.* not in the active set"):
        _answer(two_of_three, keys, ledger, req, outsider)
    for i in active:
        rnd.add_share(_answer(two_of_three, keys, ledger, req, i))
    res = rnd.finalize()
    assert np.abs(res.update[:D] - _expected(1)).max() <= 10 * mp.precision(3)
    assert audit(ledger, rnd.task, 1, tmp_path).ok


def test_a_client_refuses_a_context_the_chain_does_not_name(
    ledger, n_of_n, two_of_three, tmp_path
) -> None:
    task = ledger.create_task(aggregator=ledger.sender, participants=CLIENTS, model_spec=b"mp")
    with pytest.raises(KeyEpochError, match="has no a key epoch"):
        check_context(ledger, task, n_of_n["public"])
    open_epoch(ledger, task, n_of_n["keys"])
    with pytest.raises(KeyEpochError, match="not the key of epoch 1"):
        check_context(ledger, task, two_of_three["public"])  # e.g. a key the aggregator made
    # the round checks its epoch too: another key, or other parties, under epoch 1
    for wrong in (
        dataclasses.replace(two_of_three["keys"], epoch=1),
        dataclasses.replace(n_of_n["keys"], epoch=1, threshold=2),
        dataclasses.replace(n_of_n["keys"], epoch=2),
    ):
        with pytest.raises(KeyEpochError):
            AggregationRound(
                ledger, task, 1, tmp_path, participants=CLIENTS, secure="ckks", keys=wrong,
            )  # fmt: skip


def test_payloads_are_refused_once_decryption_was_asked(ledger, n_of_n, tmp_path) -> None:
    rnd, _ = _round(ledger, n_of_n, tmp_path)
    rnd.decryption_request()
    ctx = ts.context_from(n_of_n["public"])
    late = ts.ckks_vector(ctx, [0.0] * D).serialize()
    extra = Account.create()
    with pytest.raises(PayloadError, match="went out for decryption"):
        rnd.submit(sign_payload(extra.key, rnd.task, 1, late, ledger.domain))
    assert len(rnd) == N


def test_a_party_refuses_a_request_that_does_not_hold(ledger, n_of_n, tmp_path) -> None:
    rnd, keys = _round(ledger, n_of_n, tmp_path)
    req = rnd.decryption_request()
    fewer = dataclasses.replace(req, records=req.records[:-1], payloads=req.payloads[:-1])
    swapped = dataclasses.replace(
        req, payloads=(req.payloads[1], req.payloads[0], *req.payloads[2:])
    )
    other_root = dataclasses.replace(req, updates_root=keccak256(b"another root"))
    one = ts.ckks_vector(ts.context_from(n_of_n["public"]), [1.0] * D).serialize()
    oracle = dataclasses.replace(req, aggregates=(one,))  # one client's ciphertext as the aggregate
    bad_sig = dict(req.records[0], signature=req.records[1]["signature"])
    forged = dataclasses.replace(req, records=(bad_sig, *req.records[1:]))
    twice = dataclasses.replace(
        req, records=(req.records[0], req.records[0]), payloads=req.payloads[:1] * 2
    )
    cases = [
        (fewer, "updates root"),
        (swapped, "digest"),
        (other_root, "updates root"),
        (oracle, "not the sum"),
        (forged, "signature|signed"),
        (twice, "contributes twice"),
        (dataclasses.replace(req, epoch=2), "key epoch 2"),
    ]
    party = n_of_n["parties"][1]
    for bad, why in cases:
        with pytest.raises(DecryptionRefused, match=why):
            party_share(party, PARTY_KEYS[1], bad, keys=keys, ledger=ledger, participants=CLIENTS)
    with pytest.raises(DecryptionRefused, match="names account"):  # another party's account key
        party_share(party, PARTY_KEYS[2], req, keys=keys, ledger=ledger, participants=CLIENTS)
    # the refusals left no trace: the genuine request is still answered
    rnd.add_share(
        party_share(party, PARTY_KEYS[1], req, keys=keys, ledger=ledger, participants=CLIENTS)
    )


def test_bad_shares_are_named_and_nothing_is_committed(ledger, n_of_n, tmp_path) -> None:
    rnd, keys = _round(ledger, n_of_n, tmp_path)
    req = rnd.decryption_request()
    good = {i: _answer(n_of_n, keys, ledger, req, i) for i in (1, 2, 3)}
    with pytest.raises(KeyShareError, match="not a party of the key"):
        rnd.add_share(dataclasses.replace(good[1], party=9))
    with pytest.raises(KeyShareError, match=r"party 2: .*not signed by its account") as e:
        rnd.add_share(dataclasses.replace(good[2], signature=good[3].signature))
    assert e.value.party == 2
    with pytest.raises(KeyShareError, match="party 1"):  # party 2's share under party 1's name
        rnd.add_share(SignedShare(1, good[2].shares, good[1].signature))
    rnd.add_share(good[1])
    rnd.add_share(good[1])  # the same share again is a no-op
    with pytest.raises(KeyShareError, match="party 1 sent a second"):
        rnd.add_share(dataclasses.replace(good[1], signature=good[2].signature))
    with pytest.raises(KeyShareError, match="party 2 of the active set sent no share"):
        rnd.finalize()
    assert ledger.record(rnd.task, 1) is None
    rnd.add_share(good[2])
    rnd.add_share(good[3])
    assert np.abs(rnd.finalize().update[:D] - _expected(0)).max() <= 10 * mp.precision(3)


def test_audit_names_an_altered_share_and_a_lying_epoch(ledger, n_of_n, tmp_path) -> None:
    rnd, keys = _round(ledger, n_of_n, tmp_path)
    req = rnd.decryption_request()
    for i in (1, 2, 3):
        rnd.add_share(_answer(n_of_n, keys, ledger, req, i))
    res = rnd.finalize()
    store = PayloadStore(tmp_path)
    meta = json.loads(store.get(res.meta_hash, hasher=protocol.meta_hash))
    party, digests, _ = meta["keys"]["shares"][1]
    path = store.path(digests[0])
    data = bytearray(path.read_bytes())
    data[100] ^= 1
    path.chmod(0o644)
    path.write_bytes(bytes(data))
    report = audit(ledger, rnd.task, 1, tmp_path)
    assert not report.ok and any(f"party {party}" in p for p in report.problems), report.summary()
    path.write_bytes(bytes(data[:100]) + bytes([data[100] ^ 1]) + bytes(data[101:]))
    assert audit(ledger, rnd.task, 1, tmp_path).ok
    # a later epoch does not rewrite history: the round names epoch 1, which still holds
    open_epoch(ledger, rnd.task, dataclasses.replace(keys, threshold=2))
    assert audit(ledger, rnd.task, 1, tmp_path).ok


def test_keys_need_a_secure_round(ledger, n_of_n, tmp_path) -> None:
    task = ledger.create_task(aggregator=ledger.sender, participants=CLIENTS, model_spec=b"mp")
    keys = open_epoch(ledger, task, n_of_n["keys"])
    with pytest.raises(InvalidArgument, match="needs secure='ckks'"):
        AggregationRound(ledger, task, 1, tmp_path, participants=CLIENTS, dim=4, keys=keys)
    with pytest.raises(InvalidArgument, match="not the public key"):
        AggregationRound(
            ledger, task, 1, tmp_path, participants=CLIENTS, secure="ckks", keys=keys,
            he_context=b"other",
        )  # fmt: skip
    rnd = AggregationRound(
        ledger, task, 1, tmp_path, participants=CLIENTS, secure="ckks", keys=keys
    )
    with pytest.raises(InvalidArgument, match="no accepted payload"):
        rnd.decryption_request()
    with pytest.raises(InvalidArgument, match="decryption_request"):
        rnd.add_share(SignedShare(1, (b"",), b""))


def test_a_share_signature_names_the_noise_the_party_agreed_to(ledger, n_of_n, tmp_path) -> None:
    """The signed statement carries the DP parameters' digest (zero without DP): the same share
    read as one made under another noise scale does not recover the party's account."""
    from bcfl_engine.decryption import noise_digest, share_signer
    from bcfl_engine.dp import GaussianDP

    rnd, keys = _round(ledger, n_of_n, tmp_path)
    req = rnd.decryption_request()
    signed = _answer(n_of_n, keys, ledger, req, 1)
    fields = dict(task=rnd.task, round=1, updates_root=req.updates_root,
                  aggregate=req.aggregate_digest, epoch=keys.epoch)  # fmt: skip
    assert share_signer(signed, ledger.domain, **fields) == keys.account_of(1)
    other = noise_digest(GaussianDP(clipping_norm=1.0, noise_multiplier=1.0, num_sampled_clients=4))
    assert other != bytes(32)
    assert share_signer(signed, ledger.domain, **fields, noise=other) != keys.account_of(1)
