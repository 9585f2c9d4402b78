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
"""

from __future__ import annotations

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
    """

    name: str
    poly_degree: int
    coeff_bits: tuple[int, ...]
    scale_bits: int
    precision: float
    note: str
    payload_primes: int = 1

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
        """Largest |slot value| of an aggregate before it wraps around its payload primes."""
        return float(2 ** (sum(self.coeff_bits[: self.payload_primes]) - 2 - self.scale_bits))

    def bytes_per_parameter(self, pair: bool = False) -> float:
        """Wire bytes per real parameter of a bit-packed lowest-level ciphertext."""
        return sum(self.coeff_bits[: self.payload_primes]) / (4 if pair else 2)


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
        ),
        Preset(
            "compact",
            4096,
            (40, 40),
            25,
            2.0**-11,
            "fewer bytes on the wire (20 per parameter, 10 paired) at ~1e-4 precision; "
            "log q = 80 <= 109",
        ),
        Preset(
            "test",
            2048,
            (30, 24),
            20,
            2.0**-7,
            "small and fast for tests (still 128-bit: log q = 54 <= 54), ~2e-3 precision",
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
        ),
    )
}


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
