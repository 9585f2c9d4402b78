"""Multiparty CKKS keys: stock TenSEAL payloads under a collective key, decrypted only together.

One setup of five parties (the "threshold" preset) serves the module. Each attack of
THRESHOLD_CKKS.md is run twice: through the public API, where its guard refuses it, and through
the unguarded internals, where it succeeds, so that each test fails without its guard.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from bcfl_engine import errors as he_errors
from bcfl_engine import he
from bcfl_engine.errors import DecryptionRefused, InvalidArgument, KeyShareError
from bcfl_engine.he import mpcontext, mpformat
from bcfl_engine.he import multiparty as mp

ts = pytest.importorskip("tenseal")
PARTIES = [1, 2, 3, 4, 5]
D = 5000  # two ciphertexts at N = 8192


@pytest.fixture(scope="module")
def setup() -> dict[str, Any]:
    crs = mp.new_crs()
    parties = [mp.KeyShare.generate(party=i) for i in PARTIES]
    commitments = [p.commitment(crs) for p in parties]
    shares = [p.public_share(crs) for p in parties]
    public = mp.combine_public(shares, crs, commitments=commitments)
    ctx = ts.context_from(public)
    rng = np.random.default_rng(7)
    xs = [rng.uniform(-1, 1, D) for _ in PARTIES]
    payloads = [ts.ckks_vector(ctx, x.tolist()).serialize() for x in xs]
    agg = he.aggregate(payloads, context=public)
    return dict(
        crs=crs,
        parties=parties,
        commitments=commitments,
        shares=shares,
        public=public,
        ctx=ctx,
        xs=xs,
        payloads=payloads,
        agg=agg,
    )


def _shares(s: dict[str, Any], parties: list[mp.KeyShare], agg: Any = None) -> list[bytes]:
    agg = s["agg"] if agg is None else agg
    active = [p.party for p in parties]
    return [p.decryption_share(agg, contributions=s["payloads"], active=active) for p in parties]


def test_public_context_is_public_only(setup: dict[str, Any]) -> None:
    ctx = setup["ctx"]
    assert ctx.is_public() and ctx.has_public_key() and not ctx.has_secret_key()
    assert ctx.global_scale == 2.0**80
    assert not ts.context_from(mp.params().template).has_secret_key()  # no key anywhere here


def test_compact_encrypt_is_refused_at_this_scale(setup: dict[str, Any]) -> None:
    """q_0 has 60 bits and the scale 80: a lowest-level payload would decrypt to garbage."""
    with pytest.raises(InvalidArgument, match="cannot hold the scale 2\\^80"):
        he.encrypt(np.ones(4), setup["public"])


def test_known_answer_after_setup(setup: dict[str, Any]) -> None:
    err = mp.known_answer(setup["public"], setup["crs"], setup["parties"])
    assert err <= he.PRESETS["threshold"].precision == mp.precision(5) == mp.precision(8)
    assert mp.precision(32) == 2 * mp.precision(8)  # grows like sqrt(parties) past 8


def test_stock_payloads_decrypt_to_the_sum(setup: dict[str, Any]) -> None:
    values = mp.combine_decryption(setup["agg"], _shares(setup, setup["parties"]))
    expected = np.sum(setup["xs"], axis=0)
    assert values.shape == (D,) and values.dtype == np.float64
    err = float(np.abs(values - expected).max())
    assert err <= he.PRESETS["threshold"].precision, err
    assert err <= 1e-6 * float(np.abs(expected).max())


def test_shares_are_deterministic_and_order_free(setup: dict[str, Any]) -> None:
    first = _shares(setup, setup["parties"])
    assert _shares(setup, setup["parties"]) == first  # same c1, same set: the same share
    values = mp.combine_decryption(setup["agg"], first[::-1])
    assert np.abs(values - np.sum(setup["xs"], axis=0)).max() <= 1e-6


def test_missing_share_is_named_and_leaving_a_party_out_gives_garbage(
    setup: dict[str, Any],
) -> None:
    shares = _shares(setup, setup["parties"])
    with pytest.raises(KeyShareError, match="party 5") as info:
        mp.combine_decryption(setup["agg"], shares[:4])
    assert info.value.party == 5
    # Four parties agreeing among themselves to leave the fifth out: N-of-N gives garbage.
    s = dict(setup)
    s["agg"] = he.aggregate(setup["payloads"][:4], context=setup["public"])
    s["payloads"] = setup["payloads"][:4]
    values = mp.combine_decryption(s["agg"], _shares(s, setup["parties"][:4]))
    assert np.abs(values - np.sum(setup["xs"][:4], axis=0)).max() > 1.0


def test_foreign_key_gives_garbage(setup: dict[str, Any]) -> None:
    outsider = mp.KeyShare.generate(party=5)  # same id, another seed: not in the setup
    parties = [*setup["parties"][:4], outsider]
    values = mp.combine_decryption(setup["agg"], _shares(setup, parties))
    assert np.abs(values - np.sum(setup["xs"], axis=0)).max() > 1.0


def test_rogue_key_is_rejected_by_its_commitment(setup: dict[str, Any]) -> None:
    """The last party reveals p_m = p_own - sum(p_honest): the collective key becomes its own."""
    crs, parties = setup["crs"], setup["parties"]
    honest = [mpformat.read_public_share(s).residues for s in setup["shares"][:4]]
    own = mpformat.read_public_share(setup["shares"][4]).residues
    rogue = own.copy()
    for k, q in enumerate(mp.params().key_primes):
        for h in honest:
            rogue[k] = mp.T.submod(rogue[k], h[k], q)
    rogue_bytes = mpformat.write_public_share(5, crs, mp.params().key_primes, rogue)
    with pytest.raises(KeyShareError, match=r"party 5.*commitment") as info:
        mp.combine_public(
            [*setup["shares"][:4], rogue_bytes], crs, commitments=setup["commitments"]
        )
    assert info.value.party == 5
    # Without the commitment check the attacker alone decrypts a client's update.
    public = mp.public_key_context([*honest, rogue], crs)
    ctx = ts.context_from(public)
    victim = np.linspace(-1, 1, 100)
    blob = ts.ckks_vector(ctx, victim.tolist()).serialize()
    got = _unguarded_decrypt(blob, [parties[4]])
    assert np.abs(got - victim).max() <= 1e-6


def _unguarded_decrypt(blob: bytes, parties: list[mp.KeyShare]) -> np.ndarray:
    """What a party that skips every guard would compute: c0 + sum c1 s_i + e_i, decoded."""
    prm = mp.params()
    layout, res, version = mpcontext._residues(blob, prm.info, "blob")
    digest = mp.c1_digest(res[:, 1], layout.parms_id)
    m = res[:, 0].copy()
    active = tuple(p.party for p in parties)
    for p in parties:
        d = p._share(res, layout.primes, digest, active)
        for j, q in enumerate(layout.primes):
            m[:, j] = mp.T.addmod(m[:, j], d[:, j], q)
    return mpcontext._decode(m, layout, version, prm)


def test_decryption_oracle_one_client_is_refused(setup: dict[str, Any]) -> None:
    """The server offers client 0's ciphertext as the aggregate."""
    one = setup["payloads"][0]
    for p in setup["parties"]:
        with pytest.raises(DecryptionRefused, match=f"party {p.party}.*not the sum"):
            p.decryption_share(one, contributions=setup["payloads"], active=PARTIES)
    # Without the guard every party's share decrypts that single update.
    got = _unguarded_decrypt(one, setup["parties"])
    assert np.abs(got - setup["xs"][0]).max() <= 1e-6


