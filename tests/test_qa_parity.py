"""QA on multi-window contexts against transformers' run_qa example, on the same tokenizer and the same logits.

The references below restate the example's preprocessing (`prepare_train_features`,
`prepare_validation_features` in examples/pytorch/question-answering/run_qa.py) and post-processing
(`postprocess_qa_predictions` in utils_qa.py), whose numbers the fine-tuning targets are measured against:
windows cut by the fast tokenizer with truncation="only_second" and a stride, the n_best highest start and end
logits over all of a window's tokens, spans outside the context, reversed or longer than max_answer_length
dropped, the best start + end score over all windows, and for SQuAD v2 the lowest start[0] + end[0] over the
windows as the null score.

What differs, on purpose, and is pinned here:
- training labels: run_qa puts the start of an answer that begins at a window's last context token on the
  [SEP] after it (its scan runs past the context), and widens an answer that begins or ends in whitespace to
  the neighbouring token; masklm labels the answer's own tokens;
- no candidate span at all (every top start / end is outside the context, reversed or too long): run_qa answers
  the placeholder "empty", masklm "" (no answer);
- equal logits: run_qa's order comes from numpy's default (unstable) argsort, masklm puts the earlier token first.
"""

from __future__ import annotations

import collections
import random

import numpy as np
import pytest
import torch
from helpers import minilm_dir
from tokenizers import Tokenizer

from masklm.tasks.qa import encode_qa, postprocess_qa

# words that split into several pieces, accents, CJK, numbers and punctuation glued to words
_WORDS = (
    "the river city of Denver's 1,234 unbelievably café naïve résumé Mr. (Panthers) Broncos-Carolina e-mail "
    "中文 hello, world! data-driven co-operation 3.14 km² x quarterback Super Bowl 50 in 2016 was"
).split()
_SHAPES = [(192, 64), (128, 32), (64, 16), (384, 128), (100, 0)]  # (max_length, doc_stride)


@pytest.fixture(scope="module")
def tokenizers_pair():
    """(masklm's tokenizers.Tokenizer, transformers' fast tokenizer) for the MiniLM vocabulary."""
    transformers = pytest.importorskip("transformers")
    folder = minilm_dir()
    tok = Tokenizer.from_file(str(folder / "tokenizer.json"))
    tok.no_padding()
    tok.no_truncation()
    hf = transformers.AutoTokenizer.from_pretrained(str(folder))
    assert hf.is_fast
    return tok, hf


def _words(rng: random.Random, n: int) -> list[str]:
    return [rng.choice(_WORDS) for _ in range(n)]


def _example(question: str, words: list[str], first: int, last: int, pad: str = "") -> dict:
    """An example whose answer is words[first..last]; `pad` "lead" / "trail" adds the space before / after it."""
    context = " ".join(words)
    start = len(" ".join(words[:first])) + (1 if first else 0)
    end = start + len(" ".join(words[first : last + 1]))
    if pad == "lead" and start > 0:
        start -= 1
    if pad == "trail" and end < len(context):
        end += 1
    answer = context[start:end]
    return {
        "id": "q",
        "question": question,
        "context": context,
        "answers": {"text": [answer], "answer_start": [start]},
        "is_impossible": False,
    }


def _run_qa_windows(hf, example: dict, max_length: int, doc_stride: int):
    return hf(
        example["question"].lstrip(),  # run_qa strips the question's leading whitespace
        example["context"],
        truncation="only_second",
        max_length=max_length,
        stride=doc_stride,
        return_overflowing_tokens=True,
        return_offsets_mapping=True,
        padding=False,
    )


