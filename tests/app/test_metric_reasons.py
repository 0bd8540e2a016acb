"""Empty figures explained: the sentences built from the evaluation's reasons, and the dimension check."""

from __future__ import annotations

from types import SimpleNamespace

from app.services import metric_reasons
from app.web.insights import metric_table

SKIPPED = {
    "overall": None,
    "n_eval": 1,
    "skipped": {
        "digit": "1 eval label, 0 levels with 4 or more; needs 10 eval labels covering two or more levels "
        "with 4 or more each"
    },
}


def test_an_unscored_model_is_explained_with_the_reason_and_the_fix():
    text = metric_reasons.why_unscored(SKIPPED, eval_fraction=0.1)
    assert text is not None and text.startswith("No score yet. digit: 1 eval label")
    assert "about 1 in 10 items the queue hands out joins the held-out eval set" in text
    assert "eval fraction 0" in metric_reasons.why_unscored(SKIPPED, eval_fraction=0.0)
    assert metric_reasons.why_unscored({"overall": 12.5, "skipped": {}}, eval_fraction=0.1) is None
    assert metric_reasons.short_reason(SKIPPED) == "digit: " + SKIPPED["skipped"]["digit"]
    assert metric_reasons.short_reason({"overall": None, "n_eval": 0, "skipped": {}}) == "no labelled eval items"


def test_the_table_flags_an_attribute_outside_its_designated_dims():
    project = SimpleNamespace(
        attributes=[
            SimpleNamespace(name="digit", kind="categorical"),
            SimpleNamespace(name="thickness", kind="ordinal"),
        ]
    )
    mv = SimpleNamespace(
        metrics={
            "overall": 20.0,
            "attributes": {"digit": {"score": 30.0, "dim": 2}, "thickness": {"score": 10.0, "dim": 1}},
        },
        n_labels=50,
    )
    table = metric_table(mv, project, None, {"digit": [0], "thickness": [1]})
    assert [r["in_own_dim"] for r in table["rows"]] == [False, True]
    assert table["mismatches"] == ["digit"]
    # Without designated dims (no loadable lens) nothing is flagged.
    assert metric_table(mv, project, None, {})["mismatches"] == []


def test_a_partly_scored_model_says_which_attributes_the_overall_leaves_out():
    partial = {"overall": 0.2, "n_eval": 21, "skipped": {"digit": "21 eval labels, 1 level with 4 or more; needs more"}}
    text = metric_reasons.why_unscored(partial, eval_fraction=0.1)
    assert text is not None and text.startswith("Partly scored: the overall score leaves out digit. digit: 21 eval")
    assert metric_reasons.short_reason(partial) == "digit: 21 eval labels, 1 level with 4 or more; needs more"
