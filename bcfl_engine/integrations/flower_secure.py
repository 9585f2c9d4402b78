"""Secure rounds under a multiparty key in Flower: the clients hold the key, they decrypt.

With ``EngineFedAvg(secure="ckks", rounds=...)`` whose rounds carry a multiparty key
(``AggregationRound(..., keys=epoch)``), the server holds no key material at all. Each client
sends its ciphertext signed for the registry round (:func:`sign_ciphertext`, in the reply's
:data:`~.flower.RECORD_KEY` ConfigRecord with its key ``party`` id); the strategy submits the
replies to the round, asks for decryption (for a robust rule: the round seals its payloads and
draws buckets from the chain, :mod:`bcfl_engine.buckets`), and sends each active party's node a
``query`` message holding the request (:func:`encode_request`). The node answers with
:func:`answer_decryption` (its checks: :func:`bcfl_engine.decryption.party_share`); the round
combines the shares, runs the rule (on bucket means) and commits. The strategy's result is the
plaintext model: the decrypted weighted mean, or the rule over the bucket means.

A party that does not answer, or answers with a bad share, is named in a warning and the round
commits nothing (its aggregate cannot be decrypted under another active set); Flower carries on
with the next round, as it does when a round fails.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from ..decryption import DecryptionRequest, SignedShare
from ..errors import BcflError, InvalidArgument, PayloadError

DECRYPT_KEY = "bcfl-decrypt"
"""The ConfigRecord of a decryption request (server to party) and of its answer."""


def sign_ciphertext(
    blob: bytes, key: Any, task: int, round: int, domain: Any, weight: int, party: int | None = None
) -> Any:
    """The ConfigRecord a client adds to its train reply under a multiparty key: its
    ciphertext, the signature over it and its weight for registry ``round``, and its key party
    id (when the client is one of the key's parties)."""
    from flwr.app import ConfigRecord

    from ..round import sign_payload

    payload = sign_payload(key, task, round, bytes(blob), domain, weight=int(weight))
    record: dict[str, Any] = {
        "ckks": bytes(blob),
        "address": payload.client,
        "signature": bytes(payload.signature or b""),
    }
    if party is not None:
        record["party"] = int(party)
    return ConfigRecord(record)


def encode_request(req: DecryptionRequest) -> Any:
    """A :class:`DecryptionRequest` as a Flower ConfigRecord (bytes and JSON text)."""
    from flwr.app import ConfigRecord

    return ConfigRecord(
        {
            "task": req.task,
            "round": req.round,
            "epoch": req.epoch,
            "updates_root": req.updates_root,
            "aggregates": list(req.aggregates),
            "active": list(req.active),
            "records": json.dumps(list(req.records)),
            "payloads": list(req.payloads),
            "buckets": json.dumps(None if req.buckets is None else [list(b) for b in req.buckets]),
            "bucket_size": req.bucket_size or 0,
        }
    )


def decode_request(rec: Mapping[str, Any]) -> DecryptionRequest:
    """The request :func:`encode_request` wrote; PayloadError if the record is malformed."""
    try:
        buckets = json.loads(str(rec["buckets"]))
        return DecryptionRequest(
            task=int(rec["task"]),
            round=int(rec["round"]),
            epoch=int(rec["epoch"]),
            updates_root=bytes(rec["updates_root"]),
            aggregates=tuple(bytes(a) for a in rec["aggregates"]),
            active=tuple(int(a) for a in rec["active"]),
            records=tuple(dict(r) for r in json.loads(str(rec["records"]))),
            payloads=tuple(bytes(p) for p in rec["payloads"]),
            buckets=None if buckets is None else tuple(tuple(int(i) for i in b) for b in buckets),
            bucket_size=int(rec["bucket_size"]) or None,
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise PayloadError(f"malformed decryption request: {exc}") from None


def encode_share(signed: SignedShare) -> Any:
    from flwr.app import ConfigRecord

    return ConfigRecord(
        {"party": signed.party, "shares": list(signed.shares), "signature": signed.signature}
    )


def decode_share(rec: Mapping[str, Any]) -> SignedShare:
    try:
        return SignedShare(
            int(rec["party"]), tuple(bytes(s) for s in rec["shares"]), bytes(rec["signature"])
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise PayloadError(f"malformed decryption share: {exc}") from None


def answer_decryption(
    msg: Any,
    key_share: Any,
    account_key: Any,
    *,
    keys: Any,
    ledger: Any,
    participants: Sequence[str],
) -> Any:
    """A party's ClientApp ``query`` handler: its signed shares of the request in ``msg``
    (DecryptionRefused, naming the party, for a request that does not hold)."""
    from flwr.app import Message, RecordDict

    from ..decryption import party_share

    req = decode_request(msg.content.config_records[DECRYPT_KEY])
    signed = party_share(
        key_share, account_key, req, keys=keys, ledger=ledger, participants=participants
    )
    return Message(RecordDict({DECRYPT_KEY: encode_share(signed)}), reply_to=msg)


def decrypt_round(rnd: Any, grid: Any, nodes: Mapping[int, int], timeout: float, warn: Any) -> bool:
    """Ask every active party of ``rnd``'s decryption at its node (``nodes``: party -> node id)
    and keep the answers; False (each failure named through ``warn``) unless all arrived."""
    from flwr.app import Message, RecordDict

    # Checked before the request: asking seals a bucketed round, which cannot be asked again.
    active = _active(rnd.keys, nodes)
    missing = sorted(set(rnd.keys.ids if active is None else active) - set(nodes))
    if missing or grid is None or (active is None and not rnd.keys.n_of_n):
        warn(f"no node answers for key parties {missing or rnd.keys.ids}: round not decrypted")
        return False
    req = rnd.decryption_request(active=active)
    content = encode_request(req)
    messages = [
        Message(RecordDict({DECRYPT_KEY: content}), dst_node_id=nodes[p], message_type="query")
        for p in req.active
    ]
    ok = True
    for reply in grid.send_and_receive(messages, timeout=timeout):
        if reply.has_error():
            warn(f"node {reply.metadata.src_node_id}: {reply.error.reason}")
            ok = False
            continue
        try:
            rnd.add_share(decode_share(reply.content.config_records[DECRYPT_KEY]))
        except (BcflError, KeyError) as exc:
            warn(f"node {reply.metadata.src_node_id}: {exc}")
            ok = False
    return ok and not rnd.missing_shares


def _active(keys: Any, nodes: Mapping[int, int]) -> list[int] | None:
    """The active set: the first ``threshold`` parties with a node (N-of-N: all)."""
    if keys.n_of_n:
        return None
    have = sorted(p for p in keys.ids if p in nodes)
    return have[: keys.threshold] if len(have) >= keys.threshold else None


def plaintext_result(
    rnd: Any, res: Any, total_weight: int, template: Sequence[np.ndarray]
) -> list[np.ndarray]:
    """The model arrays of a decrypted round: the weighted mean (the decrypted sum over the
    total weight), or the rule over bucket means, in ``template``'s shapes and dtypes."""
    import torch

    from ..updates import ParamSpec

    if not template:
        raise InvalidArgument("a secure round's result needs the model's arrays as a template")
    spec = ParamSpec.infer(list(template))
    vec = torch.as_tensor(np.asarray(res.update, dtype=np.float64)[: spec.dim])
    if not rnd.bucketed:
        vec = vec / float(total_weight)
    return [np.asarray(a) for a in spec.unflatten(vec.to(torch.float32))]


def train_multiparty(strategy: Any, server_round: int, valid: Sequence[Any]) -> tuple[Any, Any]:
    """:meth:`~.flower.EngineFedAvg.aggregate_train` of a secure strategy whose rounds carry a
    multiparty key: submit, decrypt at the parties' nodes, finalize (see the module)."""
    from flwr.app import ArrayRecord

    from ..protocol import Payload
    from .flower_chain import integer_weight
    from .flower_policy import warn

    rnd = strategy.rounds(strategy.chain_rounds.of(server_round))
    if rnd.keys is None or rnd.secure != "ckks":
        raise InvalidArgument("a secure strategy's rounds must carry a multiparty key (keys=)")
    payloads, weights, nodes, kept = [], [], {}, []
    for msg in valid:
        name = f"node {msg.metadata.src_node_id}"
        rec = msg.content.config_records.get(strategy.record_key)
        metrics = list(msg.content.metric_records.values())
        w = metrics[0].get(strategy.weighted_by_key) if metrics else None
        count = integer_weight(w) if isinstance(w, (int, float)) else None
        if rec is None or not {"ckks", "address", "signature"} <= set(rec):
            warn(server_round, "left out %s: no signed ciphertext (see sign_ciphertext)", name)
            continue
        if "party" in rec:
            nodes[int(rec["party"])] = msg.metadata.src_node_id
        if count is None:
            warn(server_round, "left out %s: weight %r is not a positive integer", name, w)
            continue
        payloads.append(
            Payload(str(rec["address"]), bytes(rec["ckks"]), bytes(rec["signature"]), count)
        )
        weights.append(count)
        kept.append(msg.content)
    results = rnd.submit_many(payloads) if payloads else []
    accepted = [i for i, r in enumerate(results) if not isinstance(r, BcflError)]
    for i, r in enumerate(results):
        if isinstance(r, BcflError):
            warn(server_round, "left out %s: %s", payloads[i].client, r)

    def say(text: str) -> None:
        warn(server_round, "decryption: %s", text)

    try:
        done = bool(accepted) and decrypt_round(
            rnd, strategy.grid, nodes, strategy.decrypt_timeout, say
        )
        res = rnd.finalize() if done else None
    except BcflError as exc:
        say(f"{type(exc).__name__}: {exc}")
        res = None
    strategy.chain_rounds.settle(res is not None)
    if res is None:
        return None, None
    total = sum(weights[i] for i in accepted)
    arrays = plaintext_result(rnd, res, total, strategy.template)
    strategy.last_result = arrays
    record = ArrayRecord([np.asarray(a) for a in arrays])
    return record, strategy.train_metrics_aggr_fn(
        [kept[i] for i in accepted], strategy.weighted_by_key
    )