def _run_qa_labels(hf, encoded, answers: dict) -> list[tuple[int, int]]:
    """prepare_train_features: per window, the answer's first and last token, or [CLS] twice when the window
    does not hold the whole answer."""
    labels = []
    for i, offsets in enumerate(encoded["offset_mapping"]):
        input_ids, sequence_ids = encoded["input_ids"][i], encoded.sequence_ids(i)
        cls_index = input_ids.index(hf.cls_token_id)
        start_char = answers["answer_start"][0]
        end_char = start_char + len(answers["text"][0])
        first = 0
        while sequence_ids[first] != 1:
            first += 1
        last = len(input_ids) - 1
        while sequence_ids[last] != 1:
            last -= 1
        if not (offsets[first][0] <= start_char and offsets[last][1] >= end_char):
            labels.append((cls_index, cls_index))
            continue
        while first < len(offsets) and offsets[first][0] <= start_char:
            first += 1
        while offsets[last][1] >= end_char:
            last -= 1
        labels.append((first - 1, last + 1))
    return labels


# ----------------------------------------------------------------------------------------------------
# Windows and training labels


def test_windows_equal_run_qa(tokenizers_pair):
    """Input ids, token types, context offsets and the number of windows equal the fast tokenizer's overflowing
    windows (the window starts follow from the offsets), for several (max_length, doc_stride)."""
    tok, hf = tokenizers_pair
    rng = random.Random(0)
    windows = 0
    for trial in range(60):
        max_length, doc_stride = _SHAPES[trial % len(_SHAPES)]
        question = " ".join(_words(rng, rng.choice([1, 4, 12])))
        example = _example(question, _words(rng, rng.randint(60, 400)), 0, 0)
        ours = encode_qa(tok, [example], max_length, doc_stride, train=False, max_question_length=64)
        theirs = _run_qa_windows(hf, example, max_length, doc_stride)
        assert [f["input_ids"] for f in ours] == theirs["input_ids"]
        assert [f["token_type_ids"] for f in ours] == theirs["token_type_ids"]
        for k, feature in enumerate(ours):
            context = [
                tuple(o) if s == 1 else None
                for o, s in zip(theirs["offset_mapping"][k], theirs.sequence_ids(k))
            ]
            assert feature["offsets"] == context
        windows += len(ours)
    assert windows > 4 * 60  # several windows per context


def test_long_question_is_cut_where_run_qa_keeps_it(tokenizers_pair):
    """run_qa never cuts the question; masklm keeps its first max_question_length tokens, so its windows equal
    run_qa's for the cut question (questions that long are rare: SQuAD's are about a dozen tokens)."""
    tok, hf = tokenizers_pair
    rng = random.Random(1)
    question = " ".join(rng.choice(["the", "river", "city", "of", "was", "in"]) for _ in range(80))
    q_ids = hf(question, add_special_tokens=False)["input_ids"]
    assert len(q_ids) > 64
    example = _example(question, _words(rng, 300), 0, 0)
    ours = encode_qa(tok, [example], 192, 64, train=False, max_question_length=64)
    cut = {**example, "question": hf.decode(q_ids[:64])}
    assert hf(cut["question"], add_special_tokens=False)["input_ids"] == q_ids[:64]
    theirs = _run_qa_windows(hf, cut, 192, 64)
    assert [f["input_ids"] for f in ours] == theirs["input_ids"]
    assert all(f["input_ids"][1:65] == q_ids[:64] for f in ours)