def test_decryption_oracle_too_few_contributors_is_refused(setup: dict[str, Any]) -> None:
    one = setup["payloads"][:1]
    agg = he.aggregate(one, context=setup["public"])
    p = setup["parties"][0]
    with pytest.raises(DecryptionRefused, match="min_clients=3"):
        p.decryption_share(agg, contributions=one, active=PARTIES, min_clients=3)
    # The same payload listed three times is one contribution.
    agg3 = he.aggregate(one * 3, context=setup["public"])
    with pytest.raises(DecryptionRefused, match="1 distinct"):
        p.decryption_share(agg3, contributions=one * 3, active=PARTIES, min_clients=2)


def test_weighted_aggregate(setup: dict[str, Any]) -> None:
    """FedAvg's integer weights: the party checks c1 against the weighted sum of the c1."""
    payloads, w = setup["payloads"][:3], [3, 1, 2]
    agg = he.aggregate(payloads, w, context=setup["public"])
    with pytest.raises(DecryptionRefused, match="not the sum"):
        setup["parties"][0].decryption_share(agg, contributions=payloads, active=PARTIES)
    shares = [
        p.decryption_share(agg, contributions=payloads, active=PARTIES, weights=w)
        for p in setup["parties"]
    ]
    values = mp.combine_decryption(agg, shares)
    expected = sum(wi * x for wi, x in zip(w, setup["xs"][:3], strict=True))
    assert np.abs(values - expected).max() <= he.PRESETS["threshold"].precision
    # A zero weight drops a contribution from the sum and from the count.
    agg0 = he.aggregate(payloads, [1, 0, 0], context=setup["public"])
    with pytest.raises(DecryptionRefused, match="1 distinct"):
        setup["parties"][0].decryption_share(
            agg0, contributions=payloads, active=PARTIES, weights=[1, 0, 0]
        )
    with pytest.raises(InvalidArgument, match="weights"):
        setup["parties"][0].decryption_share(
            agg, contributions=payloads, active=PARTIES, weights=[1, 2]
        )


