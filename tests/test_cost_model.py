"""The cost model's one home (cost_model.cpp), through sirius_cost_predict as bench asks it: interpolation of the
measured verify curve, extrapolation past its last point, trees, and bad input refused."""

import pytest

from sirius_local import bench
from sirius_local.errors import InvalidParameterError

CURVE = [{"k": 1, "seconds": 0.010}, {"k": 2, "seconds": 0.012}, {"k": 4, "seconds": 0.016}]


def tps(k, a, s_ms, v_ms, steps):
    return 1000.0 * sum(a ** i for i in range(k)) / (steps * s_ms + v_ms)


def test_chain_between_measured_points():
    v, pred = bench.predict(CURVE, 3, 0.5, 5.0)
    assert v == pytest.approx(14.0)  # linear between K = 2 and K = 4
    assert pred == pytest.approx(tps(3, 0.5, 5.0, 14.0, steps=2))


def test_past_the_last_point_the_line_through_the_last_two():
    v, pred = bench.predict(CURVE, 7, 0.9, 4.0)
    assert v == pytest.approx(16.0 + 2.0 * 3)
    assert pred == pytest.approx(tps(7, 0.9, 4.0, 22.0, steps=6))


def test_a_tree_verifies_its_nodes_and_drafts_with_more_steps():
    v, pred = bench.predict(CURVE, 4, 0.8, 3.0, width=2)  # (K-1)·W + 1 = 7 nodes, 1 + (K-2)·W = 5 sparse steps
    assert v == pytest.approx(22.0)
    assert pred == pytest.approx(tps(4, 0.8, 3.0, 22.0, steps=5))


def test_one_measured_point_scales_proportionally():
    v, _ = bench.predict([{"k": 1, "seconds": 0.010}], 4, 1.0, 1.0)
    assert v == pytest.approx(40.0)


@pytest.mark.parametrize("k, a, s_ms, width", [(1, 0.5, 1.0, 1), (4, 1.5, 1.0, 1), (4, 0.5, -1.0, 1), (4, 0.5, 1.0, 9)])
def test_bad_input_is_refused(k, a, s_ms, width):
    with pytest.raises(InvalidParameterError):
        bench.predict(CURVE, k, a, s_ms, width)
