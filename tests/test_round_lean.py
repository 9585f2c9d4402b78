"""AggregationRound on lean CKKS payloads (the "lean" preset's public context), on the embedded
chain: the round sums them mod 2^b as it accepts them, commits the lifted aggregate, and the
audit recomputes it with he.aggregate; a weight sum past the payloads' headroom is refused at
submit with HeadroomExceeded and nothing stored."""

from __future__ import annotations

import functools

import numpy as np
import pytest
import torch

from bcfl_engine import protocol
from bcfl_engine.errors import HeadroomExceeded, PayloadError
from bcfl_engine.round import AggregationRound, audit, sign_payload
from bcfl_engine.updates import keccak256

pytest.importorskip("web3")
pytest.importorskip("tenseal")
from eth_account import Account

from bcfl_engine import he
from bcfl_engine.chain import Ledger
from bcfl_engine.he.lean_aggregate import LeanRunningSum

N, D = 6, 37
KEYS = [keccak256(f"lean hospital {i}".encode()) for i in range(N)]
ADDRESSES = [Account.from_key(k).address for k in KEYS]


@functools.lru_cache(maxsize=1)
def keys() -> he.Keys:
    return he.generate_keys("lean")


@pytest.fixture(scope="module")
def ledger():
    return Ledger.embedded()


def new_round(ledger, tmp_path) -> tuple[int, AggregationRound]:
    task = ledger.create_task(aggregator=ledger.sender, participants=ADDRESSES, model_spec=b"l")
    rnd = AggregationRound(
        ledger, task, 1, tmp_path, participants=ADDRESSES, secure="ckks",
        he_context=keys().public_context(),
    )  # fmt: skip
    return task, rnd


def updates(seed: int) -> np.ndarray:
    return np.random.default_rng(seed).uniform(-1, 1, (N, D))


def test_lean_round_commits_the_weighted_sum_and_audits(ledger, tmp_path) -> None:
    task, rnd = new_round(ledger, tmp_path)
    assert isinstance(rnd._sum, LeanRunningSum)
    x, w = updates(3), [1, 300, 2, 7, 40, 3]
    blobs = [he.encrypt(x[i], keys().public_context()) for i in range(N)]
    assert len(blobs[0]) < 10 * 8192  # one paired lean ciphertext: 84 + 8192 * 76 / 8 bytes
    rnd.submit(sign_payload(KEYS[0], task, 1, blobs[0], ledger.domain, weight=w[0]))
    got = rnd.submit_many(
        [sign_payload(KEYS[i], task, 1, blobs[i], ledger.domain, weight=w[i]) for i in range(1, N)]
    )
    assert all(isinstance(r, dict) for r in got), got
    res = rnd.finalize()
    # the committed bytes are he.aggregate's over the same payloads and weights (the audit's)
    assert res.update == he.aggregate(blobs, w, context=keys().public_context())
    assert res.result_digest == protocol.payload_digest(res.update)
    plain = he.decrypt(res.update, keys().secret_context)[:D]
    expected = (np.array(w, dtype=np.float64)[:, None] * x).sum(0)
    err = float(np.abs(plain - expected).max())
    assert err <= sum(w) * keys().preset.precision, err
    report = audit(ledger, task, 1, tmp_path)
    assert report.ok, report.summary()


def test_weight_past_the_headroom_is_refused_at_submit_and_nothing_stored(ledger, tmp_path) -> None:
    task, rnd = new_round(ledger, tmp_path)
    pub, x = keys().public_context(), updates(4)
    blobs = [he.encrypt(x[i], pub) for i in range(N)]
    rnd.submit(sign_payload(KEYS[0], task, 1, blobs[0], ledger.domain, weight=600))
    log = rnd.store.log(rnd.key, 1)
    end = log.end
    with pytest.raises(HeadroomExceeded, match="1001"):
        rnd.submit(sign_payload(KEYS[1], task, 1, blobs[1], ledger.domain, weight=401))
    assert len(rnd) == 1 and log.end == end and rnd._sum.weight_sum == 600
    # a burst: each payload's weight counts against what the earlier ones in it took
    got = rnd.submit_many(
        [
            sign_payload(KEYS[1], task, 1, blobs[1], ledger.domain, weight=300),
            sign_payload(KEYS[2], task, 1, blobs[2], ledger.domain, weight=101),
            sign_payload(KEYS[3], task, 1, blobs[3], ledger.domain, weight=100),
        ]
    )
    assert isinstance(got[0], dict) and isinstance(got[2], dict)
    assert isinstance(got[1], HeadroomExceeded) and "1001" in str(got[1])
    assert len(rnd) == 3 and rnd._sum.weight_sum == 1000
    assert [c.lower() for c in rnd.clients] == [ADDRESSES[i].lower() for i in (0, 1, 3)]
    # the refused client may still send within the headroom left (none: the sum is full)
    with pytest.raises(HeadroomExceeded):
        rnd.submit(sign_payload(KEYS[2], task, 1, blobs[2], ledger.domain, weight=1))
    # a restarted round reads back the three accepted payloads only, and commits their sum
    again = AggregationRound(
        ledger, task, 1, tmp_path, participants=ADDRESSES, secure="ckks", he_context=pub
    )
    assert len(again) == 3 and again._sum.weight_sum == 1000
    res = again.finalize()
    assert res.update == he.aggregate([blobs[0], blobs[1], blobs[3]], [600, 300, 100], context=pub)
    plain = he.decrypt(res.update, keys().secret_context)[:D]
    expected = 600 * x[0] + 300 * x[1] + 100 * x[3]
    assert float(np.abs(plain - expected).max()) <= 1000 * keys().preset.precision
    assert audit(ledger, task, 1, tmp_path).ok


