"""Under a binary cross-entropy the reported accuracy is the binary accuracy of each
unit, so chance is each unit's majority share, not the share of the most frequent argmax."""

from __future__ import annotations

import numpy as np

from pruning_worker.recipe import chance_level_note


def test_a_multi_label_model_collapsed_to_no_label_is_at_chance():
    rng = np.random.default_rng(0)
    y = (rng.random((2000, 10)) < 0.25).astype("float32")  # multi-label, a quarter of the labels set
    collapsed = float(np.mean(y < 0.5))  # binary accuracy of "no label anywhere", about 0.75
    note = chance_level_note(collapsed, 0.95, y, binary=True)
    assert note is not None and "at chance level" in note


def test_a_multi_label_model_well_above_chance_is_not_warned_of():
    rng = np.random.default_rng(0)
    y = (rng.random((2000, 3)) < 0.5).astype("float32")  # balanced labels: chance 0.5 per unit
    assert chance_level_note(0.62, 0.95, y, binary=True) is None


def test_a_single_sigmoid_unit_keeps_the_majority_share():
    y = np.array([1.0] * 14 + [0.0] * 6)[:, None]
    assert chance_level_note(0.71, 0.95, y, binary=True) is not None
    assert chance_level_note(0.71, 0.95, y) == chance_level_note(0.71, 0.95, y, binary=True).replace(
        "the share of each unit's most frequent test label", "the most frequent test label's share"
    ).replace("removed what the model computed", "removed what the model computed")
