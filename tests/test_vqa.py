"""VQAv2 scoring: the answer normalisation and the leave-one-out accuracy, against values worked out by hand."""

from __future__ import annotations

import pytest

from modgap.errors import ModgapError
from modgap.eval.vqa import normalize_answer, row_answers, vqa_accuracy


@pytest.mark.parametrize(
    ("given", "normalised"),
    [
        ("Two dogs.", "2 dogs"),  # number words to digits, final period dropped
        ("the Red one!", "red 1"),  # articles dropped, punctuation to spaces
        ("dont know", "don't know"),  # contractions restored
        ("3.5", "3.5"),  # a period between digits stays
        ("1,000", "1000"),  # a comma between digits goes, without a space
        ("yes, it is", "yes it is"),
        ("  On the LEFT\n", "on left"),
    ],
)
def test_answers_are_normalised_as_the_vqav2_script_does(given, normalised):
    assert normalize_answer(given) == normalised


def test_accuracy_is_min_one_matches_over_three_averaged_over_leave_one_out():
    # 2 of 10 annotators said "2": leaving one of them out leaves 1 match (1/3), leaving another out 2 (2/3).
    assert vqa_accuracy("two", ["2"] * 2 + ["3"] * 8) == pytest.approx((2 * 1 / 3 + 8 * 2 / 3) / 10)
    assert vqa_accuracy("2", ["2"] * 3 + ["3"] * 7) == pytest.approx((3 * 2 / 3 + 7 * 1) / 10)
    assert vqa_accuracy("2", ["2"] * 4 + ["3"] * 6) == 1.0
    assert vqa_accuracy("A red circle.", ["red circle"]) == 1.0  # one reference: normalised exact match
    assert vqa_accuracy("a red square", ["red circle"]) == 0.0
    with pytest.raises(ModgapError, match="at least one reference"):
        vqa_accuracy("x", [])
    assert row_answers({"answers": ["a", "b"]}, "f: row 1") == ["a", "b"]
    with pytest.raises(ModgapError, match="f: row 1: no reference answer"):
        row_answers({"answer": ""}, "f: row 1")
