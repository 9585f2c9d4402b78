"""t-out-of-n multiparty CKKS keys: Shamir dealing of the key shares; any t parties decrypt.

The Shamir arithmetic is checked on its own (small ``N``: interpolation does not depend on it),
then five parties deal 3-of-5 after a collective key setup and decrypt stock TenSEAL payloads
under several active sets; two parties are refused, and without the refusal get garbage.
"""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from bcfl_engine import he
from bcfl_engine.errors import DecryptionRefused, InvalidArgument, KeyShareError
from bcfl_engine.he import mpcontext, mpformat, shamir
from bcfl_engine.he import multiparty as mp
from bcfl_engine.he import ntt as T

ts = pytest.importorskip("tenseal")
PARTIES = [1, 2, 3, 4, 5]
PRIMES = [1152921504606683137, 1152921504606748673]
D = 300


def test_shamir_any_t_points_interpolate_the_secret() -> None:
    rng = np.random.default_rng(1)
    secret = np.stack([rng.integers(0, q, 16, dtype=np.uint64) for q in PRIMES])
    points = shamir.deal(secret, 3, PARTIES, PRIMES, b"\x01" * 32)
    assert shamir.deal(secret, 3, PARTIES, PRIMES, b"\x01" * 32)[4].tolist() == points[4].tolist()

    def interpolate(active: tuple[int, ...]) -> np.ndarray:
        out = np.zeros_like(secret)
        for k, q in enumerate(PRIMES):
            for j in active:
                lam = shamir.lagrange_at_zero(j, active, q)
                out[k] = T.addmod(out[k], shamir.scale(points[j][k], lam, q), q)
        return out

    for active in itertools.combinations(PARTIES, 3):
        assert np.array_equal(interpolate(active), secret), active
    assert np.array_equal(interpolate(tuple(PARTIES)), secret)
    for active in itertools.combinations(PARTIES, 2):
        assert not np.array_equal(interpolate(active), secret), active


@pytest.fixture(scope="module")
def setup() -> dict[str, Any]:
    parties = [mp.KeyShare.generate(party=i) for i in PARTIES]
    public, crs = mp.local_setup(parties, threshold=3)  # known answer included
    assert all(p.threshold == (3, tuple(PARTIES)) for p in parties)
    dealt = {p.party: p.deal(threshold=3, parties=PARTIES) for p in parties}  # the same dealing
    ctx = ts.context_from(public)
    rng = np.random.default_rng(11)
    xs = [rng.uniform(-1, 1, D) for _ in PARTIES]
    payloads = [ts.ckks_vector(ctx, x.tolist()).serialize() for x in xs]
    return dict(crs=crs, parties=parties, public=public, dealt=dealt, xs=xs, payloads=payloads)


def _by_id(s: dict[str, Any]) -> dict[int, mp.KeyShare]:
    return {p.party: p for p in s["parties"]}


@pytest.mark.parametrize(
    "active, clients",
    [((1, 2, 3), (0, 1, 2, 3, 4)), ((2, 4, 5), (0, 1, 2, 3)), ((1, 3, 4, 5), (1, 2, 3, 4))],
    ids=["123", "245", "1345"],
)
def test_any_t_parties_decrypt(
    setup: dict[str, Any], active: tuple[int, ...], clients: tuple[int, ...]
) -> None:
    payloads = [setup["payloads"][c] for c in clients]
    agg = he.aggregate(payloads, context=setup["public"])
    parties = _by_id(setup)
    shares = [
        parties[j].decryption_share(agg, contributions=payloads, active=list(active))
        for j in active
    ]
    values = mp.combine_decryption(agg, shares)
    expected = np.sum([setup["xs"][c] for c in clients], axis=0)
    assert np.abs(values - expected).max() <= he.PRESETS["threshold"].precision


def test_known_answer_after_dealing(setup: dict[str, Any]) -> None:
    assert mp.known_answer(setup["public"], setup["crs"], setup["parties"]) <= 1e-6


