"""Chain commits for NVIDIA FLARE's plaintext jobs: sites sign, RobustAggregator(ledger=...)
checks each signature on accept, commits the round through the pipeline, and the audit
recomputes it (messages through fobs + accept + aggregate, on the embedded chain)."""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import pytest
import torch

pytest.importorskip("nvflare")
pytest.importorskip("web3")

from eth_account import Account
from nvflare.apis.dxo import DXO, DataKind, MetaKey, from_shareable
from nvflare.apis.fl_constant import ReservedKey
from nvflare.apis.fl_context import FLContextManager
from nvflare.apis.shareable import Shareable
from nvflare.app_common.app_constant import AppConstants
from nvflare.fuel.utils import fobs
from nvflare.private.fed.utils.fed_utils import nvflare_fobs_initialize
from nvflare_msgs import run, server

from bcfl_engine.chain import Ledger
from bcfl_engine.errors import InvalidArgument
from bcfl_engine.integrations.nvflare_chain import META_KEY, SignContribution, sign_dxo
from bcfl_engine.integrations.nvflare_robust import RobustAggregator
from bcfl_engine.round import audit
from bcfl_engine.updates import keccak256

nvflare_fobs_initialize()
SHAPES = {"fc.weight": (7, 5), "conv.weight": (4, 3, 3), "conv.bias": (4,)}
KEYS = [keccak256(f"nvflare site {i}".encode()) for i in range(6)]
SITES = [Account.from_key(k).address for k in KEYS]


def weights(seed: int) -> dict[str, Any]:
    rng = np.random.default_rng(seed)
    return {k: rng.standard_normal(s).astype(np.float32) for k, s in SHAPES.items()}


def signed_msg(
    ledger: Ledger, task: int, i: int, data: dict[str, Any], round_: int = 0, *,
    sign_round: int | None = None, key: bytes | None = None, steps: int = 1,
    tamper: bool = False, sign: bool = True,
) -> bytes:  # fmt: skip
    dxo = DXO(DataKind.WEIGHTS, data, meta={MetaKey.NUM_STEPS_CURRENT_ROUND: steps})
    if sign:
        sign_dxo(
            dxo, key or KEYS[i], task=task, round=(sign_round or round_ + 1), domain=ledger.domain
        )
    if tamper:
        dxo.data["fc.weight"] = dxo.data["fc.weight"] + 1
    shareable = dxo.to_shareable()
    shareable.set_peer_props({ReservedKey.IDENTITY_NAME: f"site-{i}"})
    shareable.add_cookie(AppConstants.CONTRIBUTION_ROUND, round_)
    return fobs.dumps(shareable)  # type: ignore[no-any-return]


@pytest.fixture
def chain(tmp_path) -> dict[str, Any]:
    ledger = Ledger.embedded()
    task = ledger.create_task(aggregator=ledger.sender, participants=SITES[:5], model_spec=b"nv")
    opts = dict(ledger=ledger, task=task, participants=SITES[:5], store=str(tmp_path / "store"))
    return {"ledger": ledger, "task": task, "opts": opts, "store": tmp_path / "store"}


def flat(d: dict[str, Any]) -> torch.Tensor:
    return torch.cat([torch.as_tensor(np.asarray(d[k])).reshape(-1) for k in SHAPES])


def test_a_signed_round_commits_the_same_median_and_audits(chain) -> None:
    ledger, task = chain["ledger"], chain["task"]
    ups = [weights(i) for i in range(5)]
    plain, want = run(RobustAggregator, [signed_msg(ledger, task, i, u, sign=False) for i, u in enumerate(ups)],
                      rule="median", f=1, expected_data_kind=DataKind.WEIGHTS)  # fmt: skip
    flags, out = run(RobustAggregator, [signed_msg(ledger, task, i, u) for i, u in enumerate(ups)],
                     rule="median", f=1, expected_data_kind=DataKind.WEIGHTS, **chain["opts"])  # fmt: skip
    assert flags == plain == [True] * 5
    assert torch.equal(flat(out.data), flat(want.data))
    assert all(out.data[k].shape == SHAPES[k] for k in SHAPES)
    record = ledger.record(task, 1)
    assert record is not None and record.n == 5
    report = audit(ledger, task, 1, chain["store"])
    assert report.ok, report.summary()


