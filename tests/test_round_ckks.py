"""AggregationRound on CKKS ciphertexts (real TenSEAL keys and payloads), on the embedded chain.

Payloads are compact ones from he.encrypt, or stock TenSEAL ones stored uncompressed: this
machine's native codec reads no zstd yet.
"""

from __future__ import annotations

import pytest
import torch
from helpers import make_updates
from store_tools import flip_payload_byte

from bcfl_engine import protocol
from bcfl_engine.errors import PayloadError
from bcfl_engine.round import AggregationRound, audit, sign_payload
from bcfl_engine.store import PayloadStore
from bcfl_engine.updates import keccak256

pytest.importorskip("web3")
pytest.importorskip("tenseal")
from eth_account import Account

from bcfl_engine.chain import Ledger

N, D = 5, 7
KEYS = [keccak256(f"test hospital {i}".encode()) for i in range(N)]
ADDRESSES = [Account.from_key(k).address for k in KEYS]


@pytest.fixture(scope="module")
def ledger():
    return Ledger.embedded()


def new_task(ledger) -> int:
    return ledger.create_task(aggregator=ledger.sender, participants=ADDRESSES, model_spec=b"t")


@pytest.fixture(scope="module")
def ckks_keys():
    he = pytest.importorskip("bcfl_engine.he")
    if not hasattr(he, "encrypt"):
        pytest.skip("bcfl_engine.he has no encrypt in this build yet")
    return he.generate_keys("default")


def test_ckks_round_decrypts_to_the_weighted_sum_and_audits(ledger, tmp_path, ckks_keys):
    from bcfl_engine import he

    task = new_task(ledger)
    public = ckks_keys.public_context()
    x = make_updates(N, D, seed=9)
    rnd = AggregationRound(
        ledger, task, 1, tmp_path, participants=ADDRESSES[:N], secure="ckks", he_context=public
    )
    for i in range(N):
        blob = he.encrypt(x[i].numpy(), public)
        rnd.submit(sign_payload(KEYS[i], task, 1, blob, ledger.domain, weight=i + 1))
    res = rnd.finalize()
    assert isinstance(res.update, bytes) and res.result_digest == protocol.payload_digest(
        res.update
    )
    w = torch.arange(1, N + 1, dtype=torch.float64)
    got = torch.as_tensor(he.decrypt(res.update, ckks_keys.secret_context))[:D]
    expected = (w[:, None] * x.double()).sum(0)
    # the sum of n ciphertexts is within sum_i w_i * precision of the plaintext weighted sum
    assert float((got - expected).abs().max()) <= float(w.sum()) * ckks_keys.preset.precision
    report = audit(ledger, task, 1, tmp_path)
    assert report.ok, report.summary()


def test_ckks_round_rejects_a_truncated_ciphertext(ledger, tmp_path, ckks_keys):
    from bcfl_engine import he

    task = new_task(ledger)
    public = ckks_keys.public_context()
    rnd = AggregationRound(
        ledger, task, 1, tmp_path, participants=ADDRESSES[:N], secure="ckks", he_context=public
    )
    blob = he.encrypt(torch.ones(D).numpy(), public)
    rnd.submit(sign_payload(KEYS[0], task, 1, blob, ledger.domain))
    with pytest.raises(PayloadError, match=ADDRESSES[1].lower()):
        rnd.submit(sign_payload(KEYS[1], task, 1, blob[:-100], ledger.domain))
    assert len(rnd) == 1


def _tenseal_top_level(keys, x):
    """A stock TenSEAL payload (top level, two primes of the default preset), stored
    uncompressed: this build's native codec reads no zstd."""
    import tenseal as ts

    from bcfl_engine.he import wire

    blob = ts.ckks_vector(keys.secret_context, x.tolist()).serialize()
    layout = wire.peek(blob, keys.info)
    residues, version = wire.parse(blob, layout)
    return wire.to_tenseal(residues, layout, layout.scale, version, 0)


MISMATCHES = {
    "length": lambda he, keys, pub: he.encrypt(torch.ones(D + 1).numpy(), pub),
    "chunks": lambda he, keys, pub: he.encrypt(torch.ones(5000).numpy(), pub),
    "paired": lambda he, keys, pub: he.encrypt(torch.ones(D).numpy(), pub, pair=True),
    "level": lambda he, keys, pub: _tenseal_top_level(keys, torch.ones(D).double()),
}


@pytest.mark.parametrize("case", list(MISMATCHES))
def test_ckks_payload_unlike_the_first_is_rejected_and_the_round_finalizes(
    ledger, tmp_path, ckks_keys, case
):
    from bcfl_engine import he

    task = new_task(ledger)
    public = ckks_keys.public_context()
    rnd = AggregationRound(
        ledger, task, 1, tmp_path, participants=ADDRESSES[:N], secure="ckks", he_context=public
    )
    x = make_updates(N, D, seed=11)
    rnd.submit(sign_payload(KEYS[0], task, 1, he.encrypt(x[0].numpy(), public), ledger.domain))
    odd = MISMATCHES[case](he, ckks_keys, public)
    he.CiphertextBatch(public, 1).add("alone", odd)  # a valid payload for the context on its own
    with pytest.raises(PayloadError, match=ADDRESSES[1].lower()):
        rnd.submit(sign_payload(KEYS[1], task, 1, odd, ledger.domain))
    assert len(rnd) == 1 and len(PayloadStore(tmp_path).accepted(task, 1)) == 1
    for i in range(1, N):
        rnd.submit(sign_payload(KEYS[i], task, 1, he.encrypt(x[i].numpy(), public), ledger.domain))
    got = torch.as_tensor(he.decrypt(rnd.finalize().update, ckks_keys.secret_context))[:D]
    assert float((got - x.double().sum(0)).abs().max()) <= N * ckks_keys.preset.precision
    report = audit(ledger, task, 1, tmp_path)
    assert report.ok, report.summary()


