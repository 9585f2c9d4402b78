"""CKKS parameter presets: ring degree, prime chain, scale, and what they give.

Security follows the HomomorphicEncryption.org standard (Albrecht et al., "Homomorphic
Encryption Security Standard", 2018), table for classical 128-bit security with ternary
secrets: the total coefficient modulus ``log2 q`` may not exceed :data:`MAX_LOG_Q_128` for the
ring degree ``N``. SEAL (inside TenSEAL) enforces the same table: it refuses a context above it.

A sum needs no multiplicative depth, so clients encrypt at the lowest level, where only the
first prime ``q_0`` is left. That fixes three numbers of a preset:

- ``precision``: the largest absolute error of one fresh lowest-level encryption, measured
  over every slot (see ``tests/test_he_client.py``) and stated with a margin of about 4x.
  A weighted sum of ``n`` ciphertexts with integer weights ``w_i`` decrypts within
  ``sum_i |w_i| * precision`` of the plaintext weighted sum.
- ``headroom``: the largest ``|value|`` a slot of the *aggregate* may hold,
  ``2^(bits(q_0) - 2 - scale_bits)``; beyond it the residues wrap around ``q_0`` and the
  decryption is garbage (CKKS cannot detect this).
- bytes per parameter on the wire: ``bits(q_0) / 2`` bit-packed (two polynomials of ``N``
  residues carry ``N / 2`` slots), half that when two reals share one complex slot.

A *lean* preset (``switch_bits`` set, :mod:`bcfl_engine.he.lean`) goes further: the client
switches its lowest-level ciphertext from ``q_0`` to ``2^b`` (public post-processing in
coefficient form, no security lost) and rounds the low ``drop_bits`` of ``c_0`` away, so a
payload holds ``2b - drop_bits`` bits per paired real. Its headroom is checked, never assumed:
the client refuses values beyond ``bound`` and the aggregator refuses weights summing past
``max_weight_sum`` (:class:`~bcfl_engine.errors.HeadroomExceeded`). A malicious client can still
encrypt values beyond the bound (nobody sees them in the clear) and make the sum wrap; the
robust secure round (bucket sums, then a robust rule) is the answer to that.

A *multiparty* preset (``smudge_bits`` set, :mod:`bcfl_engine.he.multiparty`) states the
smudging noise each decryption share adds (standard deviation ``2^smudge_bits``) and its margin
``smudge_margin`` over the largest secret-dependent noise coefficient of an aggregate of 1,000
payloads under up to 8 parties (on lean payloads: after the lift to ``q_0``; the rounding of
``c_0``'s low bits is not secret-dependent and only costs precision). Each bit of margin costs
a bit of precision at a given payload size: "threshold" (41 bits) keeps two primes, 60 bytes per
parameter packed (64 as stock TenSEAL serializes them, which its clients send); "threshold16" (16 bits) one, 15 paired; "lean16" (16 bits, lean) 11.25. A lean
40-bit margin would need ``b`` about 82 (two primes, beyond the int64 sum mod ``2^b``): about
14.3 bytes per parameter by the same arithmetic, not built.

``mean_precision`` is what ``bcfl info`` reports: the largest absolute error on the *mean* of
1,000 clients of values in ``[-1, 1]`` (weight 1 each), measured with distinct encryptions
(``benchmarks/bench_ckks.py --precision``) and stated with a margin.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from ..errors import InvalidArgument

# HomomorphicEncryption.org, classical 128-bit, ternary secret: N -> max log2(q).
MAX_LOG_Q_128 = {1024: 27, 2048: 54, 4096: 109, 8192: 218, 16384: 438, 32768: 881}


@dataclass(frozen=True)
class Preset:
    """One CKKS parameter set.

    Attributes
    ----------
    name : key in :data:`PRESETS`
    poly_degree : ring degree ``N``; ``N / 2`` complex slots per ciphertext
    coeff_bits : bit sizes of the primes, first (``q_0``, kept at the lowest level) to last
        (the special prime used only for key switching)
    scale_bits : the encoding scale is ``2^scale_bits``
    precision : stated max absolute error of one fresh lowest-level encryption
    note : what the preset is for
    payload_primes : primes a payload keeps: 1 (clients drop to ``q_0``, :func:`~bcfl_engine.he.encrypt`)
        or 2 (the scale needs more than ``q_0``: stock TenSEAL vectors at the top data level)
    mean_precision : stated max absolute error on the mean of 1,000 clients of values in [-1, 1]
    switch_bits : ``b`` of a lean preset (payloads at modulus ``2^b``), 0 for the others
    drop_bits : low bits of ``c_0`` a lean payload rounds away (ties to even)
    bound : the largest ``|x|`` a client may encrypt (checked by :func:`~bcfl_engine.he.encrypt`);
        None: not checked
    max_weight_sum : the largest sum of integer weights the aggregate accepts (checked before
        anything is summed); None: not checked
    pair : whether :func:`~bcfl_engine.he.encrypt` pairs two reals per slot by default
    smudge_bits : a multiparty preset's smudging noise (:mod:`bcfl_engine.he.multiparty`): each
        decryption share adds integers uniform on ``[-smudge_bound, smudge_bound]``, standard
        deviation ``2^smudge_bits``; 0: not a multiparty preset
    smudge_margin : the bits by which that standard deviation exceeds the largest coefficient
        of an aggregate's ciphertext noise, as stated in ``note`` (the smudging lemma's margin)
    """

    name: str
    poly_degree: int
    coeff_bits: tuple[int, ...]
    scale_bits: int
    precision: float
    note: str
    payload_primes: int = 1
    mean_precision: float = 0.0
    switch_bits: int = 0
    drop_bits: int = 0
    bound: float | None = None
    max_weight_sum: int | None = None
    pair: bool = False
    smudge_bits: int = 0
    smudge_margin: int = 0

    @property
    def multiparty(self) -> bool:
        """Whether multiparty keys (:mod:`bcfl_engine.he.multiparty`) may use this preset."""
        return self.smudge_bits > 0

    @property
    def smudge_bound(self) -> int:
        """``floor(sqrt(3) 2^smudge_bits)``: the bound of the uniform smudging noise whose
        standard deviation is ``2^smudge_bits`` (0 for a preset that is not multiparty)."""
        return math.isqrt(3 << (2 * self.smudge_bits)) if self.smudge_bits else 0

    @property
    def lean(self) -> bool:
        """Whether payloads are switched to ``2^switch_bits`` (:mod:`bcfl_engine.he.lean`)."""
        return self.switch_bits > 0

    @property
    def log_q(self) -> int:
        return sum(self.coeff_bits)

    @property
    def security_bits(self) -> int:
        """128 when ``log q`` is within the standard's table for ``N``, else 0 (not secure)."""
        return 128 if self.log_q <= MAX_LOG_Q_128.get(self.poly_degree, -1) else 0

    @property
    def scale(self) -> float:
        return float(2**self.scale_bits)

    @property
    def headroom(self) -> float:
        """Largest |slot value| of an aggregate before it wraps around its payload primes.

        ``2^(bits - 2 - scale_bits)``: a prime of ``bits`` bits is at least ``2^(bits - 1)``
        and a centered value must stay below half of it. A lean preset's modulus is
        ``2^b``, at the scale ``scale * 2^b / q_0``: the same bound in ``q_0``, where SEAL's
        primes of ``bits`` bits are the largest below ``2^bits`` that are ``1 mod 2N``, above
        ``2^bits (1 - 2^-20)`` (``tests/test_lean.py`` checks the real ``q_0``), so the bound is
        ``2^(bits - 1 - scale_bits) (1 - 2^-20)``.
        """
        bits = sum(self.coeff_bits[: self.payload_primes])
        if self.lean:
            return float(2 ** (bits - 1 - self.scale_bits)) * (1 - 2.0**-20)
        return float(2 ** (bits - 2 - self.scale_bits))

    def bytes_per_parameter(self, pair: bool | None = None) -> float:
        """Wire bytes per real parameter (pairing: the preset's default when None)."""
        pair = self.pair if pair is None else pair
        if self.lean:  # c_0 at b - k bits, c_1 at b bits, per N/2 slots
            return (2 * self.switch_bits - self.drop_bits) / (8 if pair else 4)
        return sum(self.coeff_bits[: self.payload_primes]) / (4 if pair else 2)

    @property
    def headroom_weight_sum(self) -> int | None:
        """The largest weight sum the headroom holds for values within ``bound`` (paired slots
        hold ``sqrt(2) bound``); None without a bound."""
        if self.bound is None:
            return None
        return int(self.headroom / (self.bound * (2**0.5 if self.pair else 1.0)))


