"""Fine-tuning metrics against hand-computed values."""

from __future__ import annotations

import math

import numpy as np
import pytest

from masklm.tasks import token_classification as TC
from masklm.train import metrics as M

# labels / predictions of a 3-class problem, worked by hand below
LABELS3 = [0, 0, 1, 1, 2, 2]
PREDS3 = [0, 1, 1, 1, 2, 0]


def test_accuracy_and_f1():
    assert M.accuracy(PREDS3, LABELS3) == pytest.approx(4 / 6)
    # class 0: tp 1 fp 1 fn 1 -> 0.5; class 1: tp 2 fp 1 fn 0 -> 0.8; class 2: tp 1 fp 0 fn 1 -> 2/3
    assert M.macro_f1(PREDS3, LABELS3) == pytest.approx((0.5 + 0.8 + 2 / 3) / 3)
    assert M.macro_f1([0, 0], [0, 0]) == 1.0
    assert M.binary_f1([1, 0, 1, 1], [1, 1, 0, 1]) == pytest.approx(2 / 3)  # tp 2 fp 1 fn 1
    assert M.accuracy(np.array([1, 2]), np.array([1, 1])) == 0.5
    with pytest.raises(ValueError):
        M.accuracy([1], [1, 2])
    with pytest.raises(ValueError):
        M.accuracy([], [])


def test_matthews_corrcoef():
    # binary: tp 3, tn 3, fp 1, fn 1 -> (9 - 1) / sqrt(4 * 4 * 4 * 4) = 0.5
    assert M.matthews_corrcoef([1, 0, 1, 0, 0, 1, 0, 1], [1, 1, 1, 0, 0, 0, 0, 1]) == pytest.approx(0.5)
    # multi-class (Gorodkin): n = 6, correct = 4, pred counts (2, 3, 1), true counts (2, 2, 2)
    # (4 * 6 - (4 + 6 + 2)) / sqrt((36 - 14) * (36 - 12)) = 12 / sqrt(528)
    assert M.matthews_corrcoef(PREDS3, LABELS3) == pytest.approx(12 / math.sqrt(528))
    assert M.matthews_corrcoef([2, 0, 1], [2, 0, 1]) == pytest.approx(1.0)
    assert M.matthews_corrcoef([1, 0, 1, 0], [0, 1, 0, 1]) == pytest.approx(-1.0)
    assert M.matthews_corrcoef([1, 1, 1], [0, 1, 0]) == 0.0  # constant prediction: undefined -> 0


def test_correlations():
    # x - mean = (-1, 0, 1), y - mean = (-7, -1, 8) / 3: r = 5 / sqrt(2 * 114 / 9) = 15 / sqrt(228)
    assert M.pearson([1, 2, 3], [2, 4, 7]) == pytest.approx(15 / math.sqrt(228))
    # ties share ranks: x ranks (1, 2.5, 2.5, 4), y ranks (1, 3, 2, 4) -> 4.5 / sqrt(4.5 * 5) = 3 / sqrt(10)
    assert M.spearman([1, 2, 2, 3], [1, 3, 2, 4]) == pytest.approx(3 / math.sqrt(10))
    assert M.spearman([10, 20, 30, 40], [1, 4, 9, 16]) == pytest.approx(1.0)  # monotone, not linear
    assert M.spearman([5, 5, 5, 5], [1, 2, 3, 4]) == 0.0
    out = M.regression_metrics([1.0, 2.0, 3.0], [2.0, 4.0, 7.0])
    assert out["mse"] == pytest.approx((1 + 4 + 16) / 3)
    assert out["spearman"] == pytest.approx(1.0) and out["pearson"] == pytest.approx(15 / math.sqrt(228))
    # a diverged model's NaN predictions: no correlation (NaN), not 0.0, which could beat a negative best
    diverged = M.regression_metrics([math.nan, 1.0, 2.0], [2.0, 4.0, 7.0])
    assert math.isnan(diverged["pearson"]) and math.isnan(diverged["spearman"])


