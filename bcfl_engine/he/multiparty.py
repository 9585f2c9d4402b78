"""Multiparty CKKS keys on stock TenSEAL: no single party can decrypt an update.

Each party holds a ternary secret ``s_i`` derived from its own 32-byte seed; nobody holds
``s = s_1 + ... + s_n``. Setup (Mouchet et al., PETS 2021; Lattigo's ``multiparty`` package):

1. a 32-byte common reference string (:func:`new_crs`, drawn jointly) expands by an XOF (BLAKE3) into a
   uniform polynomial ``a`` per key-level prime, sampled directly in the NTT domain;
2. each party broadcasts :meth:`KeyShare.commitment` (a hash of its public share), then, once
   every commitment is in, :meth:`KeyShare.public_share` ``p_i = -a s_i + e_i``; committing
   first stops the last party from choosing ``p_m = p_own - sum(p_honest)`` (a rogue key it
   alone could decrypt under);
3. :func:`combine_public` checks each reveal against its commitment and writes ``(sum p_i, a)``
   as the public key of a public-only TenSEAL context: clients encrypt with stock
   ``ts.ckks_vector(ts.context_from(public), x)``. Follow every setup with :func:`known_answer`:
   a key built from a wrong ``a`` loads silently and decrypts to garbage.

Decryption (N-of-N): for an aggregate ``(c0, c1)`` each party publishes
``d_i = c1 s_i + e_i`` (:meth:`KeyShare.decryption_share`), with smudging noise ``e_i``
uniform of standard deviation ``2^smudge_bits``, the preset's, with its stated margin over an
aggregate's noise (``Preset.smudge_margin``), derived from (seed, hash of ``c1``, active set);
:func:`combine_decryption` decodes ``c0 + sum d_i``. A party computes a share only for the sum of
the round's contributions, from at least ``min_clients`` of them, and never for the same ``c1``
under a second active set (two noisy shares of one ``c1`` leak the key; a retry with the same
set returns the same share). Passive security, as in Lattigo: no proof of correct shares.
Each party's noise alone must flood the aggregate's, so the decryption error grows like
``sqrt(parties)``: the preset's precision (2^-20) holds up to 8 parties (2.7e-6 at 100).
With ``dp_sigma`` each active party also adds its part of Gaussian DP noise
(:mod:`bcfl_engine.he.mpnoise`): the decryption then carries ``N(0, dp_sigma^2)`` per value.

t-of-n (:meth:`KeyShare.deal`, :meth:`KeyShare.accept_dealt`, :mod:`bcfl_engine.he.shamir`):
after the setup each party Shamir-shares its ``s_i`` (each dealt share goes to one party only,
over a confidential channel this module does not provide); a party then keeps ``F(j)``, a point
of the sum of the dealt polynomials, and its decryption share uses ``lambda_j F(j)`` for the
active set's Lagrange weight ``lambda_j``. The public key does not change. Fewer than ``t``
active parties are refused (and would decode garbage). A decryption whose combination fails
(a party dropped out) cannot be retried for the same ``c1`` under another active set: the
round must produce a new aggregate.

Formats: :mod:`bcfl_engine.he.mpformat`; NTT: :mod:`bcfl_engine.he.ntt`.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import DecryptionRefused, InvalidArgument, KeyShareError
from . import mpformat as fmt
from . import mpnoise, sampling, shamir
from . import ntt as T
from . import presets as _presets
from .mpcombine import (
    combine_decryption,
    combine_public,
    kat_vector,
    known_answer,
    local_setup,
    precision,
    public_key_context,
)
from .mpcontext import (
    KEY_ETA,
    SMUDGE_BOUND,
    Params,
    _check_crs,
    _check_party,
    _ntt_signed,
    _residues,
    c1_digest,
    common_poly,
    contributions_c1,
    new_crs,
    params,
)

# Presets that state a smudging noise and its margin (Preset.smudge_bits, smudge_margin).
MULTIPARTY_PRESETS = tuple(p.name for p in _presets.PRESETS.values() if p.multiparty)

__all__ = [
    "MULTIPARTY_PRESETS",
    "SMUDGE_BOUND",
    "KeyShare",
    "Params",
    "c1_digest",
    "combine_decryption",
    "combine_public",
    "common_poly",
    "kat_vector",
    "known_answer",
    "local_setup",
    "new_crs",
    "params",
    "precision",
    "public_key_context",
]


class KeyShare:
    """One party's secret key share; everything follows from its 32-byte seed.

    Never print, log or send it: :meth:`save` writes it with 0600 permissions.
    """

    def __init__(
        self,
        party: int,
        preset: str,
        seed: bytes,
        log_path: Path | None = None,
        shamir: fmt.Shamir | None = None,
    ):
        self.party = _check_party(party)
        self._shamir = shamir
        self.preset = _presets.get(preset).name
        if self.preset not in MULTIPARTY_PRESETS:
            raise InvalidArgument(
                f"preset {self.preset!r} states no smudging noise (smudge_bits) for its scale; "
                f"multiparty keys use {', '.join(MULTIPARTY_PRESETS)}"
            )
        if len(seed) != fmt.SEED_BYTES:
            raise KeyShareError(f"party {party}: a seed is 32 bytes; got {len(seed)}", party)
        self._seed = bytes(seed)
        self._log: dict[bytes, tuple[int, ...]] = {}
        self._dp_log: dict[bytes, dict[str, str]] = {}  # the DP noise of a logged c1, if any
        self._log_path = log_path
        if log_path is not None and log_path.exists():
            self._log, self._dp_log = fmt.read_log(log_path, self.party)

    def __repr__(self) -> str:
        return f"KeyShare(party={self.party}, preset={self.preset!r})"

    @classmethod
    def generate(cls, party: int, preset: str = "threshold") -> KeyShare:
        """A fresh share for ``party`` (an int >= 1: it is also the party's Shamir point)."""
        return cls(party, preset, os.urandom(fmt.SEED_BYTES))

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> KeyShare:
        """Read a share written by :meth:`save`; its decryption log lives next to it."""
        p = Path(path)
        party, preset, seed, shamir = fmt.read_key(p.read_bytes())
        return cls(party, preset, seed, log_path=p.with_name(p.name + ".log"), shamir=shamir)

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write the share with permissions 0600 (owner only); the decryption log follows it."""
        p = Path(path)
        fd = os.open(p, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.fchmod(fd, 0o600)
            os.write(fd, fmt.write_key(self.party, self.preset, self._seed, self._shamir))
        finally:
            os.close(fd)
        self._log_path = p.with_name(p.name + ".log")
        self._log_path.unlink(missing_ok=True)  # rewritten whole: this share's log only
        for digest, active in list(self._log.items()):
            self._record(digest, active, self._dp_log.get(digest))

    @functools.cached_property
    def _secret(self) -> tuple[np.ndarray, np.ndarray]:
        """``s`` in NTT form ``[K, N]`` over the key-level primes, and its Shoup constants."""
        prm = params(self.preset)
        s = sampling.ternary(prm.preset.poly_degree, b"bcfl-mp-secret", self._seed)
        s_hat = _ntt_signed(s, prm.key_primes)
        pre = np.stack([T.shoup(s_hat[k], q) for k, q in enumerate(prm.key_primes)])
        return s_hat, pre

    def public_share(self, crs: bytes) -> bytes:
        """``p_i = -a s_i + e_i`` over every key-level prime, NTT form (publish after every
        commitment is in)."""
        crs = _check_crs(crs)
        prm = params(self.preset)
        n = prm.preset.poly_degree
        a = common_poly(crs, prm.key_primes, n)
        s_hat, pre = self._secret
        e = sampling.binomial(n, KEY_ETA, b"bcfl-mp-error", self._seed, crs)
        e_hat = _ntt_signed(e, prm.key_primes)
        out = np.empty_like(a)
        for k, q in enumerate(prm.key_primes):
            as_k = T.mulmod_shoup(a[k], s_hat[k], pre[k], np.uint64(q))
            out[k] = T.submod(e_hat[k], as_k, q)
        return fmt.write_public_share(self.party, crs, prm.key_primes, out)

    def commitment(self, crs: bytes) -> bytes:
        """32 bytes binding this party to its public share for ``crs`` (broadcast first)."""
        return fmt.commitment(self.public_share(crs))

    @property
    def threshold(self) -> tuple[int, tuple[int, ...]] | None:
        """``(t, parties)`` once this party accepted a t-of-n dealing, else None (N-of-N)."""
        return None if self._shamir is None else (self._shamir.threshold, self._shamir.parties)

    def deal(self, threshold: int, parties: Sequence[int]) -> dict[int, bytes]:
        """Shamir shares of this party's key: ``{party id: bytes}``, each for that party only
        (send it over a confidential channel). Any ``threshold`` of ``parties`` then decrypt."""
        ids = [_check_party(p) for p in parties]
        if len(set(ids)) != len(ids) or self.party not in ids:
            raise InvalidArgument(f"parties {ids} must be distinct and include party {self.party}")
        if isinstance(threshold, bool) or not isinstance(threshold, int):
            raise InvalidArgument(f"threshold must be an int; got {threshold!r}")
        if not 1 <= threshold <= len(ids):
            raise InvalidArgument(f"threshold must be in [1, {len(ids)}]; got {threshold}")
        ids.sort()
        primes = params(self.preset).key_primes
        points = shamir.deal(self._secret[0], threshold, ids, primes, self._seed)
        return {
            j: fmt.write_dealt(self.party, j, self.preset, fmt.Shamir(threshold, tuple(ids), f))
            for j, f in points.items()
        }

    def accept_dealt(self, dealt: Mapping[int, bytes]) -> None:
        """Keep the sum of what every party dealt to this one (its own dealing included, which
        fixes the threshold and the parties): from then on this party decrypts as one of any
        ``threshold`` parties. :class:`KeyShareError` names a bad dealer; nothing is kept then."""
        prm = params(self.preset)
        shape = (len(prm.key_primes), prm.preset.poly_degree)
        parsed: dict[int, fmt.Shamir] = {}
        for key, raw in dealt.items():
            dealer, recipient, preset, st = fmt.read_dealt(bytes(raw))
            if dealer != key:
                raise KeyShareError(f"party {key}: its dealt share names dealer {dealer}", key)
            if recipient != self.party:
                raise KeyShareError(
                    f"party {dealer} dealt a share for party {recipient} to party {self.party}",
                    dealer,
                )
            if preset != self.preset or st.residues.shape != shape:
                raise KeyShareError(f"party {dealer} dealt for another preset", dealer)
            if (st.residues >= np.array(prm.key_primes, dtype=np.uint64)[:, None]).any():
                raise KeyShareError(f"party {dealer}: a dealt residue is not reduced", dealer)
            parsed[dealer] = st
        own = parsed.get(self.party)
        if own is None:
            raise KeyShareError(f"party {self.party}: its own dealing is missing", self.party)
        for dealer, st in parsed.items():
            if (st.threshold, st.parties) != (own.threshold, own.parties):
                raise KeyShareError(
                    f"party {dealer} dealt for another threshold or party set", dealer
                )
            if dealer not in own.parties:
                raise KeyShareError(
                    f"party {dealer} is not one of the parties {list(own.parties)}", dealer
                )
        missing = sorted(set(own.parties) - set(parsed))
        if missing:
            raise KeyShareError(
                f"party {missing[0]} dealt nothing to party {self.party}", missing[0]
            )
        total = own.residues.copy()
        for dealer, st in parsed.items():
            if dealer != self.party:
                for k, q in enumerate(prm.key_primes):
                    total[k] = T.addmod(total[k], st.residues[k], q)
        self._shamir = fmt.Shamir(own.threshold, own.parties, total)
        self.__dict__.pop("_shamir_pre", None)

    @functools.cached_property
    def _shamir_pre(self) -> np.ndarray:
        assert self._shamir is not None
        primes = params(self.preset).key_primes
        return np.stack([T.shoup(self._shamir.residues[k], q) for k, q in enumerate(primes)])

    def _share(
        self, res: np.ndarray, primes: tuple[int, ...], digest: bytes, active: tuple[int, ...]
    ) -> np.ndarray:
        """``c1 s_i + e_i`` ``[C, K, N]`` for the ciphertexts ``res`` ``[C, 2, K, N]``, no guard.
        t-of-n: ``s_i`` is ``lambda_i F(i)`` over the active set."""
        s_hat, pre = self._secret
        if self._shamir is not None:
            s_hat, pre = self._shamir.residues, self._shamir_pre
        c, _, k, n = res.shape
        tag = np.asarray(active, dtype="<u4").tobytes()
        bound = _presets.get(self.preset).smudge_bound
        noise = sampling.uniform_int(c * n, bound, b"bcfl-mp-smudge", self._seed, digest, tag)
        e_hat = _ntt_signed(noise.reshape(c, n), primes)
        out = np.empty((c, k, n), dtype=np.uint64)
        for j, q in enumerate(primes):
            if self._shamir is None:
                out[:, j] = T.mul_add(res[:, 1, j], s_hat[j], pre[j], q, e_hat[:, j])
            else:
                prod = T.mul_add(res[:, 1, j], s_hat[j], pre[j], q)
                lam = shamir.lagrange_at_zero(self.party, active, q)
                out[:, j] = T.addmod(shamir.scale(prod, lam, q), e_hat[:, j], q)
        return out

    def decryption_share(
        self,
        agg: Any,
        *,
        contributions: Sequence[Any] | Mapping[Any, Any],
        active: Sequence[int],
        min_clients: int = 2,
        weights: Sequence[int] | None = None,
        dp_sigma: float | None = None,
    ) -> bytes:
        """This party's share of the decryption of the aggregate ``agg``.

        Parameters
        ----------
        agg : the aggregate (CKKSVectorProto bytes from :func:`~bcfl_engine.he.aggregate`)
        contributions : the round's committed payloads (a mapping from authenticated client id
            to payload, or a list); ``agg``'s ``c1`` must equal the sum of theirs
        active : the parties decrypting together (this one included)
        min_clients : fewest distinct contributions a decryptable aggregate holds (a weight of 0
            does not count)
        weights : the integer client weights ``agg`` was summed with (``he.aggregate(payloads,
            weights)``, in the order of ``contributions``); None: a plain sum
        dp_sigma : the standard deviation of the Gaussian DP noise the *decrypted values* carry
            once every active party added its part (in the units of the decrypted sum: for
            :class:`~bcfl_engine.dp.GaussianDP`, ``noise_multiplier * clipping_norm``); this
            party adds ``N(0, dp_sigma^2 / len(active))`` per value (:mod:`.mpnoise`). None or
            0: smudging noise only

        Raises
        ------
        DecryptionRefused : ``agg`` is not the sum of ``contributions``, holds fewer than
            ``min_clients`` of them, or this ``c1`` was already shared under another active set
            or another ``dp_sigma``
        """
        if isinstance(min_clients, bool) or not isinstance(min_clients, int) or min_clients < 1:
            raise InvalidArgument(f"min_clients must be an int >= 1; got {min_clients!r}")
        ids = sorted({_check_party(a) for a in active})
        if len(ids) != len(active):
            raise InvalidArgument(f"active parties {list(active)} repeat a party")
        if self.party not in ids:
            raise InvalidArgument(f"party {self.party} is not in the active set {ids}")
        if self._shamir is not None:
            t, parties = self._shamir.threshold, self._shamir.parties
            outside = sorted(set(ids) - set(parties))
            if outside:
                raise DecryptionRefused(
                    f"party {self.party}: party {outside[0]} of the active set is not one of "
                    f"the parties {list(parties)}",
                    self.party,
                )
            if len(ids) < t:
                raise DecryptionRefused(
                    f"party {self.party}: an active set of {len(ids)} parties; the threshold is {t}",
                    self.party,
                )
        prm = params(self.preset)
        layout, res, _ = _residues(agg, prm.info, "aggregate")
        total, distinct = contributions_c1(contributions, weights, layout, prm.info)
        if distinct < min_clients:
            raise DecryptionRefused(
                f"party {self.party}: the aggregate holds {distinct} distinct contributions; "
                f"at least min_clients={min_clients} are required",
                self.party,
            )
        if not np.array_equal(total, res[:, 1]):
            raise DecryptionRefused(
                f"party {self.party}: the ciphertext's c1 is not the sum of the "
                "contributions' c1 (not this round's aggregate)",
                self.party,
            )
        digest = c1_digest(res[:, 1], layout.parms_id)
        sigma = mpnoise.check_sigma(dp_sigma, prm.preset.headroom)
        extra, noise_digest = mpnoise.draw(self._seed, digest, tuple(ids), sigma, layout)
        before = self._log.get(digest)
        if before is not None and before != tuple(ids):
            raise DecryptionRefused(
                f"party {self.party}: this ciphertext was already shared under the active set "
                f"{list(before)}; refusing {ids}",
                self.party,
            )
        if before is None:
            self._record(digest, tuple(ids), mpnoise.log_entry(sigma, noise_digest))
        else:
            mpnoise.check_logged(self.party, self._dp_log.get(digest), sigma, noise_digest)
        out = mpnoise.add_(self._share(res, layout.primes, digest, tuple(ids)), extra, layout)
        share = fmt.DecryptionShare(self.party, digest, tuple(ids), self.preset, out)
        return fmt.write_decryption_share(share)

    def _record(
        self, digest: bytes, active: tuple[int, ...], dp: dict[str, str] | None = None
    ) -> None:
        self._log[digest] = active
        entry: dict[str, Any] = {"c1": digest.hex(), "active": list(active)}
        if dp is not None:
            self._dp_log[digest] = entry["dp"] = dp
        if self._log_path is not None:
            fmt.append_log(self._log_path, entry)