def test_non_lean_payload_is_refused_by_a_lean_round(ledger, tmp_path) -> None:
    task, rnd = new_round(ledger, tmp_path)
    other = he.generate_keys("test").public_context()
    compact = he.encrypt(updates(5)[0], other)
    with pytest.raises(PayloadError, match=ADDRESSES[0].lower()):
        rnd.submit(sign_payload(KEYS[0], task, 1, compact, ledger.domain))
    lean = he.encrypt(updates(5)[1], keys().public_context())
    with pytest.raises(PayloadError, match=ADDRESSES[1].lower()):
        rnd.submit(sign_payload(KEYS[1], task, 1, lean[:-8], ledger.domain))
    assert len(rnd) == 0


def test_a_bad_payload_after_the_first_is_refused_naming_its_client(ledger, tmp_path) -> None:
    """Once the round has its layout, a payload whose size or header differs is refused (the
    extension only compares headers there: the body is summed later, unparsed) and nothing
    changes; the round then commits what it holds."""
    task, rnd = new_round(ledger, tmp_path)
    pub, x = keys().public_context(), updates(6)
    blobs = [he.encrypt(x[i], pub) for i in range(3)]
    rnd.submit(sign_payload(KEYS[0], task, 1, blobs[0], ledger.domain, weight=2))
    other_d = bytearray(blobs[1])
    other_d[16] ^= 1  # the header's d: same size, another layout
    for i, bad in ((1, blobs[1][:-8]), (1, bytes(other_d)), (2, blobs[2] + bytes(8))):
        with pytest.raises(PayloadError, match=ADDRESSES[i].lower()):
            rnd.submit(sign_payload(KEYS[i], task, 1, bad, ledger.domain))
        got = rnd.submit_many([sign_payload(KEYS[i], task, 1, bad, ledger.domain)])
        assert isinstance(got[0], PayloadError) and ADDRESSES[i].lower() in str(got[0])
    assert len(rnd) == 1 and rnd._sum.weight_sum == 2
    rnd.submit_many([sign_payload(KEYS[i], task, 1, blobs[i], ledger.domain) for i in (1, 2)])
    assert rnd.finalize().update == he.aggregate(blobs, [2, 1, 1], context=pub)


@pytest.mark.parametrize("native", [True, False], ids=["extension", "parsed"])
def test_running_sum_writes_what_the_aggregate_writes(monkeypatch, native) -> None:
    """The running sum, burst by burst (payloads unpacked straight into the sum by the
    extension, or parsed then summed without it), writes he.aggregate's bytes."""
    import bcfl_engine.he.lean_aggregate as la

    if not native:
        monkeypatch.setattr(la, "_load_native", lambda: (None, "turned off for this test"))
    elif la._load_native()[0] is None:
        pytest.skip("the extension is not built")
    pub, x = keys().public_context(), updates(7)
    blobs = [he.encrypt(x[i], pub) for i in range(N)]
    w = [3, 1, 1, 250, 0, 9]
    acc = LeanRunningSum(pub)
    acc.add("first", blobs[0], w[0])
    rows = acc.batch(2)
    for i in (1, 2):
        acc.admit(rows, f"c{i}", blobs[i], w[i])
    more = acc.batch(3, prev=rows)
    for i in (3, 4, 5):
        acc.admit(more, f"c{i}", blobs[i], w[i])
    acc.take(rows, w[1:3])
    acc.take(more)
    assert acc.weight_sum == sum(w)
    assert acc.result() == he.aggregate(blobs, w, context=pub)


