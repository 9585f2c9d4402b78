"""Every error bcfl_engine raises on bad input, in one place.

All derive from :class:`BcflError`, so callers can catch the engine's errors apart from bugs.
Each also derives from the builtin it refines (``ValueError``, ``KeyError``, ...), so code
written against plain Python exceptions keeps working.
"""

from __future__ import annotations


class BcflError(Exception):
    """Base of every error raised by bcfl_engine on bad input or an unavailable resource."""


class InvalidArgument(BcflError, ValueError):
    """An argument has the wrong value (message says what was expected and what came)."""


class ShapeMismatch(BcflError, ValueError):
    """An update does not have the length or structure the batch expects."""


class NonFiniteUpdate(BcflError, ValueError):
    """An update holds NaN or infinity (or overflows the storage dtype)."""


class InvalidWeight(InvalidArgument):
    """A client weight is not a positive finite number (or, in a round, not an int in
    ``[1, 2**64 - 1]``)."""


class HeadroomExceeded(InvalidArgument):
    """A CKKS sum would wrap around its modulus: a client value beyond its preset's bound on
    ``|x|``, or a set of weights whose sum exceeds the preset's headroom (CKKS itself cannot
    detect a wrapped sum: it decrypts to garbage)."""


class DuplicateClient(BcflError, KeyError):
    """A client id was already added to this batch or round."""

    def __str__(self) -> str:  # KeyError quotes its message; keep it readable
        return str(self.args[0]) if self.args else ""


class BatchFull(BcflError, IndexError):
    """The preallocated batch has no free row left."""


class PreconditionError(BcflError, ValueError):
    """An aggregation rule's precondition from its paper does not hold (e.g. n > 2f)."""


class BackendUnavailable(BcflError, RuntimeError):
    """A forced backend cannot run this call; the message lists its reasons."""


class MissingDependency(BcflError, ImportError):
    """An optional dependency is not installed; the message names the extra to install."""


class PayloadError(BcflError, ValueError):
    """A client payload (ciphertext or signed update) is malformed, forged or mismatched."""


class PeerFailure(BcflError, RuntimeError):
    """A collective of a distributed aggregate failed: another rank died, left or did not
    answer within the process group's timeout. Nothing was aggregated; rerun the round."""


class ChainError(BcflError, RuntimeError):
    """The ledger refused or failed an operation (a revert, a conflicting commit, ...)."""


class AuditError(BcflError):
    """An audit found that a committed round does not match its stored payloads."""


class KeyShareError(BcflError, ValueError):
    """A multiparty CKKS key share, public share or decryption share is malformed, mismatched or
    from a non-party; ``party`` names the party at fault (None when no party is to blame)."""

    def __init__(self, message: str, party: int | None = None) -> None:
        super().__init__(message)
        self.party = party


class KeyEpochError(BcflError, ValueError):
    """A multiparty CKKS key is not the one the task's key epoch on chain names (another public
    context, other parties or threshold), or the task has no such epoch."""


class DecryptionRefused(KeyShareError):
    """A party refuses to compute a decryption share: the ciphertext is not the sum of the round's
    contributions, has too few contributors, or was already decrypted under another active set."""


class DPUnsupported(InvalidArgument):
    """Differential privacy was asked of a rule or an option whose sensitivity is not stated and
    implemented (only the mean of clipped updates is; see :mod:`bcfl_engine.dp`)."""


class BudgetExceeded(BcflError, ValueError):
    """A round would spend more privacy budget (epsilon at the task's delta) than the task allows;
    refused before any noise is drawn, nothing changed."""