def test_bad_signatures_are_rejected_with_a_reason_and_the_rest_commit(chain, caplog) -> None:
    ledger, task = chain["ledger"], chain["task"]
    good = [signed_msg(ledger, task, i, weights(i), steps=i + 1) for i in range(3)]
    bad = [
        signed_msg(ledger, task, 3, weights(3), sign=False),  # unsigned
        signed_msg(ledger, task, 4, weights(4), tamper=True),  # arrays changed after signing
        signed_msg(ledger, task, 5, weights(5)),  # not a participant
        signed_msg(ledger, task, 4, weights(4), sign_round=2),  # signed for another round
    ]
    with caplog.at_level(logging.ERROR):
        flags, out = run(RobustAggregator, good + bad, rule="mean", expected_data_kind=DataKind.WEIGHTS,
                         **chain["opts"])  # fmt: skip
    assert flags == [True] * 3 + [False] * 4
    errors = [r.getMessage() for r in caplog.records if "discarding" in r.getMessage()]
    for site, why in [
        ("site-3", "no signature"),
        ("site-4", "signature"),
        ("site-5", "participant"),
    ]:
        assert any(site in e and why in e for e in errors), (site, errors)
    w = torch.tensor([1.0, 2.0, 3.0])
    want = (torch.stack([flat(weights(i)) for i in range(3)]) * w[:, None]).sum(0) / w.sum()
    assert torch.allclose(flat(out.data), want, atol=1e-6)
    assert ledger.record(task, 1).n == 3
    assert audit(ledger, task, 1, chain["store"]).ok


def test_two_rounds_commit_registry_rounds_one_and_two(chain) -> None:
    ledger, task = chain["ledger"], chain["task"]
    for r in (0, 1):
        agg, fl_ctx = server(RobustAggregator, round_=r, rule="trimmed_mean", f=1,
                             expected_data_kind=DataKind.WEIGHTS, **chain["opts"])  # fmt: skip
        msgs = [signed_msg(ledger, task, i, weights(10 * r + i), round_=r) for i in range(5)]
        assert all(agg.accept(fobs.loads(m), fl_ctx) for m in msgs)
        from_shareable(agg.aggregate(fl_ctx))
        assert ledger.record(task, r + 1) is not None
        assert audit(ledger, task, r + 1, chain["store"]).ok


def test_chain_arguments_are_checked_at_construction(chain) -> None:
    opts = chain["opts"]
    with pytest.raises(InvalidArgument, match="aggregation_weights"):
        RobustAggregator(aggregation_weights={"site-0": 2.0}, **opts)
    with pytest.raises(InvalidArgument, match="weigh_by_local_iter"):
        RobustAggregator(weigh_by_local_iter=False, **opts)
    with pytest.raises(InvalidArgument, match="task="):
        RobustAggregator(**{**opts, "task": None})
    with pytest.raises(InvalidArgument, match="store="):
        RobustAggregator(**{**opts, "store": None})


def test_the_site_filter_signs_for_the_task_round(chain, tmp_path) -> None:
    ledger, task = chain["ledger"], chain["task"]
    key_file = tmp_path / "site.key"
    key_file.write_text(KEYS[0].hex())
    flt = SignContribution(task, ledger.chain_id, ledger.address, key_file=str(key_file))
    shareable = Shareable()
    shareable.set_header(AppConstants.CURRENT_ROUND, 3)
    fl_ctx = FLContextManager(engine=None, identity_name="site-0", job_id="t").new_context()
    dxo = flt.process_dxo(DXO(DataKind.WEIGHTS, weights(0)), shareable, fl_ctx)
    meta = dxo.get_meta_prop(META_KEY)
    assert meta["round"] == 4 and meta["address"] == SITES[0] and meta["weight"] == 1
    with pytest.raises(InvalidArgument, match="32 bytes"):
        SignContribution(task, ledger.chain_id, ledger.address, key="abcd")
    with pytest.raises(InvalidArgument, match="key= \\(hex\\), key_file="):
        SignContribution(task, ledger.chain_id, ledger.address)


def he_msg(ledger: Ledger, task: int, i: int, ctx: Any, values: dict[str, np.ndarray], *,
           sign: bool = True, tamper: bool = False) -> bytes:  # fmt: skip
    """What HEModelEncryptor then SignContribution send: a ckks_vector per layer, signed."""
    import tenseal as ts

    layers: dict[str, Any] = {k: ts.ckks_vector(ctx, v.tolist()) for k, v in values.items()}
    layers["head"] = np.arange(4, dtype=np.float32)  # a plaintext leftover: not in the bundle
    dxo = DXO(DataKind.WEIGHT_DIFF, layers, meta={MetaKey.NUM_STEPS_CURRENT_ROUND: 1,
                                                  MetaKey.PROCESSED_ALGORITHM: "CKKS"})  # fmt: skip
    if sign:
        sign_dxo(dxo, KEYS[i], task=task, round=1, domain=ledger.domain)
    if tamper:
        dxo.data["fc.weight"] = ts.ckks_vector(ctx, (values["fc.weight"] + 1).tolist())
    shareable = dxo.to_shareable()
    shareable.set_peer_props({ReservedKey.IDENTITY_NAME: f"site-{i}"})
    shareable.add_cookie(AppConstants.CONTRIBUTION_ROUND, 0)
    return fobs.dumps(shareable)  # type: ignore[no-any-return]


