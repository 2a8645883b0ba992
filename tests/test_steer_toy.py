"""Steering the shipped toy LLaVA through SAE neurons in its vision tower, judged by the
world's ground truth: the issue's acceptance tests for concept insertion and suppression.

One module-scoped run trains a TopK SAE on the block LLaVA reads, chooses each shape's
neuron from the training images (never hard-coded), picks α on ``val`` and reports ``test``
for SAE clamping, DiffMean and no steering.
"""

from __future__ import annotations

import pytest

from vlmsae.steer.compare import SteerEvalConfig
from vlmsae.steer.toy import ToySteeringConfig, toyworld_steering
from vlmsae.toyworld.shapes import SHAPES

N_TEST = 48


@pytest.fixture(scope="module")
def result():
    cfg = ToySteeringConfig(
        n_train=1024,
        n_val=24,
        n_test=N_TEST,
        steps=1000,
        eval=SteerEvalConfig(
            sae_alphas=(4.0, 8.0, 16.0, 32.0),
            sae_suppress_alphas=(0.0, -2.0),
            diffmean_alphas=(1.0, 2.0, 4.0),
            diffmean_suppress_alphas=(1.0, 2.0),
            batch_size=48,
            n_examples=2,
        ),
    )
    return toyworld_steering(cfg=cfg)


def _row(result, kind: str, method: str):
    (row,) = [r for r in result.comparison.table.rows if (r.kind, r.method) == (kind, method)]
    return row


def test_every_shape_gets_a_neuron_from_data(result):
    neurons = result.comparison.neurons
    assert set(neurons) == set(SHAPES)
    assert len({n.neuron for n in neurons.values()}) == len(SHAPES)  # one neuron per shape
    assert all(n.purity > 0.5 for n in neurons.values()), neurons


def test_clamping_a_shape_neuron_inserts_that_shape(result):
    """On a majority of test images that do not show the target shape, the one-word answer
    becomes that shape; unsteered, it almost never is."""
    sae, none = _row(result, "insert", "SAE"), _row(result, "insert", "none")
    assert sae.n == N_TEST
    assert sae.concept > 0.5 > none.concept + 0.3, (sae, none)


def test_switching_a_shape_neuron_off_suppresses_that_shape(result):
    """On images that show the shape, clamping its neuron to <= 0 removes the shape from
    the answer far more often than no steering does (the unsteered LLaVA names it)."""
    sae, none = _row(result, "suppress", "SAE"), _row(result, "suppress", "none")
    assert sae.concept > 0.5 and sae.concept > none.concept + 0.3, (sae, none)


def test_diffmean_runs_on_the_same_split(result):
    for kind in ("insert", "suppress"):
        dm, sae = _row(result, kind, "DiffMean"), _row(result, kind, "SAE")
        assert dm.n == sae.n == N_TEST and dm.alpha is not None
        assert 0 <= dm.both <= min(dm.concept, dm.followed) <= 1