PRESETS: dict[str, Preset] = {
    p.name: p
    for p in (
        Preset(
            "default",
            8192,
            (60, 40, 40),
            40,
            2.0**-25,
            "the parameters of NVIDIA FLARE's TenSEAL path; log q = 140 <= 218",
            mean_precision=2.0**-30,  # measured 2^-31.8
        ),
        Preset(
            "compact",
            4096,
            (40, 40),
            25,
            2.0**-11,
            "fewer bytes on the wire (20 per parameter, 10 paired) at ~1e-4 precision; "
            "log q = 80 <= 109",
            mean_precision=2.0**-16,  # measured 2^-17.7
        ),
        Preset(
            "test",
            2048,
            (30, 24),
            20,
            2.0**-7,
            "small and fast for tests (still 128-bit: log q = 54 <= 54), ~2e-3 precision",
            mean_precision=2.0**-12,  # measured 2^-13.7
        ),
        Preset(
            "lean",
            8192,
            (60, 60),
            48,
            2.0**-14,
            "9.5 bytes per parameter: paired, switched to 2^42, 8 low bits of c_0 rounded away; "
            "20 bits on the mean of 1,000 clients (measured 20.6-20.8; the mean of n clients is "
            "within ~2^-15.8 / sqrt(n): fewer clients, fewer bits); |x| <= 1 and integer weights "
            "summing to <= 1,000, both checked (headroom 2^11 > sqrt(2) 1,000); "
            "log q = 120 <= 218",
            mean_precision=2.0**-20,  # measured 2^-20.6 to 2^-20.8
            switch_bits=42,
            drop_bits=8,
            bound=1.0,
            max_weight_sum=1000,
            pair=True,
        ),
        Preset(
            "threshold",
            8192,
            (60, 60, 60),
            80,
            2.0**-20,
            "multiparty keys (he.multiparty): scale 2^80 leaves smudging noise of sigma 2^50 a "
            "margin of 2^41 over an aggregate's ciphertext noise; log q = 180 <= 218. Stock "
            "TenSEAL vectors at the top data level (q_0 q_1); sums only (no rescaling at 2^80). "
            "Precision: collective decryption by up to 8 parties, error ~ 2^-30 sqrt(parties N / 2)",
            payload_primes=2,
            # One key: measured 2^-52.7; collective decryption by up to 8 parties adds its
            # smudging once, 2^-20 on a sum (precision above): 2^-30 on the mean of 1,000.
            mean_precision=2.0**-30,
            smudge_bits=50,
            smudge_margin=41,
        ),
        Preset(
            "threshold16",
            8192,
            (60, 60),
            47,
            2.0**-6,
            "multiparty keys at a 16-bit smudging margin: 15 bytes per parameter and 17 bits on "
            "the mean of 1,000 decrypted by 8 parties (measured 17.4-17.6; paired, one "
            "60-bit prime q_0, scale 2^47), smudging noise of sigma 2^30 = 2^16 x the largest "
            "noise coefficient (2^13.3) of an aggregate of 1,000 fresh payloads under a key of up "
            "to 8 parties; |x| <= 1 and integer weights summing to <= 1,000, checked by the "
            "client (|x|) and stated (headroom 2^11 > sqrt(2) 1,000); log q = 120 <= 218",
            # 1,000 clients, 8 parties: measured 2^-17.36 to 2^-17.58 (benchmarks/bench_mp_presets.py; one key's
            # noise is ~2^-37): the smudging sets it, ~2^30 sqrt(8 N / 2) / 2^47 / 1,000 x 5.5.
            mean_precision=2.0**-17,
            bound=1.0,
            pair=True,
            smudge_bits=30,
            smudge_margin=16,
        ),
        Preset(
            "lean16",
            8192,
            (59, 60),
            47,
            2.0**-5,
            "multiparty keys on lean payloads at a 16-bit smudging margin: 11.25 bytes per "
            "parameter and 16 bits on the mean of 1,000 decrypted by 8 parties (measured 16.4-16.6; paired, switched from a 59-bit q_0 to 2^58, 26 low bits of c_0 rounded "
            "away: their noise is under the smudging's), smudging noise of sigma 2^31 = 2^16 x "
            "the largest secret-dependent noise coefficient (2^14.5) of an aggregate of 1,000 "
            "payloads under a key of up to 8 parties, lifted to q_0; |x| <= 1 and integer "
            "weights summing to <= 1,000, both checked (headroom 2^11 > sqrt(2) 1,000); "
            "log q = 119 <= 218",
            # 1,000 clients, 8 parties: measured 2^-16.39 to 2^-16.59 (benchmarks/bench_mp_presets.py)
            mean_precision=2.0**-16,
            switch_bits=58,
            drop_bits=26,
            bound=1.0,
            max_weight_sum=1000,
            pair=True,
            smudge_bits=31,
            smudge_margin=16,
        ),
    )
}