def test_classification_metrics():
    out = M.classification_metrics(PREDS3, LABELS3, num_labels=3)
    assert set(out) == {"accuracy", "macro_f1", "mcc"}
    assert out["mcc"] == pytest.approx(12 / math.sqrt(528))
    binary = M.classification_metrics([1, 0, 1, 1], [1, 1, 0, 1], num_labels=2)
    assert binary["f1"] == pytest.approx(2 / 3) and binary["accuracy"] == 0.5
    with pytest.raises(ValueError, match="outside"):
        M.classification_metrics([3], [0], num_labels=3)


def test_entity_metrics_bio():
    true = [["B-PER", "I-PER", "O", "B-LOC"], ["O", "B-ORG", "I-ORG", "I-ORG"]]
    pred = [["B-PER", "I-PER", "O", "B-ORG"], ["O", "B-ORG", "I-ORG", "O"]]
    # gold entities PER, LOC, ORG(3 tokens); predicted PER, ORG, ORG(2 tokens); only PER matches exactly
    out = M.entity_metrics(true, pred)
    assert out["precision"] == pytest.approx(1 / 3)
    assert out["recall"] == pytest.approx(1 / 3)
    assert out["f1"] == pytest.approx(1 / 3)
    assert out["accuracy"] == pytest.approx(6 / 8)
    # conlleval (default) mode: an entity may start with I-
    lenient = M.entity_metrics([["B-PER", "I-PER", "O", "B-LOC"]], [["I-PER", "I-PER", "O", "B-LOC"]])
    assert lenient["f1"] == 1.0 and lenient["accuracy"] == 0.75
    nothing = M.entity_metrics([["B-PER", "O"]], [["O", "O"]])
    assert nothing["f1"] == 0.0 and nothing["precision"] == 0.0


def test_entity_metrics_follow_the_label_set_not_the_tags_one_evaluation_shows():
    """A validation file without entities, predicted without any, still reports entity F1 when the task's labels
    have entity tags: every evaluation of a run has the metric its best model is chosen by."""
    labels = ["O", "B-PER", "I-PER"]
    quiet = M.entity_metrics([["O", "O"]], [["O", "O"]], labels)
    assert quiet == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "accuracy": 1.0}
    spurious = M.entity_metrics([["O", "O"]], [["B-PER", "O"]], labels)
    assert set(spurious) == set(quiet) and spurious["accuracy"] == 0.5
    # the scheme too: a BIOES label set scores in strict mode even where this evaluation shows only B-/I- tags
    bioes = ["O", "B-PER", "I-PER", "E-PER", "S-PER"]
    assert M.entity_metrics([["B-PER", "I-PER"]], [["B-PER", "I-PER"]], bioes)["f1"] == 0.0
    assert M.entity_metrics([["B-PER", "I-PER"]], [["B-PER", "I-PER"]])["f1"] == 1.0


def test_entity_metrics_bioes_and_plain_tags():
    # strict IOBES: B-LOC I-LOC without E-LOC is no entity -> P = 1/1, R = 1/2, F1 = 2/3 (lenient would give 1.0)
    out = M.entity_metrics([["S-PER", "O", "B-LOC", "E-LOC"]], [["S-PER", "O", "B-LOC", "I-LOC"]])
    assert out["precision"] == 1.0 and out["recall"] == 0.5 and out["f1"] == pytest.approx(2 / 3)
    assert M.entity_metrics([["NN", "VB", "DT"]], [["NN", "NN", "DT"]]) == {"accuracy": pytest.approx(2 / 3)}
    with pytest.raises(ValueError):
        M.entity_metrics([["O", "O"]], [["O"]])


def test_entity_metrics_bilou_is_scored_as_bilou():
    # gold: U-PER and B-LOC L-LOC; prediction: U-PER, B-LOC I-LOC (unfinished, no entity in strict BILOU).
    # Scored as BIO, L- and U- would be no entity at all (0 of 0) or split the LOC: strict BILOU gives P 1, R 1/2.
    out = M.entity_metrics([["U-PER", "O", "B-LOC", "L-LOC"]], [["U-PER", "O", "B-LOC", "I-LOC"]])
    assert out["precision"] == 1.0 and out["recall"] == 0.5 and out["f1"] == pytest.approx(2 / 3)
    assert M.entity_metrics([["U-PER", "O"]], [["U-PER", "O"]])["f1"] == 1.0
    assert M.has_entity_tags(["U-PER", "O"]) and M.entity_scheme(["U-PER", "L-LOC", "B-LOC"]) == "BILOU"


