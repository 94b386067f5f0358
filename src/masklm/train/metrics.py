"""Fine-tuning metrics: classification, regression, entity F1 (seqeval) and SQuAD EM/F1.

Pure functions on plain Python lists (arrays and tensors work too). Argument order is always
(predictions, gold). Degenerate cases that are mathematically undefined (a constant input to a correlation,
an all-one-class confusion matrix for MCC) give 0.0 so that logs and "best checkpoint" comparisons stay
numeric.
"""

from __future__ import annotations

import math
import re
import string
from collections import Counter
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np

from masklm.errors import UserError


def _ints(x: Any) -> list[int]:
    return [int(v) for v in (x.tolist() if hasattr(x, "tolist") else x)]


def _floats(x: Any) -> list[float]:
    return [float(v) for v in (x.tolist() if hasattr(x, "tolist") else x)]


def _check(preds: Sequence[Any], labels: Sequence[Any]) -> None:
    if len(preds) != len(labels):
        raise ValueError(f"{len(preds)} predictions for {len(labels)} labels")
    if not len(labels):
        raise ValueError("no examples to score")


# ----------------------------------------------------------------------------------------------------
# Classification and regression
# ----------------------------------------------------------------------------------------------------


def accuracy(preds: Sequence[int], labels: Sequence[int]) -> float:
    """Fraction of predictions equal to the label."""
    preds, labels = _ints(preds), _ints(labels)
    _check(preds, labels)
    return sum(p == y for p, y in zip(preds, labels)) / len(labels)


def _f1(tp: int, fp: int, fn: int) -> float:
    return 2 * tp / (2 * tp + fp + fn) if tp else 0.0


def binary_f1(preds: Sequence[int], labels: Sequence[int], positive: int = 1) -> float:
    """F1 of the positive class (the GLUE MRPC / QQP metric)."""
    preds, labels = _ints(preds), _ints(labels)
    _check(preds, labels)
    tp = sum(p == positive and y == positive for p, y in zip(preds, labels))
    fp = sum(p == positive and y != positive for p, y in zip(preds, labels))
    fn = sum(p != positive and y == positive for p, y in zip(preds, labels))
    return _f1(tp, fp, fn)


def macro_f1(preds: Sequence[int], labels: Sequence[int]) -> float:
    """Unweighted mean of per-class F1 over the classes that occur in the labels or the predictions."""
    preds, labels = _ints(preds), _ints(labels)
    _check(preds, labels)
    classes = sorted(set(preds) | set(labels))
    scores = []
    for c in classes:
        tp = sum(p == c and y == c for p, y in zip(preds, labels))
        fp = sum(p == c and y != c for p, y in zip(preds, labels))
        fn = sum(p != c and y == c for p, y in zip(preds, labels))
        scores.append(_f1(tp, fp, fn))
    return sum(scores) / len(scores)


def matthews_corrcoef(preds: Sequence[int], labels: Sequence[int]) -> float:
    """Matthews correlation, multi-class (Gorodkin 2004): from the confusion matrix C with n samples,

        (trace(C) * n - sum_k p_k t_k) / sqrt((n^2 - sum_k p_k^2) (n^2 - sum_k t_k^2))

    where p_k / t_k count predictions / labels of class k. 0.0 when the denominator is 0.
    """
    preds, labels = _ints(preds), _ints(labels)
    _check(preds, labels)
    n = len(labels)
    correct = sum(p == y for p, y in zip(preds, labels))
    p_count, t_count = Counter(preds), Counter(labels)
    classes = set(p_count) | set(t_count)
    cov_pt = correct * n - sum(p_count[k] * t_count[k] for k in classes)
    cov_pp = n * n - sum(v * v for v in p_count.values())
    cov_tt = n * n - sum(v * v for v in t_count.values())
    if cov_pp == 0 or cov_tt == 0:
        return 0.0
    return cov_pt / math.sqrt(cov_pp * cov_tt)


def pearson(preds: Sequence[float], labels: Sequence[float]) -> float:
    """Pearson correlation; 0.0 when either side is constant, NaN when a value is not finite (a diverged model's
    NaN predictions: not a correlation of 0, which could count as a best model's)."""
    x, y = np.asarray(_floats(preds)), np.asarray(_floats(labels))
    _check(x, y)
    if not (np.isfinite(x).all() and np.isfinite(y).all()):
        return math.nan
    dx, dy = x - x.mean(), y - y.mean()
    denom = math.sqrt(float(dx @ dx) * float(dy @ dy))
    return float(dx @ dy) / denom if denom > 0 else 0.0