# The preset of keys made without naming one (he.generate_keys()): lean payloads (9.5 bytes per
# parameter, 2^-20 on the mean of 1,000; |x| <= 1 and integer weights summing to <= 1,000,
# both checked). Multiparty keys name theirs: the demo's hospitals use "lean16" (demo/keys.py).
DEFAULT = "lean"


def of_context(poly_degree: int, scale: float, data_bits: tuple[int, ...]) -> Preset | None:
    """The preset whose parameters a context has (``N``, scale, bit sizes of its highest data
    level), or None. :func:`~bcfl_engine.he.encrypt` takes pairing and the lean path from it."""
    for p in PRESETS.values():
        if (
            p.poly_degree == poly_degree
            and p.scale == scale
            and tuple(p.coeff_bits[:-1]) == tuple(data_bits)
        ):
            return p
    return None


def _bits(x: float) -> str:
    return f"2^{math.log2(x):.4g}" if x > 0 else "-"


def table() -> list[str]:
    """``bcfl info``'s table: one line per preset (header first): ring degree, log q, security,
    bytes per parameter as :func:`~bcfl_engine.he.encrypt` sends it (the other pairing in
    parentheses), the stated error on the mean of 1,000 clients of ``|x| <= 1``, and the
    headroom (largest ``|slot|`` of an aggregate; the weight sum and ``|x|`` checked, if any)."""
    lines = [
        f"  {'name':<12} {'N':>5} {'log q':>5} {'security':>8} {'B/param':>19} "
        f"{'mean of 1000':>12}  headroom"
    ]
    for p in PRESETS.values():
        other = p.bytes_per_parameter(not p.pair)
        per = f"{p.bytes_per_parameter():.2f} ({other:.1f} {'un' if p.pair else ''}paired)"
        room = _bits(p.headroom)
        if p.max_weight_sum is not None:
            room += f": weights sum <= {p.max_weight_sum}, |x| <= {p.bound:g} (checked)"
        if p.multiparty:
            room += f"; multiparty: smudging 2^{p.smudge_bits} ({p.smudge_margin}-bit margin)"
        sec = f"{p.security_bits}-bit" if p.security_bits else "none"
        lines.append(
            f"  {p.name:<12} {p.poly_degree:>5} {p.log_q:>5} {sec:>8} {per:>19} "
            f"{_bits(p.mean_precision):>12}  {room}"
        )
    return lines


def get(preset: str | Preset) -> Preset:
    """The preset called ``preset`` (or ``preset`` itself); InvalidArgument naming the known ones."""
    if isinstance(preset, Preset):
        return preset
    try:
        return PRESETS[preset]
    except (KeyError, TypeError):
        raise InvalidArgument(
            f"unknown CKKS preset {preset!r}; known: {', '.join(PRESETS)}"
        ) from None