def test_training_labels_equal_run_qa(tokenizers_pair):
    """Answers of whole words, anywhere (across window edges too): the same start / end per window as
    prepare_train_features, [CLS] where the window does not hold the whole answer. The one exception is
    run_qa's: an answer that starts at a window's last context token gets its start on the [SEP]."""
    tok, hf = tokenizers_pair
    rng = random.Random(2)
    windows = crossing = sep_quirk = 0
    for trial in range(150):
        max_length, doc_stride = _SHAPES[trial % 3]
        words = _words(rng, rng.randint(60, 250))
        first = rng.randrange(len(words))
        last = min(len(words) - 1, first + rng.randint(0, 6))
        if trial % 10 == 0:  # a one-token answer at the very end: the last window's last context token
            words[-1], first, last = "river", len(words) - 1, len(words) - 1
        example = _example(" ".join(_words(rng, rng.choice([2, 8]))), words, first, last)
        ours = encode_qa(tok, [example], max_length, doc_stride, max_question_length=64)
        theirs = _run_qa_labels(hf, _run_qa_windows(hf, example, max_length, doc_stride), example["answers"])
        assert len(ours) == len(theirs)
        for feature, (start, end) in zip(ours, theirs):
            windows += 1
            got = (feature["start_positions"], feature["end_positions"])
            if start == len(feature["input_ids"]) - 1:  # run_qa's start ran onto the final [SEP]
                sep_quirk += 1
                assert feature["offsets"][end] is not None and got == (end, end)  # the one-token answer
                continue
            assert got == (start, end)
            if got != (0, 0):
                offsets = feature["offsets"]
                assert (
                    example["context"][offsets[got[0]][0] : offsets[got[1]][1]]
                    == example["answers"]["text"][0]
                )
        context_spans = [[o for o in f["offsets"] if o is not None] for f in ours]
        answer_start = example["answers"]["answer_start"][0]
        answer_end = answer_start + len(example["answers"]["text"][0])
        crossing += any(c[0][0] <= answer_start < c[-1][1] < answer_end for c in context_spans)
    assert windows > 3 * 150 and crossing > 10 and sep_quirk >= 15


def test_training_labels_on_whitespace_answers(tokenizers_pair):
    """An answer that begins or ends with a space: masklm labels the answer's own tokens (the text stripped),
    run_qa widens the label to the word before / after it."""
    tok, hf = tokenizers_pair
    rng = random.Random(3)
    widened = 0
    for trial in range(40):
        words = _words(rng, 80)
        first = rng.randrange(1, len(words) - 8)
        example = _example("which city ?", words, first, first + 2, pad="lead" if trial % 2 else "trail")
        answer = example["answers"]["text"][0]
        assert answer != answer.strip()
        (feature,) = encode_qa(tok, [example], 384, 128)
        offsets = feature["offsets"]
        got = example["context"][
            offsets[feature["start_positions"]][0] : offsets[feature["end_positions"]][1]
        ]
        assert got == answer.strip()
        ((start, end),) = _run_qa_labels(hf, _run_qa_windows(hf, example, 384, 128), example["answers"])
        widened += (start, end) != (feature["start_positions"], feature["end_positions"])
    assert widened == 40


# ----------------------------------------------------------------------------------------------------
# Post-processing


def run_qa_postprocess(
    examples: list[dict],
    features: list[dict],
    all_start: np.ndarray,
    all_end: np.ndarray,
    version_2: bool = False,
    n_best: int = 20,
    max_answer_length: int = 30,
    null_threshold: float = 0.0,
    stable: bool = False,
) -> dict[str, tuple[str, bool]]:
    """utils_qa.postprocess_qa_predictions: answer text per question id, with whether it is the placeholder
    "empty" that run_qa gives when no span is left. `stable`: rank equal logits earlier token first (masklm's
    rule) instead of numpy's default argsort order."""

    def top(logits: np.ndarray) -> list[int]:
        if stable:
            return np.argsort(-logits, kind="stable")[:n_best].tolist()
        return np.argsort(logits)[-1 : -n_best - 1 : -1].tolist()

    per_example = collections.defaultdict(list)
    for i, feature in enumerate(features):
        per_example[feature["example_index"]].append(i)
    answers = {}
    for index, example in enumerate(examples):
        min_null, prelim = None, []
        for i in per_example[index]:
            start_logits, end_logits, offsets = all_start[i], all_end[i], features[i]["offsets"]
            null = start_logits[0] + end_logits[0]
            if min_null is None or min_null["score"] > null:
                min_null = {
                    "offsets": (0, 0),
                    "score": null,
                    "start_logit": start_logits[0],
                    "end_logit": end_logits[0],
                }
            for s in top(start_logits):
                for e in top(end_logits):
                    if s >= len(offsets) or e >= len(offsets) or offsets[s] is None or offsets[e] is None:
                        continue
                    if e < s or e - s + 1 > max_answer_length:
                        continue
                    prelim.append(
                        {
                            "offsets": (offsets[s][0], offsets[e][1]),
                            "score": start_logits[s] + end_logits[e],
                            "start_logit": start_logits[s],
                            "end_logit": end_logits[e],
                        }
                    )
        if version_2:
            prelim.append(min_null)
        predictions = sorted(prelim, key=lambda p: p["score"], reverse=True)[:n_best]
        if version_2 and not any(p["offsets"] == (0, 0) for p in predictions):
            predictions.append(min_null)
        for p in predictions:
            p["text"] = example["context"][p["offsets"][0] : p["offsets"][1]]
        placeholder = len(predictions) == 0 or (len(predictions) == 1 and predictions[0]["text"] == "")
        if placeholder:
            predictions.insert(0, {"text": "empty", "start_logit": 0.0, "end_logit": 0.0, "score": 0.0})
        if not version_2:
            answers[example["id"]] = (predictions[0]["text"], placeholder)
            continue
        best = next(p for p in predictions if p["text"] != "")
        diff = min_null["score"] - best["start_logit"] - best["end_logit"]
        answers[example["id"]] = ("" if diff > null_threshold else best["text"], placeholder)
    return answers