def _average_ranks(values: Sequence[float]) -> list[float]:
    """1-based ranks; tied values share the mean of the ranks they span."""
    order = sorted(range(len(values)), key=lambda i: values[i])
    ranks = [0.0] * len(values)
    i = 0
    while i < len(order):
        j = i
        while j + 1 < len(order) and values[order[j + 1]] == values[order[i]]:
            j += 1
        for k in range(i, j + 1):
            ranks[order[k]] = (i + j) / 2 + 1
        i = j + 1
    return ranks


def spearman(preds: Sequence[float], labels: Sequence[float]) -> float:
    """Spearman rank correlation: Pearson on average ranks (ties share their mean rank); NaN when a value is not
    finite (NaN has no rank)."""
    x, y = _floats(preds), _floats(labels)
    _check(x, y)
    if not all(math.isfinite(v) for v in (*x, *y)):
        return math.nan
    return pearson(_average_ranks(x), _average_ranks(y))


def classification_metrics(preds: Sequence[int], labels: Sequence[int], num_labels: int) -> dict[str, float]:
    """{"accuracy", "macro_f1", "mcc"}, plus "f1" (class 1) when num_labels == 2."""
    preds, labels = _ints(preds), _ints(labels)
    bad = [v for v in (*preds, *labels) if not 0 <= v < num_labels]
    if bad:
        raise ValueError(f"class id {bad[0]} is outside 0..{num_labels - 1}")
    out = {
        "accuracy": accuracy(preds, labels),
        "macro_f1": macro_f1(preds, labels),
        "mcc": matthews_corrcoef(preds, labels),
    }
    if num_labels == 2:
        out["f1"] = binary_f1(preds, labels)
    return out


def regression_metrics(preds: Sequence[float], labels: Sequence[float]) -> dict[str, float]:
    """{"pearson", "spearman", "mse"}."""
    x, y = _floats(preds), _floats(labels)
    _check(x, y)
    return {
        "pearson": pearson(x, y),
        "spearman": spearman(x, y),
        "mse": sum((a - b) ** 2 for a, b in zip(x, y)) / len(y),
    }


# ----------------------------------------------------------------------------------------------------
# Token classification
# ----------------------------------------------------------------------------------------------------

_PREFIXED = re.compile(r"[BIESLU]-.")
_SCHEME_PREFIXES = {"IOBES": "BIES", "BILOU": "BILU"}


def has_entity_tags(tags: Iterable[str]) -> bool:
    """Whether a tag set marks entities: any tag with a B-, I-, E-, S-, L- or U- prefix (else POS-like tags)."""
    return any(_PREFIXED.match(tag) for tag in tags)


def entity_scheme(tags: Iterable[str]) -> str:
    """The tagging scheme of an entity tag set: "BILOU" when any L- or U- tag appears, else "IOBES" when any E-
    or S- tag does, else "BIO" (IOB1 and IOB2 alike)."""
    prefixes = {tag[0] for tag in tags if _PREFIXED.match(tag)}
    if prefixes & {"L", "U"}:
        return "BILOU"
    if prefixes & {"E", "S"}:
        return "IOBES"
    return "BIO"


def _outside_unless(prefixes: str, sentences: Sequence[Sequence[str]]) -> list[list[str]]:
    """The sentences with every tag that is not "X-TYPE" for a prefix X of `prefixes` written "O": seqeval's
    strict mode refuses such tags, and like its default mode they belong to no entity."""
    return [
        [t if t == "O" or (_PREFIXED.match(t) and t[0] in prefixes) else "O" for t in s] for s in sentences
    ]


