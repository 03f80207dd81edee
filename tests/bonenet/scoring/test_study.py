"""The study rule (`bonenet.scoring.study`): one part, one score and one decision per study."""

import numpy as np
import pandas as pd
import pytest

from bonenet.scoring.study import aggregate_studies, decide_study, routable, route, study_score


def test_study_aggregation_means_router_softmax_and_the_routed_parts_scores():
    images = pd.DataFrame({
        "study": ["s1", "s1", "s2"], "part_true": ["A", "A", "B"], "label": [1, 1, 0],
        "p_A": [0.9, 0.2, 0.1], "p_B": [0.1, 0.8, 0.9], "s_A": [0.2, 0.8, 0.0], "s_B": [0.9, 0.9, 0.3],
    })
    studies = aggregate_studies(images, ["A", "B"], {"A": (0.5, "default"), "B": (0.4, "tuned")}).set_index("study")
    s1 = studies.loc["s1"]
    assert s1["score"] == pytest.approx(0.5) and s1["part_pred"] == "A" and s1["router_confidence"] == pytest.approx(0.55)
    assert s1["threshold"] == 0.5 and s1["pred"] == 1
    assert studies.loc["s2", "part_pred"] == "B" and studies.loc["s2", "score"] == pytest.approx(0.3)
    assert studies.loc["s2", "pred"] == 0 and studies.loc["s2", "threshold_source"] == "tuned"


def test_a_misrouted_study_is_decided_with_its_routed_parts_threshold():
    labels = ["XR_HAND", "XR_WRIST"]
    thresholds = {"XR_HAND": (0.9, "tuned"), "XR_WRIST": (0.1, "tuned")}
    probs = [[0.8, 0.2], [0.6, 0.4]]  # a wrist study that the router calls a hand
    decided = decide_study(probs, {"XR_HAND": [0.5, 0.6], "XR_WRIST": [0.7, 0.7]}, labels, thresholds)
    assert decided["part"] == "XR_HAND" and decided["p_abnormal"] == pytest.approx(0.55)
    assert decided["threshold"] == 0.9 and decided["abnormal"] is False
    table = pd.DataFrame({"study": ["s", "s"], "part_true": "XR_WRIST", "label": 1, "p_XR_HAND": [0.8, 0.6],
                          "p_XR_WRIST": [0.2, 0.4], "s_XR_HAND": [0.5, 0.6], "s_XR_WRIST": [0.7, 0.7]})
    row = aggregate_studies(table, labels, thresholds).iloc[0]
    assert row.part_pred == "XR_HAND" and row.threshold == 0.9 and row.pred == 0
    oracle = aggregate_studies(table, labels, thresholds, oracle=True).iloc[0]
    assert oracle.part_pred == "XR_WRIST" and oracle.threshold == 0.1 and oracle.pred == 1


def test_a_run_covering_some_parts_routes_among_those_only():
    labels = ["XR_ELBOW", "XR_HAND", "XR_WRIST"]
    thresholds = {"XR_HAND": (0.5, "default"), "XR_WRIST": (0.5, "default")}
    assert routable(labels, thresholds) == [1, 2] and routable(labels, {}) == [0, 1, 2]
    probs = np.array([[0.7, 0.2, 0.1], [0.6, 0.1, 0.3]])  # the router prefers a part without a model
    assert route(probs, labels, thresholds) == ["XR_HAND", "XR_WRIST"]
    decided = decide_study(probs, {"XR_HAND": [0.9, 0.9], "XR_WRIST": [0.1, 0.1]}, labels, thresholds)
    assert decided["part"] == "XR_WRIST" and decided["part_confidence"] == pytest.approx(0.2)


def test_images_that_disagree_about_the_part_are_flagged_with_their_votes():
    labels = ["XR_HAND", "XR_WRIST"]
    thresholds = {p: (0.5, "default") for p in labels}
    mixed = decide_study([[0.9, 0.1], [0.8, 0.2], [0.3, 0.7]], {p: [0.2, 0.2, 0.2] for p in labels}, labels, thresholds)
    assert mixed["mixed_parts"] == {"XR_HAND": 2, "XR_WRIST": 1}
    assert [i["image_part"] for i in mixed["images"]] == ["XR_HAND", "XR_HAND", "XR_WRIST"]
    agreed = decide_study([[0.9, 0.1]], {p: [0.2] for p in labels}, labels, thresholds)
    assert agreed["mixed_parts"] is None


def test_a_routed_part_without_a_model_leaves_the_study_unscored():
    labels = ["XR_HAND", "XR_WRIST"]
    decided = decide_study([[0.9, 0.1]], lambda part: None, labels, {p: (0.5, "default") for p in labels})
    assert decided["p_abnormal"] is None and decided["abnormal"] is None and decided["images"][0]["abnormal"] is None
    assert np.isnan(study_score([])) and study_score([0.2, 0.4]) == pytest.approx(0.3)


def test_a_score_exactly_at_the_threshold_is_abnormal():
    labels = ["XR_HAND"]
    decided = decide_study([[1.0], [1.0]], {"XR_HAND": [0.4, 0.6]}, labels, {"XR_HAND": (0.5, "default")})
    assert decided["abnormal"] is True and [i["abnormal"] for i in decided["images"]] == [False, True]
