"""The site side of NVIDIA FLARE's chain commits: what a site signs and how.

A site signs what it sends (:class:`SignContribution`, a filter in the site's
``task_result_filters``; or :func:`sign_dxo` from Python): the payload is the DXO's arrays in
name order, flattened into one float32 vector (:func:`contribution_bytes`), or, for an HE job,
its encrypted layers in one bundle (:func:`he_bundle`), signed with the site's secp256k1 key
over ``(task, round, digest, weight)`` (the engine's EIP-712 payload, as a Flower client signs
its reply), ``weight`` being the DXO's ``NUM_STEPS_CURRENT_ROUND``. The signature rides in the
DXO's meta under :data:`META_KEY`. The server side is :mod:`.nvflare_chain`.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import InvalidArgument, PayloadError
from .flower_chain import encode_arrays

try:
    from nvflare.apis.dxo import DXO, DataKind, MetaKey
    from nvflare.apis.dxo_filter import DXOFilter
    from nvflare.apis.fl_context import FLContext
    from nvflare.apis.shareable import Shareable
    from nvflare.app_common.app_constant import AppConstants
except ImportError as exc:  # pragma: no cover - exercised only without the extra
    from ..errors import MissingDependency

    raise MissingDependency(
        f"the NVIDIA FLARE integration needs nvflare ({exc}); pip install 'bcfl_engine[nvflare]'"
    ) from None

META_KEY = "bcfl_signature"
"""The DXO meta entry that carries a contribution's signature: ``{"address", "signature",
"round", "weight"}``."""


def _arrays(data: Mapping[str, Any], exclude_vars: Any = None) -> list[tuple[str, np.ndarray]]:
    """The arrays of a DXO's data, in name order, less those ``exclude_vars`` (a regex or its
    text) names."""
    pattern = re.compile(exclude_vars) if isinstance(exclude_vars, str) else exclude_vars
    out = []
    for name in sorted(data):
        value = data[name]
        if not hasattr(value, "shape") or (pattern is not None and pattern.search(name)):
            continue
        out.append((name, np.asarray(value)))
    return out


def contribution_bytes(data: Mapping[str, Any], exclude_vars: Any = None) -> bytes:
    """What a site signs and the round stores: the arrays in name order, one float32 vector."""
    arrays = [a for _, a in _arrays(data, exclude_vars)]
    if not arrays:
        raise PayloadError("a contribution with no arrays cannot be signed")
    return encode_arrays(arrays)


def _encrypted(data: Mapping[str, Any], exclude_vars: Any = None) -> list[tuple[str, Any]]:
    """The encrypted layers (TenSEAL ``CKKSVector``) of a DXO's data, in name order."""
    try:
        import tenseal as ts
    except ImportError:  # no HE here: nothing is encrypted
        return []
    pattern = re.compile(exclude_vars) if isinstance(exclude_vars, str) else exclude_vars
    return [
        (k, data[k])
        for k in sorted(data)
        if isinstance(data[k], ts.CKKSVector) and not (pattern is not None and pattern.search(k))
    ]


def he_bundle(layers: Sequence[bytes]) -> bytes:
    """Encrypted layers (each a TenSEAL ``CKKSVectorProto``, in name order) as one proto: their
    ciphertexts and sizes end to end, at their common scale. Summing bundles sums every layer,
    so the round pipeline (and its audit) treats an HE contribution as one CKKS payload."""
    from ..he.proto import parse_proto, write_proto

    cts: list[bytes] = []
    sizes: list[int] = []
    scale = None
    for i, raw in enumerate(layers):
        view = memoryview(raw)
        proto = parse_proto(view)
        if proto.pair:
            raise PayloadError(f"layer {i}: paired values are not an NVFlare layer")
        if scale is not None and proto.scale != scale:
            raise PayloadError(f"layer {i} is at scale {proto.scale}; the first at {scale}")
        scale = proto.scale
        cts += [bytes(view[o : o + n]) for o, n in proto.spans]
        sizes += proto.sizes
    if not cts or scale is None:
        raise PayloadError("a contribution with no encrypted layer cannot be bundled")
    return write_proto(cts, tuple(sizes), scale, None, False)


def signed_payload(dxo: DXO, exclude_vars: Any = None) -> tuple[bytes, int]:
    """What a site signs and with which weight: its encrypted layers bundled (:func:`he_bundle`)
    with weight 1 (NVFlare's HE client already multiplied its values by its step count), else
    its arrays (:func:`contribution_bytes`) with its step count (:func:`signed_weight`)."""
    encrypted = _encrypted(dxo.data, exclude_vars)
    if encrypted:
        from .nvflare_wire import WireCKKSVector, wire_of

        # a site's own vectors: their bytes only (wire_of would serialize the context too)
        layers = [
            wire_of(v)[0] if isinstance(v, WireCKKSVector) else v.serialize() for _, v in encrypted
        ]
        return he_bundle(layers), 1
    return contribution_bytes(dxo.data, exclude_vars), signed_weight(dxo)


