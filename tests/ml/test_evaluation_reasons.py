"""Why the metric cannot score an attribute yet: the reason ``ml.steps.evaluate`` reports, in words."""

from __future__ import annotations

import numpy as np

from ml import steps
from ml.attributes import Attribute

DIGIT = Attribute(name="digit", kind="categorical", levels=tuple(str(i) for i in range(10)))
X = Attribute(name="x", kind="continuous", low=0.0, high=1.0)


def test_reason_names_the_count_and_what_would_fix_it():
    one = steps.unscorable_reason(np.array([3, -1, -1]), DIGIT)
    assert one == (
        "1 eval label, 0 levels with 4 or more; needs 10 eval labels covering two or more levels with 4 or more each"
    )
    # Ten labels, but only one level has 4: the cross-validated metric could not fit.
    lopsided = steps.unscorable_reason(np.array([1] * 7 + [2, 2, 3]), DIGIT)
    assert lopsided is not None and lopsided.startswith("10 eval labels, 1 level with 4 or more")
    assert steps.unscorable_reason(np.array([1] * 5 + [2] * 5), DIGIT) is None
    assert (
        steps.unscorable_reason(np.full(12, 0.5), X)
        == "12 eval labels, all with the same value; needs two or more distinct values"
    )
    assert steps.unscorable_reason(np.linspace(0, 1, 10), X) is None


def test_evaluate_skips_with_the_reason_and_scores_once_the_labels_suffice():
    from ml.lens import InterpretableLens

    rng = np.random.default_rng(0)
    Z = rng.normal(size=(60, 4)).astype(np.float32)
    y = (Z[:, 0] > 0).astype(np.int64)
    lens = InterpretableLens([DIGIT], n_flows=1, hidden=8, epochs=2, device="cpu", seed=0).fit(Z, {"digit": y})
    few = steps.evaluate(lens, Z[:5], {"digit": y[:5]}, [DIGIT], device="cpu")
    assert few["overall"] is None and few["skipped"]["digit"].startswith("5 eval labels")
    enough = steps.evaluate(lens, Z, {"digit": y}, [DIGIT], device="cpu")
    assert enough["skipped"] == {} and enough["overall"] is not None


def test_a_lens_goes_live_only_at_or_above_raw_z_and_the_live_version():
    from ml.steps import hold_back_reason

    cand = {"overall": 20.0, "baseline_overall": 18.0}
    assert hold_back_reason(cand, None) is None
    assert hold_back_reason(cand, {"overall": 20.0}) is None  # a tie goes live: it has seen more labels
    assert "below raw z's 21.0" in hold_back_reason({"overall": 20.0, "baseline_overall": 21.0}, None)
    assert "below the active version's 22.0" in hold_back_reason(cand, {"overall": 22.0})
    assert "margin 3" in hold_back_reason(cand, None, margin=3.0)
    assert hold_back_reason(cand, {"overall": 21.0}, margin=-1.5) is None
    # Below, but within the measured spread (the standard error of the difference): the newer one goes live.
    assert (
        hold_back_reason(
            {"overall": 20.0, "overall_se": 1.0, "baseline_overall": 21.0, "baseline_overall_se": 1.0}, None
        )
        is None
    )
    below = hold_back_reason(
        {"overall": 20.0, "overall_se": 0.3, "baseline_overall": 21.0, "baseline_overall_se": 0.4}, None
    )
    assert "by more than the measured spread (0.5)" in below
    # Not measurable yet (too few eval labels): nothing to compare, so it goes live.
    assert hold_back_reason({"overall": None, "baseline_overall": None}, {"overall": 30.0}) is None


def test_evaluate_reports_the_spread_of_its_scores():
    rng = np.random.default_rng(0)
    y = np.repeat(np.arange(10), 30)
    Z = np.c_[y + rng.normal(scale=2.0, size=y.size), rng.normal(size=(y.size, 3))].astype(np.float32)

    class Identity:  # a lens whose z* is z: its scores are raw z's
        attribute_dims_ = {"digit": [0]}

        def transform(self, X):
            return np.asarray(X)

    m = steps.evaluate(Identity(), Z, {"digit": y}, [DIGIT], device="cpu")
    assert m["overall"] == m["baseline_overall"] and 0 < m["overall_se"] == m["baseline_overall_se"] < 5
    assert steps.hold_back_reason(m, None) is None
