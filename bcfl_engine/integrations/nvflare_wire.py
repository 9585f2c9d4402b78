"""NVIDIA FLARE's encrypted layers kept as their wire bytes, and their running residue sum.

NVFlare sends each TenSEAL ``CKKSVector`` through FOBS as ``(vector bytes, context bytes)``;
its own decomposer rebuilds a context and a vector from them for every layer of every client
on receipt (about 9 ms each with HEBuilder's 663 KB context), which is most of an HE round on
the server. :class:`CKKSWireDecomposer` sends exactly the same pair, and on receipt returns a
:class:`WireCKKSVector`: a ``tenseal.CKKSVector`` that holds the two byte strings and rebuilds
the TenSEAL objects only if something uses it as one. The engine's aggregator reads the bytes
(:func:`wire_of`) and adds them into a :class:`LayerSum` as they arrive.

FOBS keeps the first decomposer registered for a type (``fobs.register`` ignores later ones).
This one takes effect where it is registered before NVFlare's (``nvflare.app_opt.he
.decomposers.register``, which every HE component calls in its constructor): the site's
``local/custom/nvflare_decomposers/`` folder, which NVFlare scans when its process starts
(see the README), or the aggregator's constructor when it is built before the other HE
components.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from ..backends import _load_native
from ..errors import MissingDependency, PayloadError
from ..he import wire
from ..he.accumulate import accumulate
from ..he.batch import to_tenseal
from ..he.ckks_sum import ckks_sum
from ..he.keys import context_info

try:
    import tenseal as ts
    from nvflare.fuel.utils import fobs
except ImportError as exc:  # pragma: no cover - exercised only without the extra
    raise MissingDependency(
        f"the NVIDIA FLARE integration needs nvflare and tenseal ({exc}); "
        "pip install 'bcfl_engine[nvflare]'"
    ) from None


class WireCKKSVector(ts.CKKSVector):
    """A ``CKKSVector`` as received: its serialized vector and context, rebuilt on first use.

    Everything TenSEAL's class offers works (the first use loads the context and the vector,
    as NVFlare's decomposer would have); results of operations are plain ``CKKSVector``.
    """

    def __init__(self, vector: bytes, context: bytes) -> None:  # no super(): nothing to load
        self.wire = bytes(vector)
        self.wire_context = bytes(context)
        self._data: Any = None

    @property
    def data(self) -> Any:
        if self._data is None:
            ctx = ts.context_from(self.wire_context)
            self._data = ts._ts_cpp.CKKSVector(ctx.data, self.wire)
        return self._data

    @data.setter
    def data(self, value: Any) -> None:
        if not isinstance(value, ts._ts_cpp.CKKSVector):
            raise TypeError(f"value must be of type {ts._ts_cpp.CKKSVector}")
        self._data = value

    @property  # type: ignore[misc]
    def __class__(self) -> type:
        """``tenseal.CKKSVector``: what FOBS names when it sends this one on (it packs an object
        under ``obj.__class__``'s name, and receivers know only that one). ``type()`` and
        ``isinstance`` still see this class."""
        return ts.CKKSVector

    @property
    def untouched(self) -> bool:
        """Whether the bytes still are the vector (never loaded, so never changed in place)."""
        return self._data is None

    @classmethod
    def _wrap(cls, data: Any) -> ts.CKKSVector:
        return ts.CKKSVector(data=data)

    def serialize(self) -> bytes:
        return self.wire if self._data is None else self._data.serialize()


class CKKSWireDecomposer(fobs.Decomposer):
    """FOBS decomposer of ``tenseal.CKKSVector``: NVFlare's wire pair, received as bytes."""

    def supported_type(self) -> type:
        return ts.CKKSVector

    def decompose(self, target: Any, manager: Any = None) -> Any:
        return wire_of(target)

    def recompose(self, data: Any, manager: Any = None) -> WireCKKSVector:
        vector, context = data
        return WireCKKSVector(vector, context)


def register() -> None:
    """Register :class:`CKKSWireDecomposer` with FOBS (a no-op where a CKKSVector decomposer,
    NVFlare's included, is already registered in this process)."""
    fobs.register(CKKSWireDecomposer)


def wire_of(vector: Any) -> tuple[bytes, bytes]:
    """``(vector bytes, context bytes)`` of a CKKSVector, as NVFlare's decomposer sends them;
    a :class:`WireCKKSVector` never loaded gives back the bytes it came with."""
    if isinstance(vector, WireCKKSVector) and vector.untouched:
        return vector.wire, vector.wire_context
    return vector.serialize(), vector.context().serialize()


class LayerSum:
    """One layer's sum over a round: residues ``[C, 2, K, N]`` of the contributions so far.

    Each contribution is staged (decoded straight into the sum), then kept or rolled back
    (the sum as it was before it), so that a message is added whole or not at all.

    Parameters
    ----------
    context : the round's context bytes (every contribution must carry the same)
    """

    def __init__(self, context: bytes) -> None:
        self.context = context
        self.layout: wire.Layout | None = None
        self.acc: torch.Tensor | None = None
        self.version: tuple[int, int] | None = None
        self._backup: np.ndarray | None = None  # the sum before the staged contribution
        self._staged = False

    def stage(self, vector: bytes, name: str) -> None:
        """Add one contribution's ciphertexts (a :class:`PayloadError` naming ``name`` and the
        reason if they are not a ciphertext of this layer; the sum is then as before)."""
        layout = self.layout
        if layout is None:
            try:
                info = context_info(self.context)
            except Exception as exc:  # TenSEAL's own (e.g. a context of another TenSEAL)
                raise PayloadError(
                    f"client {name!r}: its context does not load in TenSEAL {ts.__version__} "
                    f"({exc}); the server's TenSEAL must be the clients'"
                ) from None
            try:
                layout = wire.peek(vector, info)
            except PayloadError as exc:
                raise PayloadError(f"client {name!r}: {exc}") from None
        if self.acc is not None:
            if self._backup is None:
                self._backup = np.empty(tuple(self.acc.shape), np.int64)
            np.copyto(self._backup, self.acc.numpy())  # 6x torch's copy_ here (2 MB, 2 cores)
        try:
            acc, version = self._decode(vector, layout, name)
        except PayloadError:
            self._restore()
            raise
        self.layout, self.acc, self._staged = layout, acc, True
        self.version = self.version or version

    def _decode(
        self, vector: bytes, layout: wire.Layout, name: str
    ) -> tuple[torch.Tensor, tuple[int, int] | None]:
        if _load_native()[1] is None:  # the fused C++ decoder, straight into the sum
            acc, versions = accumulate([vector], layout, None, [name], acc=self.acc)
            return acc, versions[0]
        try:
            parsed, version = wire.parse(vector, layout)
        except PayloadError as exc:
            raise PayloadError(f"client {name!r}: {exc}") from None
        x = torch.from_numpy(parsed.view("int64"))[None]
        return ckks_sum(x, layout.primes, None, acc=self.acc, backend="torch"), version

    def _restore(self) -> None:
        if self.acc is not None and self._backup is not None:
            np.copyto(self.acc.numpy(), self._backup)

    def rollback(self) -> None:
        """Take back the staged contribution (the first one of the round: back to empty)."""
        if not self._staged:
            return
        if self._backup is None:  # the round's first: nothing to go back to
            self.layout, self.acc, self.version = None, None, None
        else:
            self._restore()
        self._staged = False

    def keep(self) -> None:
        """Keep the staged contribution."""
        self._staged = False

    def vector_bytes(self, scale: float | None = None) -> bytes:
        """The sum as ``CKKSVectorProto`` bytes at ``scale`` (default: the payloads')."""
        assert self.layout is not None and self.acc is not None
        codec = "native" if _load_native()[1] is None else "python"
        return bytes(to_tenseal(self.acc, self.layout, scale, self.version or (4, 3), codec))

    def finish(self, context: Any, total_weight: float, exact: bool = False) -> ts.CKKSVector:
        """The weighted mean NVFlare returns: the sum loaded in TenSEAL, times ``1 / W``.

        ``exact``: divide by setting the sum's scale to ``scale * W`` instead (no
        multiplication: the level is kept and the error is the sum's, not the 1/W encoding's);
        not byte-identical to NVFlare, and its WEIGHT_DIFF update cannot add it to a model.
        """
        assert self.layout is not None
        if exact:
            return ts.ckks_vector_from(context, self.vector_bytes(self.layout.scale * total_weight))
        return ts.ckks_vector_from(context, self.vector_bytes()) * (1.0 / total_weight)
