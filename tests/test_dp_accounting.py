"""dp.epsilon and dp.account against Google's dp-accounting on the same events."""

from __future__ import annotations

import math

import pytest

from bcfl_engine import dp as bdp
from bcfl_engine.errors import InvalidArgument

dpa = pytest.importorskip("dp_accounting")


def library_epsilon(event, delta: float) -> tuple[float, float]:
    rdp = dpa.rdp.RdpAccountant()
    rdp.compose(event)
    pld = dpa.pld.PLDAccountant()
    pld.compose(event)
    return rdp.get_epsilon(delta), pld.get_epsilon(delta)


@pytest.mark.parametrize(
    "z,q,rounds,delta", [(1.1, 0.01, 100, 1e-5), (1.0, 1.0, 5, 1e-5), (2.0, 0.5, 3, 1e-6)]
)
def test_epsilon_equals_dp_accounting(z: float, q: float, rounds: int, delta: float) -> None:
    gauss = dpa.GaussianDpEvent(z)
    one = gauss if q == 1.0 else dpa.PoissonSampledDpEvent(q, gauss)
    rdp, pld = library_epsilon(dpa.SelfComposedDpEvent(one, rounds), delta)
    acc = bdp.account([(z, q)] * rounds, delta)
    assert bdp.epsilon(z, q, rounds, delta) == acc.epsilon == min(rdp, pld)
    assert (acc.rdp, acc.pld) == (rdp, pld)
    assert acc.method == ("pld" if pld < rdp else "rdp")


def test_rounds_with_different_parameters_compose() -> None:
    rounds = [(1.0, 1.0), (1.0, 1.0), (2.0, 0.5)]
    event = dpa.ComposedDpEvent(
        [
            dpa.SelfComposedDpEvent(dpa.GaussianDpEvent(1.0), 2),
            dpa.SelfComposedDpEvent(dpa.PoissonSampledDpEvent(0.5, dpa.GaussianDpEvent(2.0)), 1),
        ]
    )
    assert bdp.account(rounds, 1e-5).epsilon == min(library_epsilon(event, 1e-5))
    # More rounds never spend less.
    assert bdp.account(rounds[:2], 1e-5).epsilon < bdp.account(rounds, 1e-5).epsilon


def test_no_noise_is_infinite_and_no_round_is_zero() -> None:
    assert math.isinf(bdp.epsilon(0.0, 1.0, 1, 1e-5))
    assert bdp.epsilon(1.0, 1.0, 0, 1e-5) == 0.0


@pytest.mark.parametrize(
    "args",
    [
        (-1.0, 1.0, 1, 1e-5),
        (1.0, 0.0, 1, 1e-5),
        (1.0, 1.5, 1, 1e-5),
        (1.0, 1.0, -1, 1e-5),
        (1.0, 1.0, 1, 0.0),
        (1.0, 1.0, 1, 1.0),
    ],
)
def test_epsilon_validates(args: tuple) -> None:
    with pytest.raises(InvalidArgument):
        bdp.epsilon(*args)