def test_t_minus_one_parties_are_refused_and_get_garbage(setup: dict[str, Any]) -> None:
    payloads = setup["payloads"][:2]
    agg = he.aggregate(payloads, context=setup["public"])
    parties = _by_id(setup)
    with pytest.raises(
        DecryptionRefused, match="party 1: an active set of 2 parties; the threshold is 3"
    ):
        parties[1].decryption_share(agg, contributions=payloads, active=[1, 2])
    # Without the refusal: two Lagrange-weighted shares decode to values far from the sum.
    prm = mp.params()
    layout, res, version = mpcontext._residues(agg, prm.info, "agg")
    digest = mp.c1_digest(res[:, 1], layout.parms_id)
    m = res[:, 0].copy()
    for j in (1, 2):
        d = parties[j]._share(res, layout.primes, digest, (1, 2))
        for k, q in enumerate(layout.primes):
            m[:, k] = T.addmod(m[:, k], d[:, k], q)
    values = mpcontext._decode(m, layout, version, prm)
    assert np.abs(values - setup["xs"][0] - setup["xs"][1]).max() > 1.0


def test_missing_share_and_outsiders(setup: dict[str, Any]) -> None:
    payloads = setup["payloads"][2:]
    agg = he.aggregate(payloads, context=setup["public"])
    parties = _by_id(setup)
    shares = [
        parties[j].decryption_share(agg, contributions=payloads, active=[3, 4, 5])
        for j in (3, 4, 5)
    ]
    with pytest.raises(KeyShareError, match="party 5 of the active set sent no share"):
        mp.combine_decryption(agg, shares[:2])
    with pytest.raises(DecryptionRefused, match="party 9 of the active set is not one of"):
        parties[3].decryption_share(agg, contributions=payloads, active=[3, 4, 9])


def test_state_survives_save_and_load(setup: dict[str, Any], tmp_path: Path) -> None:
    party = _by_id(setup)[4]
    payloads = setup["payloads"][1:4]
    agg = he.aggregate(payloads, context=setup["public"])
    path = tmp_path / "p4"
    party.save(path)
    loaded = mp.KeyShare.load(path)
    assert loaded.threshold == (3, tuple(PARTIES))
    first = party.decryption_share(agg, contributions=payloads, active=[2, 4, 5])
    assert loaded.decryption_share(agg, contributions=payloads, active=[2, 4, 5]) == first


def test_bad_dealings_are_named(setup: dict[str, Any]) -> None:
    dealt = setup["dealt"]
    fresh = mp.KeyShare.generate(party=2)
    good = {d: dealt[d][2] for d in PARTIES}
    with pytest.raises(KeyShareError, match="party 3 dealt a share for party 4") as info:
        fresh.accept_dealt({**good, 3: dealt[3][4]})
    assert info.value.party == 3
    with pytest.raises(KeyShareError, match="party 5 dealt nothing"):
        fresh.accept_dealt({d: good[d] for d in PARTIES[:4]})
    other = setup["parties"][0].deal(threshold=2, parties=PARTIES)
    with pytest.raises(KeyShareError, match="party 1 dealt for another threshold"):
        fresh.accept_dealt({**good, 1: other[2]})
    with pytest.raises(KeyShareError, match="party 4"):
        fresh.accept_dealt({**good, 4: good[4][:-3]})
    with pytest.raises(KeyShareError, match="party 1: its dealt share names dealer 2"):
        fresh.accept_dealt({**good, 1: good[2]})
    assert fresh.threshold is None  # nothing kept from a refused dealing
    with pytest.raises(InvalidArgument):
        fresh.deal(threshold=6, parties=PARTIES)
    with pytest.raises(InvalidArgument):
        fresh.deal(threshold=2, parties=[1, 3])
    assert mpformat.read_dealt(good[1])[:2] == (1, 2)