def test_an_he_round_commits_its_bundled_sum_and_the_output_is_unchanged(chain, caplog) -> None:
    ts = pytest.importorskip("tenseal")
    from nvflare_msgs import he_context

    from bcfl_engine.integrations import nvflare_wire
    from bcfl_engine.integrations.nvflare import HEInTimeAccumulateWeightedAggregator as Ours

    nvflare_wire.register()
    ledger, task = chain["ledger"], chain["task"]
    ctx = he_context()
    rng = np.random.default_rng(3)
    sizes = {"fc.weight": 5000, "conv.bias": 17}  # 2 ciphertexts + 1
    values = [{k: rng.uniform(-1, 1, d) for k, d in sizes.items()} for _ in range(4)]
    msgs = [he_msg(ledger, task, i, ctx, v) for i, v in enumerate(values[:3])]
    bad = [he_msg(ledger, task, 3, ctx, values[3], sign=False),
           he_msg(ledger, task, 4, ctx, values[3], tamper=True)]  # fmt: skip
    _, plain_out = run(Ours, msgs, expected_data_kind=DataKind.WEIGHT_DIFF)
    with caplog.at_level(logging.ERROR):
        flags, out = run(Ours, msgs + bad, expected_data_kind=DataKind.WEIGHT_DIFF, **chain["opts"])
    assert flags == [True] * 3 + [False] * 2
    errors = [r.getMessage() for r in caplog.records if "discarding" in r.getMessage()]
    assert any("site-3" in e and "no signature" in e for e in errors), errors
    assert any("site-4" in e and "signature" in e for e in errors), errors
    for k in sizes:  # the output is NVFlare's, byte for byte, with or without the chain
        assert out.data[k].serialize() == plain_out.data[k].serialize(), k
    record = ledger.record(task, 1)
    assert record is not None and record.n == 3
    report = audit(ledger, task, 1, chain["store"])
    assert report.ok, report.summary()
    # the committed result is the sum of the bundles: every layer, in name order
    from bcfl_engine.store import PayloadStore

    blob = PayloadStore(chain["store"]).get(record.result_digest)
    got = np.array(ts.ckks_vector_from(ctx, blob).decrypt())
    want = np.concatenate([sum(v[k] for v in values[:3]) for k in sorted(sizes)])
    assert got.shape == want.shape and np.abs(got - want).max() < 1e-4


def test_bundles_sum_as_tenseal_sums_them() -> None:
    """A bundle keeps each layer's ciphertexts and sizes (4096, 904, 17 here, not TenSEAL's
    own 4096, 921 split): he.aggregate of bundles decrypts to exactly what TenSEAL's sum of the
    same vectors decrypts to, and bundles of other layouts do not mix."""
    ts = pytest.importorskip("tenseal")
    from nvflare_msgs import he_context

    from bcfl_engine import he
    from bcfl_engine.errors import PayloadError
    from bcfl_engine.integrations.nvflare_chain import he_bundle

    ctx = he_context()
    public = ctx.serialize(save_secret_key=False)
    rng = np.random.default_rng(5)
    bundles = [
        he_bundle(
            [ts.ckks_vector(ctx, rng.uniform(-1, 1, n).tolist()).serialize() for n in (5000, 17)]
        )
        for _ in range(3)
    ]
    ours = he.aggregate(bundles, context=public)
    theirs = ts.ckks_vector_from(ctx, bundles[0])
    for b in bundles[1:]:
        theirs = theirs + ts.ckks_vector_from(ctx, b)
    got = ts.ckks_vector_from(ctx, bytes(ours)).decrypt()
    assert len(got) == 5017 and got == theirs.decrypt()
    other = he_bundle(
        [ts.ckks_vector(ctx, [0.5] * 17).serialize(), ts.ckks_vector(ctx, [1.0] * 5000).serialize()]
    )
    with pytest.raises(PayloadError, match="size of chunk 0 is 17; the batch has 4096"):
        he.aggregate([bundles[0], other], context=public)
    with pytest.raises(PayloadError, match="no encrypted layer"):
        he_bundle([])


def test_an_unreachable_chain_rejects_with_a_reason_and_the_job_carries_on(chain, caplog) -> None:
    """A ledger given as a URL connects on first use (a job's components are also built at
    export): without the aggregator's key each reply is rejected with the reason, and the
    round still closes as NVFlare's would."""
    ledger, task = chain["ledger"], chain["task"]
    opts = {**chain["opts"], "ledger": "http://127.0.0.1:9", "registry": ledger.address,
            "key_env": "BCFL_TEST_NO_SUCH_KEY"}  # fmt: skip
    with pytest.raises(InvalidArgument, match="registry="):
        RobustAggregator(**{**opts, "registry": None})
    with caplog.at_level(logging.ERROR):
        flags, out = run(RobustAggregator, [signed_msg(ledger, task, i, weights(i)) for i in range(3)],
                         rule="median", expected_data_kind=DataKind.WEIGHTS, **opts)  # fmt: skip
    assert flags == [False] * 3 and out is not None
    assert any("BCFL_TEST_NO_SUCH_KEY" in r.getMessage() for r in caplog.records)
    assert ledger.record(task, 1) is None