def entity_metrics(
    true_tags: Sequence[Sequence[str]],
    pred_tags: Sequence[Sequence[str]],
    labels: Sequence[str] | None = None,
) -> dict[str, float]:
    """Entity-level precision / recall / F1 (seqeval, micro-averaged) and token accuracy.

    The scheme is read from the tags, those of the task's `labels` included when given (`entity_scheme`), so that
    every evaluation of a run reports the same metrics: a validation file without entities, predicted without
    any, still gives F1 (0) beside accuracy. The scheme: BIO / IOB2 by default (seqeval's conlleval-compatible
    mode); BIOES when any E- or S- tag appears (seqeval strict mode, IOBES); BILOU when any L- or U- tag does
    (strict mode, BILOU). In the strict modes a tag without one of the scheme's prefixes ("X", "MISC") is
    outside every entity. Tag sets without B-/I-/E-/S-/L-/U- prefixes (POS tags, chunk labels) have no entities:
    only {"accuracy"} is returned.
    """
    if len(true_tags) != len(pred_tags):
        raise ValueError(f"{len(pred_tags)} predicted sentences for {len(true_tags)} gold sentences")
    for n, (t, p) in enumerate(zip(true_tags, pred_tags)):
        if len(t) != len(p):
            raise ValueError(f"sentence {n}: {len(p)} predicted tags for {len(t)} gold tags")
    true_flat = [tag for sent in true_tags for tag in sent]
    pred_flat = [tag for sent in pred_tags for tag in sent]
    if not true_flat:
        raise ValueError("no tags to score")
    acc = sum(t == p for t, p in zip(true_flat, pred_flat)) / len(true_flat)
    tagset = set(true_flat) | set(pred_flat) | set(labels or ())
    if not has_entity_tags(tagset):
        return {"accuracy": acc}
    try:
        from seqeval.metrics import f1_score, precision_score, recall_score
        from seqeval.scheme import BILOU, IOBES
    except ImportError:
        raise UserError("entity F1 needs seqeval; install it with: pip install 'masklm[finetune]'") from None
    kwargs: dict[str, Any] = {"zero_division": 0}
    y_true, y_pred = [list(s) for s in true_tags], [list(s) for s in pred_tags]
    scheme = entity_scheme(tagset)
    if scheme != "BIO":
        kwargs.update(mode="strict", scheme=BILOU if scheme == "BILOU" else IOBES)
        y_true, y_pred = (_outside_unless(_SCHEME_PREFIXES[scheme], s) for s in (y_true, y_pred))
    return {
        "precision": float(precision_score(y_true, y_pred, **kwargs)),
        "recall": float(recall_score(y_true, y_pred, **kwargs)),
        "f1": float(f1_score(y_true, y_pred, **kwargs)),
        "accuracy": acc,
    }


# ----------------------------------------------------------------------------------------------------
# SQuAD
# ----------------------------------------------------------------------------------------------------

_PUNCTUATION = frozenset(string.punctuation)
_ARTICLES = re.compile(r"\b(a|an|the)\b")


def normalize_answer(text: str) -> str:
    """The official SQuAD normalisation: lowercase, drop punctuation, drop a/an/the, collapse whitespace."""
    text = "".join(ch for ch in text.lower() if ch not in _PUNCTUATION)
    return " ".join(_ARTICLES.sub(" ", text).split())


def squad_exact(prediction: str, gold: str) -> float:
    """1.0 if the normalised strings are equal."""
    return float(normalize_answer(prediction) == normalize_answer(gold))


def squad_f1(prediction: str, gold: str) -> float:
    """Bag-of-tokens F1 of the normalised strings; when either is empty, 1.0 only if both are."""
    pred_tokens, gold_tokens = normalize_answer(prediction).split(), normalize_answer(gold).split()
    if not pred_tokens or not gold_tokens:
        return float(pred_tokens == gold_tokens)
    same = sum((Counter(pred_tokens) & Counter(gold_tokens)).values())
    if same == 0:
        return 0.0
    precision, recall = same / len(pred_tokens), same / len(gold_tokens)
    return 2 * precision * recall / (precision + recall)


def squad_metrics(predictions: dict[str, str], examples: Sequence[dict[str, Any]]) -> dict[str, float]:
    """{"exact_match", "f1"} on a 0-100 scale, each the best over a question's gold answers.

    A question whose gold answers are all empty after normalisation (unanswerable, SQuAD v2) has gold [""].
    When the data has unanswerable questions, also "HasAns_exact"/"HasAns_f1" (questions with answers, if
    any) and "NoAns_exact"/"NoAns_f1", as in the official v2.0 script.
    """
    missing = [ex["id"] for ex in examples if ex["id"] not in predictions]
    if missing:
        raise ValueError(f"no prediction for {len(missing)} question(s), e.g. id {missing[0]}")
    if not examples:
        raise ValueError("no questions to score")
    exact: dict[str, float] = {}
    f1: dict[str, float] = {}
    has_answer: dict[str, bool] = {}
    for ex in examples:
        qid = ex["id"]
        golds = [a for a in ex["answers"]["text"] if normalize_answer(a)] or [""]
        exact[qid] = max(squad_exact(predictions[qid], g) for g in golds)
        f1[qid] = max(squad_f1(predictions[qid], g) for g in golds)
        has_answer[qid] = bool(ex["answers"]["text"])

    def mean(scores: dict[str, float], ids: list[str]) -> float:
        return 100.0 * sum(scores[i] for i in ids) / len(ids)

    ids = [ex["id"] for ex in examples]
    out = {"exact_match": mean(exact, ids), "f1": mean(f1, ids)}
    no_ans = [i for i in ids if not has_answer[i]]
    if no_ans:
        has_ans = [i for i in ids if has_answer[i]]
        if has_ans:
            out.update(HasAns_exact=mean(exact, has_ans), HasAns_f1=mean(f1, has_ans))
        out.update(NoAns_exact=mean(exact, no_ans), NoAns_f1=mean(f1, no_ans))
    return out
