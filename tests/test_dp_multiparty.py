"""Distributed DP noise under multiparty CKKS keys (bcfl_engine.he.mpnoise, bcfl_engine.dp_shares).

The derivation (coefficient noise of variance ``2 sigma^2 Delta^2 / N`` decodes to
``N(0, sigma^2)`` per real value) checked on the decoder alone; the decrypted aggregate minus
the plaintext sum carries the declared standard deviation (within 2%) for N-of-N and 3-of-5,
each party ``sigma^2 / t`` of it; shares stay deterministic per (c1, active set, sigma) and
fresh per c1; the client's clip; and a private round under a multiparty key, its refusals and
its audit recomputing epsilon from the chain.
"""

from __future__ import annotations

import json
import math
from typing import Any

import numpy as np
import pytest

from bcfl_engine import dp as bdp
from bcfl_engine import he
from bcfl_engine.errors import DecryptionRefused, InvalidArgument
from bcfl_engine.he import mpnoise
from bcfl_engine.he import multiparty as mp
from bcfl_engine.he.decode import decode

ts = pytest.importorskip("tenseal")

PARTIES = [1, 2, 3, 4, 5]
SLOTS = 4096  # the "threshold" preset: N = 8192
D = 8 * SLOTS  # eight ciphertexts a vector: 32768 noisy values an aggregate
SIGMA = 0.25
SCALE = 2.0**80


def check_noise(noise: np.ndarray, sigma: float, tol: float = 0.02) -> None:
    """The sample std within ``tol`` of ``sigma`` and the mean within 4 standard errors of 0.
    2% is 5.1 standard errors of the sample std at 32768 values (sigma / sqrt(2 (d - 1)))."""
    d = noise.size
    std, mean = float(noise.std()), float(noise.mean())
    assert abs(std / sigma - 1) <= tol, (std, sigma, d)
    assert abs(mean) <= 4 * sigma / math.sqrt(d), (mean, sigma, d)


# ---- the derivation, on the decoder alone ------------------------------------------------------


