"""The byte formats of multiparty keys: every truncation and every corrupted header byte of a
public share, a decryption share, a dealt share and a key file raises KeyShareError (never an
IndexError or struct.error), and a well-formed object round-trips. Small N: the formats do not
depend on it. Also the deterministic samplers they are filled from."""

from __future__ import annotations

import math

import numpy as np
import pytest

from bcfl_engine.errors import KeyShareError
from bcfl_engine.he import mpformat as fmt
from bcfl_engine.he import sampling
from bcfl_engine.he.mpcontext import SMUDGE_BOUND

Q = (1152921504606683137, 1152921504606748673)
N = 1024  # the smallest ring degree a public share may declare


def _res(shape: tuple[int, ...], seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, Q[0], size=shape, dtype=np.uint64)


def _objects() -> dict[str, tuple[bytes, object]]:
    shamir = fmt.Shamir(2, (1, 2, 3), _res((2, 16), 3))
    dec = fmt.DecryptionShare(7, b"\x05" * 32, (2, 7), "threshold", _res((2, 2, 16), 2))
    return {
        "public": (
            fmt.write_public_share(4, b"\x01" * 32, Q, _res((2, N), 1)),
            fmt.read_public_share,
        ),
        "decryption": (fmt.write_decryption_share(dec), fmt.read_decryption_share),
        "dealt": (fmt.write_dealt(1, 3, "threshold", shamir), fmt.read_dealt),
        "key": (fmt.write_key(5, "threshold", b"\x09" * 32, shamir), fmt.read_key),
        "key-plain": (fmt.write_key(5, "threshold", b"\x09" * 32), fmt.read_key),
    }


@pytest.mark.parametrize("name", list(_objects()))
def test_truncations_and_corruptions_raise_key_share_error(name: str) -> None:
    blob, read = _objects()[name]
    read(blob)  # well formed
    cuts = sorted({*range(0, min(64, len(blob))), *range(len(blob) - 40, len(blob))})
    for cut in cuts:
        if name == "key" and cut == len(blob) - 8 * 32 - 6 - 4 - 12:
            continue  # the plain key file (seed only) is a valid prefix of a key with state
        with pytest.raises(KeyShareError):
            read(blob[:cut])
    with pytest.raises(KeyShareError):
        read(blob + b"\x00" * 8) if name != "public" else read(blob + b"\x00")
    for pos in range(0, 5):  # magic and version
        bad = bytearray(blob)
        bad[pos] ^= 0xFF
        with pytest.raises(KeyShareError):
            read(bytes(bad))


def test_round_trips() -> None:
    objs = _objects()
    pub = fmt.read_public_share(objs["public"][0])
    assert (pub.party, pub.crs, pub.primes) == (4, b"\x01" * 32, Q)
    assert np.array_equal(pub.residues, _res((2, N), 1))
    dec = fmt.read_decryption_share(objs["decryption"][0])
    assert (dec.party, dec.active, dec.preset) == (7, (2, 7), "threshold")
    assert np.array_equal(dec.residues, _res((2, 2, 16), 2))
    dealer, recipient, preset, st = fmt.read_dealt(objs["dealt"][0])
    assert (dealer, recipient, preset, st.threshold, st.parties) == (
        1,
        3,
        "threshold",
        2,
        (1, 2, 3),
    )
    party, preset, seed, st2 = fmt.read_key(objs["key"][0])
    assert (party, seed) == (5, b"\x09" * 32) and st2 is not None
    assert np.array_equal(st2.residues, st.residues)
    assert fmt.read_key(objs["key-plain"][0])[3] is None
    assert fmt.commitment(objs["public"][0]) != fmt.commitment(objs["public"][0][:-1] + b"\x01")


def test_samplers_are_deterministic_and_in_range() -> None:
    q = Q[0]
    a = sampling.uniform_mod(q, 4096, b"t", b"seed")
    assert np.array_equal(a, sampling.uniform_mod(q, 4096, b"t", b"seed"))
    assert not np.array_equal(a, sampling.uniform_mod(q, 4096, b"t", b"seed2"))
    assert int(a.max()) < q and a.std() > q / 4  # uniform below q: std q / sqrt(12)
    s = sampling.ternary(30000, b"t", b"seed")
    counts = np.bincount(s + 1)
    assert set(np.unique(s).tolist()) == {-1, 0, 1} and counts.min() > 9000
    e = sampling.binomial(100000, 21, b"t", b"seed")
    assert abs(e.std() - 21**0.5 / 2**0.5) < 0.05 and np.abs(e).max() <= 21
    assert abs(e.mean()) < 0.05
    bound = SMUDGE_BOUND
    assert bound == math.isqrt(3 << 100)  # standard deviation bound / sqrt(3) = 2^50
    big = sampling.uniform_int(100000, bound, b"t", b"seed")
    assert int(np.abs(big).max()) <= bound and int(np.abs(big).max()) > 0.99 * bound
    assert abs(big.std() / 2.0**50 - 1) < 0.02 and abs(big.mean()) < 2.0**50 / 100
    tiny = sampling.uniform_int(3000, 1, b"t", b"seed")
    assert set(np.unique(tiny).tolist()) == {-1, 0, 1}
    # length-prefixed parts: moving a byte between parts changes the stream
    assert sampling.xof(b"t", b"ab", b"c", nbytes=16) != sampling.xof(b"t", b"a", b"bc", nbytes=16)
