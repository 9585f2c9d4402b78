"""The records a store holds and a chain commits, checked field by field.

The acceptance record (what a round accepted from a client), the round record (``round.json``:
what the aggregator committed) and the metadata a round commits (:func:`~bcfl_engine.protocol.
encode_meta`): :func:`check_acceptance`, :func:`check_round_record` and :func:`check_meta` turn
a malformed one into a :class:`~bcfl_engine.errors.PayloadError` naming the first bad field, so
the audit can report it and go on. Part of the round's byte format; :mod:`bcfl_engine.protocol`
re-exports these names.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from .errors import InvalidWeight, PayloadError

_ADDRESS = re.compile(r"0x[0-9a-fA-F]{40}")


def _object(obj: object, what: str) -> dict[str, Any]:
    if not isinstance(obj, dict):
        raise PayloadError(f"{what}: expected a JSON object; got {type(obj).__name__}")
    return obj


def _field(rec: Mapping[str, Any], key: str, what: str) -> Any:
    if key not in rec:
        raise PayloadError(f"{what}: field {key!r} is missing")
    return rec[key]


def _int(rec: Mapping[str, Any], key: str, what: str, lo: int, hi: int = 2**63 - 1) -> int:
    v = _field(rec, key, what)
    if isinstance(v, bool) or not isinstance(v, int) or not lo <= v <= hi:
        raise PayloadError(f"{what}: field {key!r} must be an int in [{lo}, {hi}]; got {v!r:.80}")
    return v


def _hex(rec: Mapping[str, Any], key: str, what: str, nbytes: int) -> bytes:
    v = _field(rec, key, what)
    if not isinstance(v, str) or not re.fullmatch(f"[0-9a-f]{{{2 * nbytes}}}", v):
        raise PayloadError(
            f"{what}: field {key!r} must be {2 * nbytes} lower-case hex digits; got {v!r:.80}"
        )
    return bytes.fromhex(v)


def _address(v: object, what: str, lower: bool = False) -> str:
    if not isinstance(v, str) or not _ADDRESS.fullmatch(v) or (lower and v != v.lower()):
        case = "lower-case " if lower else ""
        raise PayloadError(f"{what} must be a {case}0x-hex 20-byte address; got {v!r:.80}")
    return v


def check_acceptance(obj: object) -> dict[str, Any]:
    """An acceptance record ``{seq, client, digest, weight, salt, signature}``, checked.

    Returns it unchanged; PayloadError naming the first malformed field.
    """
    from . import protocol  # (protocol imports this module)

    what = "acceptance record"
    rec = _object(obj, what)
    _int(rec, "seq", what, 0)
    _address(_field(rec, "client", what), f"{what}: field 'client'", lower=True)
    for key, size in (("digest", 32), ("salt", 32), ("signature", 65)):
        _hex(rec, key, what, size)
    try:
        protocol.check_weight(_field(rec, "weight", what), f"{what}: field 'weight'")
    except InvalidWeight as exc:
        raise PayloadError(str(exc)) from None
    return rec


def check_round_record(obj: object) -> dict[str, Any]:
    """A round record (``round.json``: what the aggregator committed), checked."""
    what = "round record"
    rec = _object(obj, what)
    _int(rec, "task", what, 0)
    _int(rec, "round", what, 1)
    _int(rec, "n", what, 1)
    _address(_field(rec, "contract", what), f"{what}: field 'contract'")
    for key in ("root", "result_digest", "meta_hash"):
        _hex(rec, key, what, 32)
    people = _field(rec, "participants", what)
    if not isinstance(people, list) or not people:
        raise PayloadError(f"{what}: field 'participants' must be a non-empty list")
    for i, p in enumerate(people):
        _address(p, f"{what}: participants[{i}]")
    if "gas_used" in rec:
        _int(rec, "gas_used", what, 0)
    if "node" in rec or "nodes" in rec:  # an ingest node's record of a round over several
        _int(rec, "node", what, 0, _int(rec, "nodes", what, 1) - 1)
    return rec


def check_meta(obj: object) -> dict[str, Any]:
    """The metadata a round committed (:func:`encode_meta`), checked: format, digest, signed
    type, rule, ``f``, parameters, pre-steps, backend, ``dim`` or the CKKS context's digest."""
    from . import backends, protocol, rules

    what = "round metadata"
    meta = _object(obj, what)
    fmt = _field(meta, "format", what)
    if not isinstance(fmt, str) or fmt not in protocol.READABLE:
        raise PayloadError(
            f"{what}: format {fmt!r:.80}; this engine reads {sorted(protocol.READABLE)}"
        )
    for key, want in (("digest", protocol.READABLE[fmt]), ("signed", protocol.SIGNED_TYPE)):
        if _field(meta, key, what) != want:
            raise PayloadError(f"{what}: {key} {meta[key]!r:.80}; {fmt} has {want!r}")
    _int(meta, "task", what, 0)
    _int(meta, "round", what, 1)
    _int(meta, "f", what, 0)
    rule = _field(meta, "rule", what)
    if not isinstance(rule, str) or rule not in rules.RULES:
        raise PayloadError(f"{what}: unknown rule {rule!r:.80}")
    params = _field(meta, "params", what)
    if not isinstance(params, dict) or not all(isinstance(k, str) for k in params):
        raise PayloadError(f"{what}: params must be an object; got {params!r:.80}")
    pre = _field(meta, "pre", what)
    ok = isinstance(pre, list) and all(
        isinstance(p, str) or (isinstance(p, list) and len(p) == 2 and isinstance(p[0], str))
        for p in pre
    )
    if not ok:
        raise PayloadError(
            f"{what}: pre must be a list of names or [name, params]; got {pre!r:.80}"
        )
    backend = _field(meta, "backend", what)
    if backend is not None and backend not in backends.BACKENDS:
        raise PayloadError(f"{what}: unknown backend {backend!r:.80}")
    secure = _field(meta, "secure", what)
    if secure == "ckks":
        _hex(meta, "he_context", what, 32)
        if _field(meta, "dim", what) is not None:
            raise PayloadError(f"{what}: a CKKS round has dim null; got {meta['dim']!r:.80}")
    elif secure is None:
        _int(meta, "dim", what, 1)
    else:
        raise PayloadError(f"{what}: secure must be null or 'ckks'; got {secure!r:.80}")
    if "keys" in meta:
        _check_keys(meta, what)
    elif "buckets" in meta:
        raise PayloadError(f"{what}: only a round under a multiparty key has buckets")
    if "nodes" in meta:  # a round over several ingest nodes: payloads per node, in rank order
        nodes = meta["nodes"]
        if not (
            isinstance(nodes, list)
            and nodes
            and all(isinstance(k, int) and not isinstance(k, bool) and k >= 0 for k in nodes)
        ):
            raise PayloadError(
                f"{what}: nodes must list each ingest node's number of payloads; got {nodes!r:.80}"
            )
    return meta