@pytest.mark.parametrize("pair", [False, True], ids=["real", "paired"])
@pytest.mark.parametrize("active", [1, 3], ids=["t1", "t3"])
@pytest.mark.parametrize("sigma", [SIGMA, 2.0**30], ids=["small", "large"])
def test_coefficient_noise_decodes_to_the_declared_std(
    pair: bool, active: int, sigma: float
) -> None:
    """2^30 at t = 1 puts coefficients near 2^107: past int64, through the exact split."""
    prm = mp.params("threshold")
    primes = prm.key_primes[:2]  # a payload's primes (q_0 q_1)
    n, c = prm.preset.poly_degree, 8
    ids = tuple(range(1, active + 1))
    total = np.zeros((c, len(primes), n), dtype=np.uint64)
    for i in ids:
        part, _ = mpnoise.noise(bytes([i]) * 32, b"c1" * 16, ids, sigma, SCALE, (c, n), primes)
        one = decode(part, primes, SCALE, (n // 2,) * c, c * n, pair)
        check_noise(one, sigma / math.sqrt(active))  # one party's part: sigma^2 / t
        for k, q in enumerate(primes):
            total[:, k] = (total[:, k] + part[:, k]) % np.uint64(q)
    values = decode(total, primes, SCALE, (n // 2,) * c, c * n, pair)
    assert values.size == c * n // (1 if pair else 2)
    check_noise(values, sigma)
    # neighbouring slots and the real and imaginary parts are uncorrelated (iid, as derived)
    assert abs(np.corrcoef(values[:-1], values[1:])[0, 1]) < 4 / math.sqrt(values.size)


def test_residues_of_large_integers_are_exact() -> None:
    primes = mp.params("threshold").key_primes
    edges = [0, 1, -1, 2**53 + 2, -(2**53) - 2, 2**64 - 2**11, -(2**64) + 2**11, 2**64, -(2**64),
             3 * 2**70 + 2**20, -(3 * 2**70) - 2**20, 2**110, -(2**110), -5, 12345]  # fmt: skip
    rng = np.random.default_rng(5)
    values = [float(v) for v in edges] + list(np.rint(rng.standard_normal(500) * 2.0**90))
    assert all(float(int(v)) == v for v in values)  # every value is an exact float64 integer
    got = mpnoise.residues(np.array(values).reshape(1, -1), primes)
    for k, q in enumerate(primes):
        assert got[0, k].tolist() == [int(v) % q for v in values]


def test_coefficient_std_formula() -> None:
    assert mpnoise.coefficient_std(1.0, 2.0**80, 8192, 1) == 2.0**80 * math.sqrt(2 / 8192)
    assert mpnoise.coefficient_std(2.0, 1.0, 8, 4) == pytest.approx(2 * math.sqrt(2 / 32))
    assert mpnoise.colluding_noise_multiplier(1.0, 4, 3) == 0.5
    assert mpnoise.colluding_noise_multiplier(2.0, 5, 0) == 2.0
    with pytest.raises(InvalidArgument, match="colluding"):
        mpnoise.colluding_noise_multiplier(1.0, 3, 3)


# ---- collective decryption with noise ----------------------------------------------------------


def _fresh(parties: list[mp.KeyShare]) -> list[mp.KeyShare]:
    """The same parties (same seeds, same dealt shares), with empty decryption logs."""
    return [mp.KeyShare(p.party, p.preset, p._seed, shamir=p._shamir) for p in parties]


@pytest.fixture(scope="module", params=[None, 3], ids=["5-of-5", "3-of-5"])
def setup(request: Any) -> dict[str, Any]:
    parties = [mp.KeyShare.generate(party=i) for i in PARTIES]
    public, _ = mp.local_setup(parties, threshold=request.param)
    ctx = ts.context_from(public)
    rng = np.random.default_rng(11)
    xs = [rng.uniform(-1, 1, D) for _ in range(3)]
    payloads = [ts.ckks_vector(ctx, x.tolist()).serialize() for x in xs]
    agg = he.aggregate(payloads, context=public)
    active = PARTIES if request.param is None else [2, 4, 5]
    return dict(parties=parties, public=public, ctx=ctx, xs=xs, payloads=payloads, agg=agg,
                active=active)  # fmt: skip


def _decrypt(s: dict[str, Any], parties: list[mp.KeyShare], sigma: float | None) -> np.ndarray:
    chosen = [p for p in parties if p.party in s["active"]]
    shares = [
        p.decryption_share(
            s["agg"], contributions=s["payloads"], active=s["active"], min_clients=3, dp_sigma=sigma
        )
        for p in chosen
    ]
    return mp.combine_decryption(s["agg"], shares)


def test_decrypted_sum_carries_the_declared_noise(setup: dict[str, Any]) -> None:
    s = setup
    plain = np.sum(s["xs"], axis=0)
    out = _decrypt(s, _fresh(s["parties"]), SIGMA)
    check_noise(out - plain, SIGMA)
    # without DP the same key decrypts within its precision: the noise is the parties'
    clean = _decrypt(s, _fresh(s["parties"]), None)
    assert np.abs(clean - plain).max() <= 3 * mp.precision(len(s["active"]))


def test_each_party_adds_its_share_of_the_variance(setup: dict[str, Any]) -> None:
    """Party 5 with and without its DP part, the others unchanged: the difference of the two
    decryptions is party 5's noise alone, of variance sigma^2 / t (t - 1 colluders face it)."""
    s = setup
    t = len(s["active"])
    with_noise = _decrypt(s, _fresh(s["parties"]), SIGMA)
    chosen = [p for p in _fresh(s["parties"]) if p.party in s["active"]]
    shares = [
        p.decryption_share(
            s["agg"], contributions=s["payloads"], active=s["active"], min_clients=3,
            dp_sigma=SIGMA if p.party != 5 else None,
        )
        for p in chosen
    ]  # fmt: skip
    without_5 = mp.combine_decryption(s["agg"], shares)
    check_noise(with_noise - without_5, SIGMA / math.sqrt(t))
    assert mpnoise.colluding_noise_multiplier(1.0, t, t - 1) == pytest.approx(1 / math.sqrt(t))


def test_shares_are_deterministic_per_c1_and_fresh_across_c1(setup: dict[str, Any]) -> None:
    s = setup
    party = next(p for p in _fresh(s["parties"]) if p.party == s["active"][0])
    kw = dict(contributions=s["payloads"], active=s["active"], min_clients=3)
    first = party.decryption_share(s["agg"], dp_sigma=SIGMA, **kw)
    assert party.decryption_share(s["agg"], dp_sigma=SIGMA, **kw) == first  # a retry
    assert _fresh([party])[0].decryption_share(s["agg"], dp_sigma=SIGMA, **kw) == first
    with pytest.raises(DecryptionRefused, match=r"sigma 0\.25; refusing sigma 0\.5"):
        party.decryption_share(s["agg"], dp_sigma=0.5, **kw)
    with pytest.raises(DecryptionRefused, match="refusing sigma None"):
        party.decryption_share(s["agg"], **kw)
    plain = _fresh([party])[0]
    plain.decryption_share(s["agg"], **kw)
    with pytest.raises(DecryptionRefused, match=r"sigma None; refusing sigma 0\.25"):
        plain.decryption_share(s["agg"], dp_sigma=SIGMA, **kw)
    # 0 is no noise: the same share as without dp_sigma
    assert _fresh([party])[0].decryption_share(s["agg"], dp_sigma=0.0, **kw) == (
        _fresh([party])[0].decryption_share(s["agg"], **kw)
    )
    # another aggregate (another c1): independent noise
    payloads = [ts.ckks_vector(s["ctx"], x.tolist()).serialize() for x in s["xs"]]
    agg2 = he.aggregate(payloads, context=s["public"])
    plain_sum = np.sum(s["xs"], axis=0)
    n1 = _decrypt(s, _fresh(s["parties"]), SIGMA) - plain_sum
    n2 = _decrypt({**s, "agg": agg2, "payloads": payloads}, _fresh(s["parties"]), SIGMA) - plain_sum
    check_noise(n2, SIGMA)
    assert abs(np.corrcoef(n1, n2)[0, 1]) < 4 / math.sqrt(D)


def test_the_log_keeps_sigma_and_the_noise_digest(tmp_path: Any) -> None:
    parties = [mp.KeyShare.generate(party=i) for i in (1, 2)]
    public, _ = mp.local_setup(parties)
    ctx = ts.context_from(public)
    payloads = [ts.ckks_vector(ctx, [float(i)] * 10).serialize() for i in range(3)]
    agg = he.aggregate(payloads, context=public)
    kw = dict(contributions=payloads, active=[1, 2], min_clients=3)
    path = tmp_path / "p1.key"
    parties[0].save(path)
    first = parties[0].decryption_share(agg, dp_sigma=SIGMA, **kw)
    entry = json.loads(path.with_name("p1.key.log").read_text().splitlines()[-1])
    assert float(entry["dp"]["sigma"]) == SIGMA and len(entry["dp"]["noise"]) == 64
    loaded = mp.KeyShare.load(path)
    assert loaded.decryption_share(agg, dp_sigma=SIGMA, **kw) == first
    with pytest.raises(DecryptionRefused, match=r"refusing sigma 0\.5"):
        loaded.decryption_share(agg, dp_sigma=0.5, **kw)
    # a recomputation whose noise differs from the logged one (another machine's floating
    # point, simulated by an altered digest) is refused, not published
    entry["dp"]["noise"] = "00" * 32
    path.with_name("p1.key.log").write_text(json.dumps(entry) + "\n")
    with pytest.raises(DecryptionRefused, match="recomputed here differs"):
        mp.KeyShare.load(path).decryption_share(agg, dp_sigma=SIGMA, **kw)


@pytest.mark.parametrize("bad", [-1.0, math.nan, math.inf, True, "1", 1e12])
def test_bad_sigma_is_refused_before_anything_is_logged(bad: Any) -> None:
    parties = [mp.KeyShare.generate(party=i) for i in (1, 2)]
    public, _ = mp.local_setup(parties)
    ctx = ts.context_from(public)
    payloads = [ts.ckks_vector(ctx, [1.0]).serialize() for _ in range(2)]
    agg = he.aggregate(payloads, context=public)
    before = dict(parties[0]._log)  # the setup's known-answer decryption
    with pytest.raises(InvalidArgument, match="dp_sigma"):
        parties[0].decryption_share(agg, contributions=payloads, active=[1, 2], dp_sigma=bad)
    assert parties[0]._log == before


# ---- the client's clip -------------------------------------------------------------------------


def test_clip_update_bounds_the_norm_and_says_so() -> None:
    rng = np.random.default_rng(3)
    for scale in (1e-3, 0.7, 1.0, 3.0, 1e6):
        x = rng.standard_normal(1001) * scale / math.sqrt(1001)
        out, norm = bdp.clip_update(x, 1.0)
        assert norm == pytest.approx(float(np.linalg.norm(x)), rel=1e-12)
        got = float(np.linalg.norm(out.double().numpy()))
        assert got <= 1.0
        if norm > 1.0:  # scaled down to the bound, direction kept
            assert got == pytest.approx(1.0, rel=1e-6)
            assert np.allclose(out.numpy(), x / norm, atol=1e-6)
        else:
            assert np.array_equal(out.numpy(), x.astype(np.float32))
    # float32 rounding can push a clipped norm past C: it never does here
    for seed in range(200):
        x = np.random.default_rng(seed).standard_normal(257) * 10
        assert float(np.linalg.norm(bdp.clip_update(x, 0.3)[0].double().numpy())) <= 0.3
    with pytest.raises(InvalidArgument, match="non-finite"):
        bdp.clip_update([1.0, math.nan], 1.0)
    with pytest.raises(InvalidArgument, match="clipping_norm"):
        bdp.clip_update([1.0], 0.0)


# ---- a private round under a multiparty key ----------------------------------------------------

CLIENTS_N, ROUND_D = 5, 2 * SLOTS
Z, C = 0.5, 1.0


@pytest.fixture(scope="module")
def chain() -> dict[str, Any]:
    pytest.importorskip("web3")
    pytest.importorskip("dp_accounting")
    from eth_account import Account

    from bcfl_engine.chain import Ledger
    from bcfl_engine.he.mpepoch import KeyEpoch, parties_of
    from bcfl_engine.updates import keccak256

    client_keys = [keccak256(f"dp mp client {i}".encode()) for i in range(CLIENTS_N)]
    party_keys = {i: keccak256(f"dp mp party {i}".encode()) for i in (1, 2, 3)}
    accounts = {i: Account.from_key(k).address for i, k in party_keys.items()}
    parties = [mp.KeyShare.generate(party=i) for i in (1, 2, 3)]
    public, crs = mp.local_setup(parties)
    commitments = {p.party: p.commitment(crs) for p in parties}
    return dict(
        ledger=Ledger.embedded(), client_keys=client_keys, party_keys=party_keys,
        clients=[Account.from_key(k).address for k in client_keys], parties=parties,
        keys=KeyEpoch(public, parties_of(commitments, accounts), 3), public=public,
    )  # fmt: skip


def _task(c: dict[str, Any]) -> tuple[int, Any]:
    from bcfl_engine.he.mpepoch import open_epoch

    ledger = c["ledger"]
    task = ledger.create_task(aggregator=ledger.sender, participants=c["clients"], model_spec=b"d")
    return task, open_epoch(ledger, task, c["keys"])


def _private_round(
    c: dict[str, Any], task: int, keys: Any, r: int, store: Any, dp: Any, weight: int = 1
) -> tuple[Any, np.ndarray]:
    """Round ``r``: 4 of the 5 clients clip their own update, encrypt and submit it."""
    from bcfl_engine.round import AggregationRound, sign_payload

    ctx = ts.context_from(c["public"])
    rnd = AggregationRound(
        c["ledger"], task, r, store, participants=c["clients"], secure="ckks", keys=keys, dp=dp
    )
    rng = np.random.default_rng(r)
    total = np.zeros(ROUND_D)
    for i in range(4):
        clipped, norm = bdp.clip_update(rng.uniform(-1, 1, ROUND_D), C)
        assert norm > C  # these updates are clipped
        total += clipped.double().numpy()
        blob = ts.ckks_vector(ctx, clipped.tolist()).serialize()
        w = weight if i == 0 else 1
        rnd.submit(sign_payload(c["client_keys"][i], task, r, blob, c["ledger"].domain, weight=w))
    return rnd, total


def _share(c: dict[str, Any], keys: Any, req: Any, i: int, dp: Any) -> Any:
    from bcfl_engine.decryption import party_share

    party = next(p for p in c["parties"] if p.party == i)
    return party_share(
        party, c["party_keys"][i], req, keys=keys, ledger=c["ledger"],
        participants=c["clients"], dp=dp,
    )  # fmt: skip


def test_private_round_adds_distributed_noise_and_audit_recomputes_epsilon(chain, tmp_path):
    from bcfl_engine import protocol
    from bcfl_engine.round import audit
    from bcfl_engine.store import PayloadStore

    c = chain
    task, keys = _task(c)
    dp = bdp.GaussianDP(clipping_norm=C, noise_multiplier=Z, num_sampled_clients=4)
    rnd, total = _private_round(c, task, keys, 1, tmp_path, dp)
    req = rnd.decryption_request()
    assert req.dp == dp
    other = bdp.GaussianDP(C, 2 * Z, 4)
    for wrong in (None, other):  # a party adds only the noise it agreed to, to a request naming it
        with pytest.raises(DecryptionRefused, match="DP parameters"):
            _share(c, keys, req, 1, wrong)
    for i in (1, 2, 3):
        rnd.add_share(_share(c, keys, req, i, dp))
    res = rnd.finalize()
    # The committed result is the noisy sum; over 4 (m) it is the private mean of noise z C / m.
    # 8192 values: 5% is 6.4 standard errors of the sample std.
    check_noise(res.update - total, dp.sum_noise_std, tol=0.05)
    check_noise((res.update - total) / 4, dp.noise_std, tol=0.05)
    store = PayloadStore(tmp_path)
    raw = store.get(c["ledger"].record(task, 1).meta_hash, hasher=protocol.meta_hash)
    meta = json.loads(raw)["dp"]
    want = bdp.epsilon(Z, 4 / CLIENTS_N, 1, 1e-5)
    assert meta["sample_rate"] == 4 / CLIENTS_N and meta["epsilon"] == pytest.approx(want)
    report = audit(c["ledger"], task, 1, tmp_path)
    assert report.ok, report.summary()
    line = next(x for x in report.checked if x.startswith("privacy"))
    assert f"round 1: {want:.4g}" in line, line
    assert any("decrypted by the parties' stored shares" in x for x in report.checked)
    assert any("every payload of weight 1" in x for x in report.checked)
    # the sensitivity premise is checked too: a committed weight other than 1 is a finding
    from bcfl_engine.dp_shares import audit_distributed

    full = protocol.check_meta(json.loads(raw))
    problems: list[str] = []
    audit_distributed(c["ledger"], store, rnd.key, task, 1, full, [1, 2, 1, 1], problems)
    assert problems == [
        "1 payload(s) of this private round have weight != 1: the parties' noise covers an "
        "unweighted sum only"
    ]


def test_private_round_refusals(chain, tmp_path):
    from bcfl_engine.errors import BudgetExceeded, DPUnsupported
    from bcfl_engine.round import AggregationRound

    c = chain
    task, keys = _task(c)
    # a client weight other than 1 is refused at submit, before the round could close on it
    # (the parties would refuse it too: the noise covers an unweighted sum)
    from bcfl_engine.errors import InvalidWeight

    dp = bdp.GaussianDP(C, Z, 4)
    with pytest.raises(InvalidWeight, match="weight 2; a private round"):
        _private_round(c, task, keys, 1, tmp_path / "a", dp, weight=2)
    # past the budget: refused before the request goes out, so before any party draws noise
    task, keys = _task(c)
    one, two = bdp.epsilon(Z, 0.8, 1, 1e-5), bdp.epsilon(Z, 0.8, 2, 1e-5)
    tight = bdp.GaussianDP(C, Z, 4, budget=(one + two) / 2)
    rnd, _ = _private_round(c, task, keys, 1, tmp_path / "b", tight)
    req = rnd.decryption_request()
    for i in (1, 2, 3):
        rnd.add_share(_share(c, keys, req, i, tight))
    rnd.finalize()
    rnd, _ = _private_round(c, task, keys, 2, tmp_path / "b", tight)
    with pytest.raises(BudgetExceeded, match="over the budget"):
        rnd.decryption_request()
    assert rnd._request is None and c["ledger"].record(task, 2) is None
    # a robust (bucketed) rule has no stated sensitivity
    with pytest.raises(DPUnsupported, match="median"):
        AggregationRound(
            c["ledger"], task, 3, tmp_path / "c", participants=c["clients"], secure="ckks",
            keys=keys, rule="median", f=1, dp=dp,
        )  # fmt: skip
