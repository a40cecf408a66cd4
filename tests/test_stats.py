"""The correction loop's figures (sirius_local/stats.py) from real generations' counters."""
import pytest

from sirius_local import stats


def test_pooled_figures_weigh_calls_by_their_counters(llm):
    calls = [llm.create_completion(p, max_tokens=n, mode="sirius", density=0.5, period=4, acceptance="strict",
                                   ignore_eos=True)["stats"]
             for p, n in (("The capital of France is", 40), ("Once upon a time", 9))]
    pool = stats.pooled(calls)
    adv, per = sum(c["advanced"] for c in calls), sum(c["periods"] for c in calls)
    assert per > 0 and pool["aal"] == pytest.approx(adv / per)
    # one call's own figures are the pool of itself
    for c in calls:
        one = stats.pooled([c])
        assert one["aal"] == pytest.approx(c["aal"]) and one["effective_density"] == pytest.approx(c["effective_density"])
        assert 0 < c["effective_density"] and 1 <= c["aal"] <= 4
    # the pool (a mediant) lies between the calls' own values
    lo, hi = sorted(c["effective_density"] for c in calls)
    assert lo <= pool["effective_density"] <= hi
    if pool["accept_rate"] is not None:
        assert 0.0 <= pool["accept_rate"] <= 1.0


def test_prefix_agreement_and_empty_counters():
    assert stats.prefix_agreement([1, 2, 3, 9], [1, 2, 3, 4]) == 0.75
    assert stats.prefix_agreement([], []) == 1.0
    assert stats.pooled([]) == {"aal": None, "effective_density": None, "accept_rate": None}