@pytest.mark.parametrize(
    "true, pred",
    [
        ([["S-PER", "X", "B-LOC", "E-LOC"]], [["S-PER", "O", "B-LOC", "E-LOC"]]),
        ([["U-PER", "MISC", "B-LOC", "L-LOC"]], [["U-PER", "MISC", "B-LOC", "L-LOC"]]),
    ],
)
def test_entity_metrics_strict_schemes_take_tags_without_a_prefix(true, pred):
    # a tag outside the scheme ("X", "MISC") belongs to no entity, as in seqeval's default mode (no KeyError)
    out = M.entity_metrics(true, pred)
    assert out["f1"] == 1.0


def test_group_entities_bilou():
    text = "Ann met Bob Lee"
    spans = [(0, 3), (4, 7), (8, 11), (12, 15)]
    entities = TC.group_entities(["U-PER", "O", "B-PER", "L-PER"], [1.0] * 4, spans, text, prefixed=True)
    assert [(e["text"], e["label"]) for e in entities] == [("Ann", "PER"), ("Bob Lee", "PER")]
    entities = TC.group_entities(["U-PER", "U-PER"], [1.0] * 2, spans[:2], text, prefixed=True)
    assert [e["text"] for e in entities] == ["Ann", "met"]


def test_squad_normalisation_and_scores():
    assert M.normalize_answer("The  Quick, brown\tfox!") == "quick brown fox"
    assert M.normalize_answer("An apple a day; theatre") == "apple day theatre"
    assert M.squad_exact("The Beatles.", "beatles") == 1.0
    assert M.squad_exact("Beatles band", "beatles") == 0.0
    # pred tokens cat sat on mat, gold cat on mat: P = 3/4, R = 1 -> 6/7
    assert M.squad_f1("the cat sat on the mat", "a cat on a mat") == pytest.approx(6 / 7)
    assert M.squad_f1("cat cat", "cat") == pytest.approx(2 * 0.5 / 1.5)  # counts clip: 1 common token
    assert M.squad_f1("", "") == 1.0 and M.squad_f1("", "cat") == 0.0 and M.squad_f1("the", "") == 1.0


def _example(qid: str, answers: list[str], impossible: bool = False) -> dict:
    return {
        "id": qid,
        "question": "?",
        "context": "",
        "answers": {"text": answers, "answer_start": [0] * len(answers)},
        "is_impossible": impossible,
    }


def test_squad_metrics_v1_and_v2():
    v1 = [
        _example("a", ["Denver Broncos", "the Denver Broncos"]),
        _example("b", ["cat on a mat", "on the mat"]),
    ]
    predictions = {"a": "Denver Broncos", "b": "the cat sat on the mat", "extra": "ignored"}
    # a: EM 1, F1 1; b: EM 0, F1 max(6/7, 2/3) = 6/7
    out = M.squad_metrics(predictions, v1)
    assert out == {"exact_match": pytest.approx(50.0), "f1": pytest.approx(100 * (1 + 6 / 7) / 2)}

    v2 = [*v1, _example("c", [], impossible=True), _example("d", [], impossible=True)]
    out = M.squad_metrics({**predictions, "c": "", "d": "something"}, v2)
    assert out["exact_match"] == pytest.approx(50.0)  # 1 + 0 + 1 + 0
    assert out["f1"] == pytest.approx(100 * (1 + 6 / 7 + 1 + 0) / 4)
    assert out["HasAns_exact"] == pytest.approx(50.0) and out["HasAns_f1"] == pytest.approx(
        100 * (1 + 6 / 7) / 2
    )
    assert out["NoAns_exact"] == 50.0 and out["NoAns_f1"] == 50.0
    only_no = M.squad_metrics({"c": ""}, [v2[2]])
    assert only_no == {"exact_match": 100.0, "f1": 100.0, "NoAns_exact": 100.0, "NoAns_f1": 100.0}
    with pytest.raises(ValueError, match="no prediction"):
        M.squad_metrics({}, v1)