def signed_weight(dxo: DXO) -> int:
    """The weight a site signs: its ``NUM_STEPS_CURRENT_ROUND`` (1 when absent), a positive int."""
    steps = dxo.get_meta_prop(MetaKey.NUM_STEPS_CURRENT_ROUND, 1)
    if isinstance(steps, bool) or not isinstance(steps, (int, np.integer)) or steps < 1:
        raise PayloadError(f"NUM_STEPS_CURRENT_ROUND must be a positive int; got {steps!r:.40}")
    return int(steps)


def sign_dxo(
    dxo: DXO, key: Any, *, task: int, round: int, domain: Any, exclude_vars: Any = None
) -> DXO:
    """Sign ``dxo``'s arrays or encrypted layers (:func:`signed_payload`) for registry round
    ``round`` of ``task`` (``domain``: the ledger's) with the site's ``key``; the signature goes
    into the DXO's meta. Returns ``dxo``."""
    from ..round import sign_payload

    data, weight = signed_payload(dxo, exclude_vars)
    payload = sign_payload(key, task, round, data, domain, weight=weight)
    dxo.set_meta_prop(
        META_KEY,
        {
            "address": payload.client,
            "signature": bytes(payload.signature or b"").hex(),
            "round": round,
            "weight": payload.weight,
        },
    )
    return dxo


def _read_key(key: str | None, key_file: str | None) -> bytes:
    text = Path(key_file).read_text() if key_file is not None else key
    assert text is not None
    try:
        raw = bytes.fromhex(text.strip().removeprefix("0x"))
    except ValueError:
        raw = b""
    if len(raw) != 32:
        raise InvalidArgument("a site's signing key is 32 bytes of hex")
    return raw


class SignContribution(DXOFilter):
    """A site's ``task_result_filters`` entry that signs each result for the chain (after
    ``HEModelEncryptor`` in an HE job).

    Parameters
    ----------
    task : the registry task id
    chain_id, registry : the chain and the registry's address (the signature's domain)
    key_file : a file holding the site's private key (hex); ``{site}`` in it is replaced by the
        site's name (one job config for every site, a key file each); or ``key``: the key
        itself (hex); or ``key_env``: an environment variable holding it
    exclude_vars : the regex the server's aggregator excludes (its ``exclude_vars``)
    """

    def __init__(
        self,
        task: int,
        chain_id: int,
        registry: str,
        key_file: str | None = None,
        key: str | None = None,
        key_env: str | None = None,
        exclude_vars: str | None = None,
    ) -> None:
        super().__init__(
            supported_data_kinds=[DataKind.WEIGHTS, DataKind.WEIGHT_DIFF], data_kinds_to_filter=None
        )
        from ..chain import PayloadDomain

        if sum(x is not None for x in (key_file, key, key_env)) != 1:
            raise InvalidArgument(
                "give the site's signing key as key= (hex), key_file= (a path) or key_env="
            )
        self._key = None if key is None else _read_key(key, None)
        # Kept under their own names: NVFlare's job exporter writes a component's arguments
        # from the attributes of the same name (the key itself is not: use key_file or key_env).
        self.key_file, self.key_env, self.chain_id, self.registry = (
            key_file,
            key_env,
            chain_id,
            registry,
        )
        self.task, self.exclude_vars = task, exclude_vars
        self.domain = PayloadDomain(int(chain_id), registry)

    def _site_key(self, site: str) -> bytes:
        if self._key is None:
            if self.key_env is not None:
                value = os.environ.get(self.key_env)
                if value is None:
                    raise InvalidArgument(f"environment variable {self.key_env} holds no key")
                self._key = _read_key(value, None)
            else:
                assert self.key_file is not None
                self._key = _read_key(None, self.key_file.replace("{site}", site))
        return self._key

    def process_dxo(self, dxo: DXO, shareable: Shareable, fl_ctx: FLContext) -> DXO:
        current = shareable.get_header(AppConstants.CURRENT_ROUND)
        if current is None:
            current = fl_ctx.get_prop(AppConstants.CURRENT_ROUND)
        if not isinstance(current, int):
            raise InvalidArgument("the task carries no current round to sign for")
        return sign_dxo(
            dxo, self._site_key(fl_ctx.get_identity_name()), task=self.task, round=current + 1,
            domain=self.domain, exclude_vars=self.exclude_vars,
        )  # fmt: skip