def test_retry_under_another_active_set_is_refused(setup: dict[str, Any], tmp_path: Path) -> None:
    s = dict(setup)
    s["payloads"] = setup["payloads"][1:]
    s["agg"] = he.aggregate(s["payloads"], context=setup["public"])
    party = mp.KeyShare(1, "threshold", os.urandom(32))
    path = tmp_path / "party1.key"
    party.save(path)
    first = party.decryption_share(s["agg"], contributions=s["payloads"], active=PARTIES)
    again = party.decryption_share(s["agg"], contributions=s["payloads"], active=PARTIES[::-1])
    assert again == first
    with pytest.raises(DecryptionRefused, match=r"party 1.*already shared.*\[1, 2, 3, 4\]"):
        party.decryption_share(s["agg"], contributions=s["payloads"], active=[1, 2, 3, 4])
    # The refusal survives a restart: the log lives next to the key file.
    reloaded = mp.KeyShare.load(path)
    with pytest.raises(DecryptionRefused):
        reloaded.decryption_share(s["agg"], contributions=s["payloads"], active=[1, 2, 3])


def test_save_load_0600(tmp_path: Path) -> None:
    crs = mp.new_crs()
    party = mp.KeyShare.generate(party=3)
    path = tmp_path / "k"
    party.save(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    loaded = mp.KeyShare.load(path)
    assert loaded.party == 3 and loaded.public_share(crs) == party.public_share(crs)
    assert party.public_share(mp.new_crs()) != party.public_share(crs)
    assert "seed" not in repr(party) and party._seed.hex() not in repr(party)
    path.write_bytes(path.read_bytes()[:-1])
    with pytest.raises(KeyShareError, match="seed"):
        mp.KeyShare.load(path)
    party.save(path)
    path.with_name("k.log").write_text('{"c1": "zz", "active": [1]}\n')
    with pytest.raises(KeyShareError, match="line 1 is corrupt"):
        mp.KeyShare.load(path)
    with pytest.raises(InvalidArgument, match="multiparty keys use threshold"):
        mp.KeyShare.generate(party=1, preset="default")


def test_bad_public_shares_are_named(setup: dict[str, Any]) -> None:
    crs, shares, commits = setup["crs"], setup["shares"], setup["commitments"]
    with pytest.raises(KeyShareError, match="party 2") as info:
        mp.combine_public([shares[0], shares[1][:-8]], crs, commitments=commits[:2])
    assert info.value.party == 2
    with pytest.raises(KeyShareError, match=r"party 1.*two public shares"):
        mp.combine_public([shares[0], shares[0]], crs, commitments=commits[:2])
    with pytest.raises(KeyShareError, match="party 3 committed"):
        mp.combine_public(
            shares[:2], crs, commitments=dict(zip(PARTIES[:3], commits[:3], strict=True))
        )
    with pytest.raises(KeyShareError, match=r"party 1.*without a commitment"):
        mp.combine_public(shares[:2], crs, commitments={2: commits[1]})
    other = mp.new_crs()
    p = setup["parties"][0]
    with pytest.raises(KeyShareError, match=r"party 1.*another CRS"):
        mp.combine_public([p.public_share(other)], crs, commitments=[p.commitment(other)])
    with pytest.raises(InvalidArgument):
        mp.combine_public(shares, b"short", commitments=commits)


def test_bad_decryption_shares_are_named(setup: dict[str, Any]) -> None:
    agg, shares = setup["agg"], _shares(setup, setup["parties"])
    other = he.aggregate(setup["payloads"][:3], context=setup["public"])
    foreign = setup["parties"][1].decryption_share(
        other, contributions=setup["payloads"][:3], active=PARTIES
    )
    with pytest.raises(KeyShareError, match=r"party 2.*another ciphertext") as info:
        mp.combine_decryption(agg, [shares[0], foreign, *shares[2:]])
    assert info.value.party == 2
    with pytest.raises(KeyShareError, match=r"party 3.*two decryption shares"):
        mp.combine_decryption(agg, [*shares, shares[2]])
    with pytest.raises(KeyShareError, match="party 4"):
        mp.combine_decryption(agg, [*shares[:3], shares[3][:-1], shares[4]])
    outsider = mp.KeyShare.generate(party=9)
    extra = outsider.decryption_share(agg, contributions=setup["payloads"], active=[*PARTIES, 9])
    with pytest.raises(KeyShareError, match=r"party 9.*not in the active set"):
        mp.combine_decryption(agg, [*shares, extra])
    with pytest.raises(KeyShareError, match="party 9 is not a party of this key") as info:
        mp.combine_decryption(agg, [*shares, extra], parties=PARTIES)
    assert info.value.party == 9
    rest = setup["payloads"][1:]  # another ciphertext: a new active set is allowed for it
    agg4 = he.aggregate(rest, context=setup["public"])
    four = [
        p.decryption_share(agg4, contributions=rest, active=[1, 2, 3, 4])
        for p in setup["parties"][:4]
    ]
    with pytest.raises(KeyShareError, match="party 5 is not in the active set: N-of-N"):
        mp.combine_decryption(agg4, four, parties=PARTIES)
    assert mp.combine_decryption(agg, shares, parties=PARTIES).shape == (D,)
    keyed = dict(zip(PARTIES, shares, strict=True))
    assert mp.combine_decryption(agg, keyed).shape == (D,)
    with pytest.raises(KeyShareError, match="party 2 sent a decryption share of party 3") as info:
        mp.combine_decryption(agg, {**keyed, 2: shares[2]})
    assert info.value.party == 2
    p = setup["parties"][0]
    with pytest.raises(InvalidArgument, match="party 1 is not in the active set"):
        p.decryption_share(agg, contributions=setup["payloads"], active=[2, 3])
    with pytest.raises(InvalidArgument):
        p.decryption_share(agg, contributions=setup["payloads"], active=[1, 1, 2])
    with pytest.raises(InvalidArgument, match="min_clients"):
        p.decryption_share(agg, contributions=setup["payloads"], active=PARTIES, min_clients=0)
    with pytest.raises(InvalidArgument):
        mp.KeyShare.generate(party=0)


def test_known_answer_catches_a_wrong_common_polynomial(setup: dict[str, Any]) -> None:
    """A key built with another CRS loads silently in TenSEAL; only the known answer tells."""
    residues = [mpformat.read_public_share(s).residues for s in setup["shares"]]
    wrong = mp.public_key_context(residues, mp.new_crs())
    assert ts.context_from(wrong).has_public_key()
    with pytest.raises(KeyShareError, match="known-answer test failed"):
        mp.known_answer(wrong, setup["crs"], setup["parties"])


def test_contributions_by_client_id(setup: dict[str, Any]) -> None:
    """Contributions keyed by authenticated client id; a bad one is named."""
    s = dict(setup)
    ids = ["hospital-a", "hospital-b", "hospital-c"]
    s["payloads"] = dict(zip(ids, setup["payloads"][2:], strict=True))
    agg = he.aggregate(list(s["payloads"].values()), context=setup["public"])
    p = setup["parties"][0]
    p.decryption_share(agg, contributions=s["payloads"], active=PARTIES)  # accepted
    bad = {**s["payloads"], "hospital-c": setup["payloads"][4][:-10]}
    with pytest.raises(he_errors.PayloadError, match="hospital-c"):
        p.decryption_share(agg, contributions=bad, active=PARTIES)


def test_unreduced_public_share_is_named(setup: dict[str, Any]) -> None:
    share = bytearray(setup["shares"][2])
    share[-8:] = (2**64 - 1).to_bytes(8, "little")
    with pytest.raises(KeyShareError, match=r"party 3.*not reduced") as info:
        mpformat.read_public_share(bytes(share))
    assert info.value.party == 3