def _check_keys(meta: dict[str, Any], what: str) -> None:
    """The decryption part of a multiparty round's metadata (and its buckets), their shape
    checked (the audit checks their contents against the chain)."""
    if meta["secure"] != "ckks":
        raise PayloadError(f"{what}: only a CKKS round has keys")
    keys = _object(meta["keys"], f"{what}: keys")
    hexes = re.compile(r"[0-9a-f]+")

    def hex_list(v: object) -> bool:
        return isinstance(v, list) and all(isinstance(h, str) and hexes.fullmatch(h) for h in v)

    aggregates = _field(keys, "aggregates", f"{what}: keys")
    active = _field(keys, "active", f"{what}: keys")
    shares = _field(keys, "shares", f"{what}: keys")
    ints = isinstance(active, list) and all(
        isinstance(a, int) and not isinstance(a, bool) for a in active
    )
    rows = isinstance(shares, list) and all(
        isinstance(s, list)
        and len(s) == 3
        and isinstance(s[0], int)
        and hex_list(s[1])
        and isinstance(s[2], str)
        and hexes.fullmatch(s[2])
        for s in shares
    )
    if not (hex_list(aggregates) and aggregates and ints and rows):
        raise PayloadError(
            f"{what}: keys must list the aggregates' digests, the active parties and "
            "[party, [share digests], signature] per party"
        )
    if "buckets" in meta:
        b = _object(meta["buckets"], f"{what}: buckets")
        _int(b, "size", f"{what}: buckets", 2)
        _int(b, "seal_block", f"{what}: buckets", 0)
        _hex(b, "beacon", f"{what}: buckets", 32)
        w = _field(b, "weights", f"{what}: buckets")
        if not (isinstance(w, list) and w and all(isinstance(x, int) and x > 0 for x in w)):
            raise PayloadError(f"{what}: buckets: weights must be positive ints, one per bucket")
        if len(w) != len(aggregates):
            raise PayloadError(f"{what}: {len(w)} bucket weights for {len(aggregates)} aggregates")