@pytest.mark.parametrize("kind", ["compact", "stock"])
def test_ckks_round_resumed_mid_way_gives_he_aggregates_bytes(ledger, tmp_path, ckks_keys, kind):
    """The round sums each ciphertext as it is accepted; after a restart it sums the stored
    ones again; either way the bytes are he.aggregate's over the same payloads and weights."""
    from bcfl_engine import he

    task = new_task(ledger)
    public = ckks_keys.public_context()
    x = make_updates(N, D, seed=13).double()
    if kind == "compact":
        blobs = [he.encrypt(x[i].numpy(), public) for i in range(N)]
    else:
        blobs = [_tenseal_top_level(ckks_keys, x[i]) for i in range(N)]
    weights = [3, 1, 2**40, 7, 1]

    def make():
        return AggregationRound(
            ledger, task, 1, tmp_path, participants=ADDRESSES, secure="ckks", he_context=public
        )

    rnd = make()
    for i in range(2):
        rnd.submit(sign_payload(KEYS[i], task, 1, blobs[i], ledger.domain, weight=weights[i]))
    rnd = make()  # restarted
    assert len(rnd) == 2
    for i in range(2, N):
        rnd.submit(sign_payload(KEYS[i], task, 1, blobs[i], ledger.domain, weight=weights[i]))
    res = rnd.finalize()
    assert res.update == he.aggregate(blobs, weights, context=public)
    report = audit(ledger, task, 1, tmp_path)
    assert report.ok, report.summary()


def test_ckks_submit_hashes_and_parses_each_payload_once(ledger, tmp_path, ckks_keys, monkeypatch):
    from bcfl_engine import he, protocol

    task = new_task(ledger)
    public = ckks_keys.public_context()
    x = make_updates(N, D, seed=14)
    ps = [
        sign_payload(KEYS[i], task, 1, he.encrypt(x[i].numpy(), public), ledger.domain)
        for i in range(N)
    ]
    want = he.aggregate([p.data for p in ps], [1] * N, context=public)
    rnd = AggregationRound(
        ledger, task, 1, tmp_path, participants=ADDRESSES, secure="ckks", he_context=public
    )
    hashed, parsed = [], []
    digest, add = protocol.payload_digest, he.CiphertextBatch.add
    monkeypatch.setattr(protocol, "payload_digest", lambda d: hashed.append(1) or digest(d))
    monkeypatch.setattr(he.CiphertextBatch, "add", lambda s, c, b: parsed.append(c) or add(s, c, b))
    for p in ps:
        rnd.submit(p)
    assert len(hashed) == N and parsed == [a.lower() for a in ADDRESSES]
    monkeypatch.setattr(he, "aggregate", lambda *a, **k: pytest.fail("parsed again at finalize"))
    assert rnd.finalize().update == want
    assert len(parsed) == N


@pytest.mark.parametrize("what", ["context", "payload", "result"])
def test_ckks_audit_names_an_altered_object(ledger, tmp_path, ckks_keys, what):
    from bcfl_engine import he, protocol

    task = new_task(ledger)
    public = ckks_keys.public_context()
    rnd = AggregationRound(
        ledger, task, 1, tmp_path, participants=ADDRESSES, secure="ckks", he_context=public
    )
    x = make_updates(N, D, seed=15)
    for i in range(N):
        rnd.submit(sign_payload(KEYS[i], task, 1, he.encrypt(x[i].numpy(), public), ledger.domain))
    res = rnd.finalize()
    store = PayloadStore(tmp_path)
    digest = {
        "context": protocol.payload_digest(public),
        "payload": bytes.fromhex(store.accepted(task, 1)[0]["digest"]),
        "result": res.result_digest,
    }[what]
    if what == "payload":
        flip_payload_byte(store, task, 1, digest.hex(), at=1000)
    else:
        path = store.path(digest)
        raw = bytearray(path.read_bytes())
        raw[len(raw) // 2] ^= 1
        path.write_bytes(bytes(raw))
    report = audit(ledger, task, 1, tmp_path)
    assert not report.ok and "0x" + digest.hex() in report.summary(), report.summary()


def test_a_ckks_round_given_dim_ignores_it_and_audits(ledger, tmp_path, ckks_keys):
    """dim is a plaintext round's; a CKKS round given one (as a caller that builds every round
    alike does) commits dim null, so its metadata reads back and the audit recomputes it."""
    from bcfl_engine import he

    task = new_task(ledger)
    public = ckks_keys.public_context()
    rnd = AggregationRound(
        ledger, task, 1, tmp_path, participants=ADDRESSES, dim=D, secure="ckks", he_context=public
    )
    x = make_updates(2, D, seed=3)
    for i in range(2):
        rnd.submit(sign_payload(KEYS[i], task, 1, he.encrypt(x[i].numpy(), public), ledger.domain))
    rnd.finalize()
    assert rnd.dim is None
    report = audit(ledger, task, 1, tmp_path)
    assert report.ok, report.summary()
