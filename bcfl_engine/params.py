"""A model's parameters as one flat vector: names, shapes, dtypes and offsets.

:class:`ParamSpec` maps a torch state dict, Flower's list of numpy arrays, or one tensor to one
flat float vector (:meth:`~ParamSpec.flatten`, :meth:`~ParamSpec.flatten_into`) and back
(:meth:`~ParamSpec.unflatten`), keeping every parameter's shape and dtype.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from .errors import InvalidArgument, ShapeMismatch


@dataclass(frozen=True)
class ParamEntry:
    """One parameter: its name, shape, dtype and place ``[offset, offset + numel)`` in the vector."""

    name: str
    shape: tuple[int, ...]
    dtype: str
    offset: int

    @property
    def numel(self) -> int:
        return math.prod(self.shape)


def _dtype_name(t: Any) -> str:
    return str(t.dtype).removeprefix("torch.")


def _is_integer(dtype: str) -> bool:
    return dtype == "bool" or dtype.startswith(("int", "uint"))


def _contiguous(a: np.ndarray) -> np.ndarray:
    return a if a.ndim == 0 or a.flags.c_contiguous else np.ascontiguousarray(a)


class ParamSpec:
    """Names, shapes, dtypes and offsets of a model's parameters.

    ``kind`` is the structure the spec was made from and gives back on :meth:`unflatten`:
    ``"state_dict"`` (name -> torch tensor), ``"ndarrays"`` (list of numpy arrays) or
    ``"tensor"`` (one tensor of any shape).
    """

    def __init__(self, entries: Sequence[ParamEntry], kind: str) -> None:
        if kind not in ("state_dict", "ndarrays", "tensor"):
            raise InvalidArgument(f"kind must be state_dict, ndarrays or tensor; got {kind!r}")
        self.entries = tuple(entries)
        self.kind = kind
        self.dim = sum(e.numel for e in self.entries)

    @classmethod
    def infer(cls, update: Any) -> ParamSpec:
        """The spec of one update: a state dict, a list of arrays/tensors, or one tensor/array."""
        if isinstance(update, Mapping):
            items = list(update.items())
            kind = "state_dict"
        elif isinstance(update, (list, tuple)):
            items = [(str(i), a) for i, a in enumerate(update)]
            kind = "ndarrays"
        elif isinstance(update, (torch.Tensor, np.ndarray)):
            items = [("", update)]
            kind = "tensor"
        else:
            raise InvalidArgument(
                "an update must be a state dict, a list of arrays or a tensor; "
                f"got {type(update).__name__}"
            )
        entries, offset = [], 0
        for name, value in items:
            if not isinstance(value, (torch.Tensor, np.ndarray)):
                raise InvalidArgument(
                    f"parameter {name!r} must be a tensor or array; got {type(value).__name__}"
                )
            entries.append(ParamEntry(str(name), tuple(value.shape), _dtype_name(value), offset))
            offset += entries[-1].numel
        return cls(entries, kind)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, ParamSpec) and (self.entries, self.kind) == (
            other.entries,
            other.kind,
        )

    def __hash__(self) -> int:
        return hash((self.entries, self.kind))

    def __repr__(self) -> str:
        return f"ParamSpec(kind={self.kind!r}, params={len(self.entries)}, dim={self.dim})"

    def _parts(self, update: Any) -> list[tuple[ParamEntry, torch.Tensor]]:
        """Pair each entry with the matching piece of ``update``, checking structure and shapes."""
        if self.kind == "state_dict":
            if not isinstance(update, Mapping):
                raise ShapeMismatch(f"expected a state dict; got {type(update).__name__}")
            missing = [e.name for e in self.entries if e.name not in update]
            extra = [k for k in update if k not in {e.name for e in self.entries}]
            if missing or extra:
                raise ShapeMismatch(
                    f"state dict keys differ: missing {missing}, unexpected {extra}"
                )
            values = [update[e.name] for e in self.entries]
        elif self.kind == "ndarrays":
            if not isinstance(update, (list, tuple)) or len(update) != len(self.entries):
                got = len(update) if isinstance(update, (list, tuple)) else type(update).__name__
                raise ShapeMismatch(f"expected a list of {len(self.entries)} arrays; got {got}")
            values = list(update)
        else:
            values = [update]
        parts = []
        for e, v in zip(self.entries, values, strict=True):
            # np.ascontiguousarray makes a 0-d array 1-d (BatchNorm's num_batches_tracked is
            # 0-d): take a 0-d array's one value as it is.
            t = torch.from_numpy(_contiguous(v)) if isinstance(v, np.ndarray) else v
            if not isinstance(t, torch.Tensor):
                raise ShapeMismatch(
                    f"parameter {e.name!r}: expected an array; got {type(v).__name__}"
                )
            if tuple(t.shape) != e.shape and not (self.kind == "tensor" and t.numel() == e.numel):
                raise ShapeMismatch(
                    f"parameter {e.name!r}: expected shape {e.shape}; got {tuple(t.shape)}"
                )
            parts.append((e, t))
        return parts

    def flatten_into(self, update: Any, out: torch.Tensor) -> torch.Tensor:
        """Copy ``update`` into the 1-D tensor ``out`` (length ``dim``), converting its dtype."""
        if out.dim() != 1 or out.numel() != self.dim:
            raise ShapeMismatch(f"output must be a vector of {self.dim}; got {tuple(out.shape)}")
        for e, t in self._parts(update):
            out[e.offset : e.offset + e.numel].copy_(t.reshape(-1))
        return out

    def flatten(self, update: Any, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """``update`` as one ``[dim]`` vector of ``dtype``."""
        return self.flatten_into(update, torch.empty(self.dim, dtype=dtype))

    def unflatten(self, vector: torch.Tensor) -> Any:
        """The inverse of :meth:`flatten`: the structure this spec was made from, original dtypes."""
        if vector.dim() != 1 or vector.numel() != self.dim:
            raise ShapeMismatch(f"expected a vector of {self.dim}; got shape {tuple(vector.shape)}")
        out: list[Any] = []
        for e in self.entries:
            piece = vector[e.offset : e.offset + e.numel].reshape(e.shape)
            if _is_integer(e.dtype):  # round, not truncate: 2.9999997 is 3
                piece = piece.round()
            if self.kind == "ndarrays":
                t = piece.detach().cpu()
                t = t.float() if t.dtype in (torch.float16, torch.bfloat16) else t
                out.append(t.numpy().astype(np.dtype(e.dtype)))
            else:
                out.append(piece.to(getattr(torch, e.dtype)).clone())
        if self.kind == "state_dict":
            return {e.name: t for e, t in zip(self.entries, out, strict=True)}
        if self.kind == "ndarrays":
            return out
        return out[0]