def test_multiparty_round_on_lean16_payloads_decrypts_commits_and_audits(ledger, tmp_path) -> None:
    """A round under a multiparty key of the "lean16" preset: lean payloads summed mod 2^58 as
    they come, the lifted sum decrypted by three parties (each checks it against the lean
    payloads), committed and audited."""
    from bcfl_engine.decryption import party_share
    from bcfl_engine.he import multiparty as mp
    from bcfl_engine.he.mpepoch import KeyEpoch, open_epoch, parties_of

    party_keys = {i: keccak256(f"lean16 party {i}".encode()) for i in (1, 2, 3)}
    accounts = {i: Account.from_key(k).address for i, k in party_keys.items()}
    parties = {i: mp.KeyShare.generate(party=i, preset="lean16") for i in (1, 2, 3)}
    public, crs = mp.local_setup(list(parties.values()))
    commitments = {i: p.commitment(crs) for i, p in parties.items()}
    task = ledger.create_task(aggregator=ledger.sender, participants=ADDRESSES, model_spec=b"l16")
    keys = open_epoch(ledger, task, KeyEpoch(public, parties_of(commitments, accounts), 3))
    rnd = AggregationRound(
        ledger, task, 1, tmp_path, participants=ADDRESSES, secure="ckks", keys=keys
    )
    assert isinstance(rnd._sum, LeanRunningSum)
    x, w = updates(6), [1, 2, 3, 4, 5, 6]
    for i in range(N):
        blob = he.encrypt(x[i], public)
        assert len(blob) / D < 12 * 8192 / D  # one paired ciphertext at 11.25 B per real
        rnd.submit(sign_payload(KEYS[i], task, 1, blob, ledger.domain, weight=w[i]))
    req = rnd.decryption_request()
    for i in (1, 2, 3):
        share = party_share(
            parties[i], party_keys[i], req, keys=keys, ledger=ledger, participants=ADDRESSES
        )
        rnd.add_share(share)
    res = rnd.finalize()
    expected = (np.array(w, dtype=np.float64)[:, None] * x).sum(0)
    err = float(np.abs(np.asarray(res.update)[:D] - expected).max())
    assert err <= mp.precision(3, "lean16"), err
    report = audit(ledger, task, 1, tmp_path)
    assert report.ok, report.summary()


def test_robust_round_on_lean16_bucket_sums(ledger, tmp_path) -> None:
    """A median over bucket means under a lean16 key: each bucket's lean payloads summed mod
    2^58 and lifted, each party checks every bucket against its lean payloads; the outlier's
    bucket does not pass the median, and the audit recomputes every step."""
    from bcfl_engine import rules
    from bcfl_engine.decryption import party_share
    from bcfl_engine.he import multiparty as mp
    from bcfl_engine.he.mpepoch import KeyEpoch, open_epoch, parties_of

    party_keys = {i: keccak256(f"lean16 bucket party {i}".encode()) for i in (1, 2, 3)}
    accounts = {i: Account.from_key(k).address for i, k in party_keys.items()}
    parties = {i: mp.KeyShare.generate(party=i, preset="lean16") for i in (1, 2, 3)}
    public, crs = mp.local_setup(list(parties.values()))
    commitments = {i: p.commitment(crs) for i, p in parties.items()}
    task = ledger.create_task(aggregator=ledger.sender, participants=ADDRESSES, model_spec=b"lb")
    keys = open_epoch(ledger, task, KeyEpoch(public, parties_of(commitments, accounts), 3))
    rnd = AggregationRound(
        ledger, task, 1, tmp_path, participants=ADDRESSES, secure="ckks", keys=keys,
        rule="median", f=1,
    )  # fmt: skip
    x = np.clip(np.random.default_rng(8).normal(0, 0.05, (N, D)), -1, 1)
    x[3] = 0.9  # the outlier, within the bound an honest client's encrypt checks
    w = [1 + i % 2 for i in range(N)]
    for i in range(N):
        blob = he.encrypt(x[i], public)
        rnd.submit(sign_payload(KEYS[i], task, 1, blob, ledger.domain, weight=w[i]))
    req = rnd.decryption_request()
    assert len(req.buckets) >= 3
    for i in req.active:
        share = party_share(
            parties[i], party_keys[i], req, keys=keys, ledger=ledger, participants=ADDRESSES
        )
        rnd.add_share(share)
    res = rnd.finalize()
    wt = np.array(w, dtype=np.float64)
    means = np.stack([(wt[list(b)] @ x[list(b)]) / wt[list(b)].sum() for b in req.buckets])
    want = rules.get("median").reference(torch.as_tensor(means).float()).numpy()
    got = np.asarray(res.update)[:D]
    assert float(np.abs(got - want).max()) <= mp.precision(3, "lean16")
    assert float(np.abs(got).max()) < 0.45  # the outlier's bucket did not pass
    report = audit(ledger, task, 1, tmp_path)
    assert report.ok, report.summary()