def _logits(rng: np.random.Generator, feature: dict, kind: str) -> tuple[np.ndarray, np.ndarray]:
    """Start and end logits of one window.

    random: N(0, 1) everywhere. peaked: like a trained model, a few strong spans in the context, [CLS] and
    question tokens sometimes high. answerless: [CLS] and the question score high (the model says "not in this
    window"), the context low. bad_context: every context token far below the rest.
    """
    n = len(feature["input_ids"])
    head = feature["token_type_ids"].index(1)
    start, end = rng.normal(size=n), rng.normal(size=n)
    if kind == "peaked":
        start[:head] += rng.normal(1.0, 2.0, size=head)
        end[:head] += rng.normal(1.0, 2.0, size=head)
        for _ in range(3):
            a = int(rng.integers(head, n - 1))
            start[a] += rng.uniform(2, 8)
            end[min(n - 2, a + int(rng.integers(0, 5)))] += rng.uniform(2, 8)
    elif kind == "answerless":
        start[:head] += rng.uniform(0, 3, size=head)
        end[:head] += rng.uniform(0, 3, size=head)
        start[0] += 4
        end[0] += 4
    elif kind == "bad_context":
        start[head:] -= 10
        end[head:] -= 10
    return start, end


def _case(seed: int, tok) -> tuple[list[dict], list[dict], list[np.ndarray], list[np.ndarray]]:
    """Eight questions on long contexts (several windows each) and their windows' logits: all random or all
    peaked (even seeds), or each window's kind drawn from all four (odd seeds)."""
    rng = random.Random(seed)
    g = np.random.default_rng(seed)
    max_length, doc_stride = _SHAPES[seed % 3]
    examples = []
    for k in range(8):
        example = _example(
            " ".join(_words(rng, rng.choice([2, 6, 14]))), _words(rng, rng.randint(80, 320)), 0, 0
        )
        examples.append({**example, "id": str(k)})
    features = encode_qa(tok, examples, max_length, doc_stride, train=False)
    kinds = ["random", "peaked", "answerless", "bad_context"]
    starts, ends = [], []
    for feature in features:
        kind = kinds[int(g.integers(0, 4))] if seed % 2 else kinds[seed % 4 // 2]
        start, end = _logits(g, feature, kind)
        starts.append(start)
        ends.append(end)
    return examples, features, starts, ends


def _padded(rows: list[np.ndarray]) -> torch.Tensor:
    """The rows as one tensor padded with -100, like the logits transformers' Trainer concatenates."""
    out = torch.full((len(rows), max(len(r) for r in rows)), -100.0, dtype=torch.float64)
    for i, r in enumerate(rows):
        out[i, : len(r)] = torch.from_numpy(r)
    return out


@pytest.mark.parametrize("version_2", [False, True])
def test_postprocess_equals_run_qa_on_the_same_logits(tokenizers_pair, version_2):
    """Many seeds, multi-window questions, several n_best / max_answer_length / thresholds: the same answer as
    utils_qa on every question, except "" where run_qa has no span left and answers the placeholder "empty"."""
    tok, _ = tokenizers_pair
    compared = placeholders = 0
    for seed in range(40):
        examples, features, starts, ends = _case(seed, tok)
        n_best, max_answer_length = [(20, 30), (5, 30), (20, 3), (1, 30)][seed // 2 % 4]
        null_threshold = [0.0, 1.5, -2.0][seed // 8 % 3]
        settings = dict(n_best=n_best, max_answer_length=max_answer_length, version_2=version_2)
        ours = postprocess_qa(
            examples, features, _padded(starts), _padded(ends), null_threshold=null_threshold, **settings
        )
        theirs = run_qa_postprocess(
            examples, features, starts, ends, null_threshold=null_threshold, **settings
        )
        for qid, (text, placeholder) in theirs.items():
            compared += 1
            placeholders += placeholder
            assert ours[qid] == ("" if placeholder else text), (seed, qid)
    assert compared == 320 and placeholders < compared // 4


def test_postprocess_ties_rank_the_earlier_token_first(tokenizers_pair):
    """Logits rounded to bfloat16 (masklm's autocast) often tie. masklm ranks equal logits earlier token first,
    a deterministic choice: the same answers as utils_qa given that order, and an answer of the same score as
    utils_qa's own (whose tie order is numpy's)."""
    tok, _ = tokenizers_pair
    for seed in range(20):
        examples, features, starts, ends = _case(seed, tok)
        starts = [torch.from_numpy(s).bfloat16().double().numpy() for s in starts]
        ends = [torch.from_numpy(e).bfloat16().double().numpy() for e in ends]
        for version_2 in (False, True):
            ours = postprocess_qa(examples, features, starts, ends, version_2=version_2)
            theirs = run_qa_postprocess(examples, features, starts, ends, version_2=version_2, stable=True)
            assert ours == {qid: "" if placeholder else text for qid, (text, placeholder) in theirs.items()}


def test_window_edges_and_answerless_windows(tokenizers_pair):
    """Logits of a model trained on windows (the gold span where a window holds all of the answer, [CLS]
    elsewhere): the gold answer, also when it lies in the overlap of two windows or is cut by one window's edge
    (that window holds part of it and points at [CLS])."""
    tok, _ = tokenizers_pair
    rng = random.Random(4)
    words = _words(rng, 300)
    probe = encode_qa(tok, [_example("where ?", words, 0, 0)], 128, 32, train=False)
    assert len(probe) >= 4
    holding = collections.Counter()
    for trial in range(30):
        first = rng.randrange(40, 250)
        example = _example("where ?", words, first, first + rng.randint(0, 4))
        features = encode_qa(tok, [example], 128, 32)
        g = np.random.default_rng(trial)
        starts, ends = [], []
        holding[sum(f["start_positions"] > 0 for f in features)] += 1
        for feature in features:
            start, end = g.normal(size=len(feature["input_ids"])), g.normal(size=len(feature["input_ids"]))
            if feature["start_positions"]:  # this window holds the whole answer: a confident model
                start[feature["start_positions"]] += 8
                end[feature["end_positions"]] += 8
            else:  # it does not: the model points at [CLS], the context is low
                start[0] += 8
                end[0] += 8
            starts.append(start)
            ends.append(end)
        theirs = run_qa_postprocess([example], features, starts, ends)
        ours = postprocess_qa([example], features, starts, ends)
        assert ours["q"] == theirs["q"][0] == example["answers"]["text"][0]
    assert holding[2] > 3  # answers in an overlap; the others are cut by an edge of at least one window
