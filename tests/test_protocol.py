"""The round's byte format (bcfl_engine.protocol): encodings, weight bound, leaf, records, task
key; and the round's submit path built on it: weights bounded before anything is written, each
payload hashed once."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from bcfl_engine import protocol
from bcfl_engine.errors import InvalidArgument, InvalidWeight, PayloadError, ShapeMismatch
from bcfl_engine.updates import keccak256

D = 7


# ---- pure format --------------------------------------------------------------------------------


@pytest.mark.parametrize("weight", [1, 2, 2**32, protocol.MAX_WEIGHT])
def test_weights_in_bounds_pass(weight):
    assert protocol.check_weight(weight) == weight


@pytest.mark.parametrize(
    "weight",
    [0, -5, 2**64, 2**256, 2**1100, True, False, 2.0, "3", None, np.int64(3)],
    ids=["0", "neg", "2^64", "2^256", "2^1100", "true", "false", "float", "str", "none", "np"],
)
def test_weights_out_of_bounds_are_typed_errors(weight):
    with pytest.raises(InvalidWeight, match="weight"):
        protocol.check_weight(weight)


def test_a_huge_weight_is_not_printed_digit_by_digit():
    with pytest.raises(InvalidWeight, match="1101 bits") as info:
        protocol.check_weight(2**1100)
    assert len(str(info.value)) < 120


def test_encode_decode_and_the_zero_copy_view():
    x = torch.linspace(-3, 3, D)
    data = protocol.encode_update(x)
    assert len(data) == 4 * D
    assert torch.equal(protocol.decode_update(data, D), x)
    view = protocol.update_view(data, D)
    assert torch.equal(view, x)
    assert view.data_ptr() == np.frombuffer(data, np.uint8).ctypes.data  # no copy
    for f in (protocol.decode_update, protocol.update_view):
        with pytest.raises(ShapeMismatch, match="28 bytes"):
            f(data[:-1], D)


def test_leaf_is_the_chains_and_weights_in_the_leaf_are_uint256_words():
    from bcfl_engine.chain import merkle

    assert protocol.leaf_hash is merkle.leaf_hash
    rec = {
        "client": "0x" + "11" * 20,
        "digest": "22" * 32,
        "weight": protocol.MAX_WEIGHT,
        "salt": "33" * 32,
    }
    word = b"".join(
        [
            (1).to_bytes(32, "big"),
            bytes(12) + bytes.fromhex("11" * 20),
            bytes.fromhex("22" * 32),
            protocol.MAX_WEIGHT.to_bytes(32, "big"),
            bytes.fromhex("33" * 32),
        ]
    )
    assert protocol.leaves_of(1, [rec]) == [keccak256(keccak256(word))]


def test_the_task_key_names_one_task_on_one_chain():
    reg = "0x" + "AB" * 20
    a = protocol.task_key(31337, reg, 1, b"\x01" * 32)
    assert a == f"1-31337-{'ab' * 20}-{'01' * 8}"
    assert protocol.task_key(31337, reg, 1, b"\x02" * 32) != a  # another deployment
    assert protocol.task_key(1, reg, 1, b"\x01" * 32) != a
    with pytest.raises(InvalidArgument, match="origin"):
        protocol.task_key(1, reg, 1, b"short")
    with pytest.raises(InvalidArgument, match="task"):
        protocol.task_key(1, reg, -1, b"\x01" * 32)


GOOD_ACCEPTANCE = {
    "seq": 0,
    "client": "0x" + "ab" * 20,
    "digest": "cd" * 32,
    "weight": 5,
    "salt": "ef" * 32,
    "signature": "01" * 65,
}


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("seq", -1),
        ("seq", "0"),
        ("client", "0x" + "AB" * 20),
        ("client", "ab" * 20),
        ("digest", "zz" * 32),
        ("digest", "cd" * 31),
        ("weight", 0),
        ("weight", 2**64),
        ("weight", 1.5),
        ("salt", None),
        ("signature", "01" * 64),
    ],
)
def test_malformed_acceptance_records_name_the_field(key, value):
    assert protocol.check_acceptance(dict(GOOD_ACCEPTANCE)) == GOOD_ACCEPTANCE
    bad = {**GOOD_ACCEPTANCE, key: value}
    with pytest.raises(PayloadError, match=repr(key)):
        protocol.check_acceptance(bad)
    missing = {k: v for k, v in GOOD_ACCEPTANCE.items() if k != key}
    with pytest.raises(PayloadError, match=f"{key!r} is missing"):
        protocol.check_acceptance(missing)


def test_metadata_round_trips_and_is_checked():
    meta = protocol.round_meta(
        task=1, round=2, secure=None, rule="median", f=1, params={}, pre=[], backend="torch", dim=D
    )
    assert meta["format"] == protocol.FORMAT and meta["digest"] == protocol.DIGEST
    assert meta["signed"] == protocol.SIGNED_TYPE
    import json

    assert protocol.check_meta(json.loads(protocol.encode_meta(meta))) == meta
    for key, value in [
        ("rule", "no-such-rule"),
        ("backend", "gpu9000"),
        ("dim", 0),
        ("secure", "paillier"),
        ("format", "bcfl-round/1"),
        ("pre", "clip"),
        ("params", []),
    ]:
        bad = copy.deepcopy(meta)
        bad[key] = value
        with pytest.raises(PayloadError):
            protocol.check_meta(bad)


def test_the_payload_digest_is_blake3_and_old_names_still_map():
    # BLAKE3's published test vector for "abc" (not computed by the package under test).
    abc = "6437b3ac38465133ffb63b75273a8db548c558465d79db03fd359c6cd5bd9d85"
    assert protocol.DIGEST == "blake3-256" and protocol.payload_digest(b"abc").hex() == abc
    assert protocol.payload_digest(memoryview(b"abc")).hex() == abc
    assert protocol.digest_function("blake3-256") is protocol.payload_digest
    assert protocol.digest_function("keccak-256")(b"abc") == keccak256(b"abc")
    with pytest.raises(PayloadError, match="unknown payload digest"):
        protocol.digest_function("sha-256")
    # The metadata hash stays keccak-256 (the chain commits it; the audit reads it first).
    assert protocol.meta_hash(b'{"a":1}') == keccak256(b'{"a":1}')


def test_metadata_of_a_keccak_round_still_reads_and_digests_do_not_mix():
    import json

    meta = protocol.round_meta(
        task=1, round=2, secure=None, rule="mean", f=0, params={}, pre=[], backend="torch", dim=D
    )
    old = {**meta, "format": "bcfl-round/2", "digest": "keccak-256"}
    assert protocol.check_meta(json.loads(protocol.encode_meta(old))) == old
    for bad in (
        {**meta, "digest": "keccak-256"},  # format 3 names its payloads with BLAKE3
        {**old, "digest": protocol.DIGEST},
        {**meta, "format": ["bcfl-round/3"]},
    ):
        with pytest.raises(PayloadError):
            protocol.check_meta(bad)


# ---- the round's submit path --------------------------------------------------------------------

pytest.importorskip("web3")
from eth_account import Account  # noqa: E402

from bcfl_engine.chain import Ledger  # noqa: E402
from bcfl_engine.round import AggregationRound, Payload, sign_payload  # noqa: E402
from bcfl_engine.store import PayloadStore  # noqa: E402

N = 3
KEYS = [keccak256(f"protocol hospital {i}".encode()) for i in range(N)]
ADDRESSES = [Account.from_key(k).address for k in KEYS]


@pytest.fixture(scope="module")
def ledger():
    return Ledger.embedded()


def new_round(ledger, store):
    task = ledger.create_task(aggregator=ledger.sender, participants=ADDRESSES, model_spec=b"p")
    return AggregationRound(ledger, task, 1, store, participants=ADDRESSES, dim=D)


def files(root):
    return sorted(p.relative_to(root) for p in root.rglob("*") if p.is_file())


@pytest.mark.parametrize("weight", [2**64, 2**256, 2**1100, 0, True], ids=str)
def test_an_out_of_bounds_weight_is_rejected_before_anything_is_written(ledger, tmp_path, weight):
    rnd = new_round(ledger, tmp_path)
    rnd.submit(
        sign_payload(KEYS[0], rnd.task, 1, protocol.encode_update(torch.ones(D)), ledger.domain)
    )
    before = files(tmp_path)
    data = protocol.encode_update(torch.zeros(D))
    honest = sign_payload(KEYS[1], rnd.task, 1, data, ledger.domain, weight=7)
    with pytest.raises(InvalidWeight, match="weight"):
        rnd.submit(Payload(honest.client, data, honest.signature, weight))
    assert files(tmp_path) == before and len(rnd) == 1
    with pytest.raises(InvalidWeight):  # nor can a client sign one
        sign_payload(KEYS[1], rnd.task, 1, data, ledger.domain, weight=weight)
    res = rnd.finalize()  # the round still finalizes
    assert res.clients == [ADDRESSES[0].lower()]


def test_a_weight_other_than_the_signed_one_is_a_bad_signature(ledger, tmp_path):
    from bcfl_engine.chain.errors import BadSignature

    rnd = new_round(ledger, tmp_path)
    p = sign_payload(KEYS[0], rnd.task, 1, protocol.encode_update(torch.ones(D)), ledger.domain, 3)
    with pytest.raises(BadSignature, match="weight"):
        rnd.submit(Payload(p.client, p.data, p.signature, weight=300))
    assert len(rnd) == 0 and PayloadStore(tmp_path).accepted(rnd.key, 1) == []
    assert rnd.submit(p)["weight"] == 3
    res = rnd.finalize()
    assert torch.equal(res.update, torch.ones(D))


def test_the_largest_weight_goes_through_a_round(ledger, tmp_path):
    rnd = new_round(ledger, tmp_path)
    for i, w in enumerate([protocol.MAX_WEIGHT, 1]):
        x = torch.full((D,), float(i))
        rnd.submit(sign_payload(KEYS[i], rnd.task, 1, protocol.encode_update(x), ledger.domain, w))
    res = rnd.finalize()
    assert torch.allclose(res.update, torch.zeros(D), atol=1e-6)  # 1 in 2^64 of the weight


def test_submit_hashes_each_payload_once(ledger, tmp_path, monkeypatch):
    rnd = new_round(ledger, tmp_path)
    payloads = [
        sign_payload(
            KEYS[i], rnd.task, 1, protocol.encode_update(torch.full((D,), i)), ledger.domain
        )
        for i in range(N)
    ]
    honest = protocol.payload_digest
    calls: list[int] = []

    def counting(data):
        calls.append(len(data))
        return honest(data)

    monkeypatch.setattr(protocol, "payload_digest", counting)
    for p in payloads:
        rnd.submit(p)
    assert calls == [4 * D] * N
    calls.clear()
    rnd.submit(payloads[0])  # a retry is hashed once too, and written nowhere
    assert calls == [4 * D]


def test_task_origin_is_the_creating_blocks_hash(ledger):
    from bcfl_engine.chain.errors import UnknownTask

    task = ledger.create_task(aggregator=ledger.sender, participants=ADDRESSES, model_spec=b"o")
    origin = ledger.task_origin(task)
    block = ledger.w3.eth.get_block(ledger.w3.eth.block_number)  # createTask was the last tx
    assert origin == bytes(block["hash"])
    assert ledger.as_sender(KEYS[0]).task_origin(task) == origin
    with pytest.raises(UnknownTask, match="not created"):
        ledger.task_origin(task + 1000)


@pytest.mark.parametrize(
    "first", ["bcfl_engine.protocol", "bcfl_engine.chain.signing", "bcfl_engine.store"]
)
def test_the_digest_modules_import_in_any_order(first):
    import subprocess
    import sys

    code = f"import {first}; import bcfl_engine.chain.signing as s, bcfl_engine.protocol as p"
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


def test_payload_digests_in_parallel_equal_one_at_a_time(monkeypatch):
    rng = np.random.default_rng(3)
    payloads = [rng.bytes(int(n)) for n in rng.integers(0, 5000, size=37)]
    one = [protocol.payload_digest(p) for p in payloads]
    assert protocol.payload_digests(payloads) == one  # below the threshold: one thread
    monkeypatch.setattr(protocol, "PARALLEL_DIGEST_BYTES", 1)
    monkeypatch.setattr(protocol.os, "cpu_count", lambda: 3)
    assert protocol.payload_digests(payloads) == one  # three slices, in order
    assert protocol.payload_digests([]) == [] and protocol.payload_digests(payloads[:1]) == one[:1]
