"""Settings reaching the code they set: a run's `--mask.strategy` the masks it trains on, its
`--objective.discriminator_weight` the ELECTRA loss; QA's answer score (P(start) x P(end)) from hand-made logits;
`masklm serve`'s 500 for a failed forward pass.

The run tests start `masklm pretrain` as a user does and stop it where training would begin (Run.fit), keeping
what fit was given: the batch maker, the loss function and the model."""

from __future__ import annotations

import math
import random
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import cli, prepare_tiny

from masklm.data.shards import PackedDataset
from masklm.data.tokenizer import load_tokenizer, special_ids
from masklm.objectives.electra import electra_loss
from masklm.tasks.qa import best_answers
from masklm.train.run import Run, release_run_dir

SYLLABLES = "ka lo mi nu pe ri so ta vu ze".split()


@pytest.fixture(scope="module")
def prepared(tmp_path_factory) -> Path:
    """Prepared data whose words are often several tokens: 300 made-up words of 1-4 syllables for a 120-token
    vocabulary (WALK_WORDS are one token each, where whole-word masking cannot differ from token masking)."""
    root = tmp_path_factory.mktemp("words")
    rng = random.Random(0)
    words = ["".join(rng.choice(SYLLABLES) for _ in range(rng.randint(1, 4))) for _ in range(300)]
    corpus = root / "corpus"
    corpus.mkdir()
    for i in range(30):
        (corpus / f"doc{i:02d}.txt").write_text(" ".join(rng.choice(words) for _ in range(60)))
    return prepare_tiny(corpus, root / "data")


class _Started(Exception):
    """Raised in place of training: the run got as far as fit."""


def started_run(monkeypatch, out: Path, *argv: object) -> dict:
    """`masklm pretrain --preset tiny --output OUT ARGV...` stopped at Run.fit: fit's arguments ("trainable",
    "train" and its keywords: "make_batch", "loss_fn", ...)."""
    given: dict = {}

    def fit(self, trainable, train, **fit_args):
        given.update(fit_args, trainable=trainable, train=train)
        raise _Started

    with monkeypatch.context() as mp:
        mp.setattr(Run, "fit", fit)
        try:
            with pytest.raises(_Started):
                cli("pretrain", "--preset", "tiny", "--output", out, *argv)
        finally:
            release_run_dir(out)
    return given


def words_of(
    ids: torch.Tensor, word_starts: torch.Tensor, specials: list[int]
) -> list[list[tuple[int, int]]]:
    """Each row's words as lists of (row, position), as the data's word starts define them; special tokens
    belong to no word and end the one before them."""
    special = torch.isin(ids, torch.tensor(specials))
    rows = []
    for b in range(ids.shape[0]):
        words: list[list[tuple[int, int]]] = []
        for t in range(ids.shape[1]):
            if special[b, t]:
                words.append([])
            elif bool(word_starts[b, t]) or not words or not words[-1]:
                words.append([(b, t)])
            else:
                words[-1].append((b, t))
        rows.append([w for w in words if w])
    return rows


def strategy_masks(monkeypatch, prepared: Path, out: Path, strategy: str, steps: int = 2) -> list[dict]:
    """The first `steps` training batches of a run with `--mask.strategy STRATEGY`, each with "chosen" (the
    positions to predict) and the rows it masks ("ids", "word_starts", drawn from the data as the run draws
    them)."""
    given = started_run(monkeypatch, out, "--data", prepared, "--mask.strategy", strategy)
    train = given["train"]
    data = PackedDataset(prepared, "train")
    batches = []
    for step in range(steps):
        batch = given["make_batch"](step)
        first = step * train.batch_size
        ids, word_starts = data.draw(np.arange(first, first + train.batch_size, dtype=np.int64), train.seed)
        chosen = batch["labels"] != -100
        # the rows drawn here are the ones masked: unchosen tokens as they were, labels the chosen ones
        assert torch.equal(torch.where(chosen, batch["labels"], batch["input_ids"]), ids)
        batches.append({"chosen": chosen, "ids": ids, "word_starts": word_starts})
    return batches


def split_words(batch: dict, specials: list[int]) -> tuple[int, int]:
    """(words of several tokens partly chosen, words of several tokens wholly chosen) in a batch."""
    partly = wholly = 0
    for row in words_of(batch["ids"], batch["word_starts"], specials):
        for word in row:
            picked = [bool(batch["chosen"][p]) for p in word]
            if len(word) > 1:
                partly += any(picked) and not all(picked)
                wholly += all(picked)
    return partly, wholly


@pytest.mark.parametrize("strategy", ["whole_word", "span"])
def test_mask_strategy_reaches_the_masks_a_run_trains_on(prepared, tmp_path, monkeypatch, strategy):
    """The batches a run trains on with --mask.strategy whole_word / span choose every word (as the data's word
    starts define it) entirely or not at all, and differ from strategy token's under the same seed, which splits
    words (so the check above can fail)."""
    sp = special_ids(load_tokenizer(prepared / "tokenizer.json"))
    specials = [sp.pad, sp.cls, sp.sep, sp.mask, sp.unk]
    got = strategy_masks(monkeypatch, prepared, tmp_path / strategy, strategy)
    token = strategy_masks(monkeypatch, prepared, tmp_path / "token", "token")
    for step, (batch, plain) in enumerate(zip(got, token)):
        partly, wholly = split_words(batch, specials)
        assert partly == 0, f"step {step}: {partly} words of several tokens partly chosen"
        assert wholly > 0, f"step {step}: no word of several tokens chosen: the check proves nothing"
        assert split_words(plain, specials)[0] > 0, "token masking split no word: the check proves nothing"
        assert not torch.equal(batch["chosen"], plain["chosen"])
    if strategy == "span":  # spans are not whole-word masking's independent words
        whole = strategy_masks(monkeypatch, prepared, tmp_path / "whole", "whole_word")
        assert any(not torch.equal(a["chosen"], b["chosen"]) for a, b in zip(got, whole))


def test_discriminator_weight_reaches_the_electra_loss(prepared, tmp_path, monkeypatch):
    """--objective.discriminator_weight 3: the loss a run trains with is [generator loss, 3 x discriminator
    loss] (not the default 50's)."""
    given = started_run(monkeypatch, tmp_path / "run", "--data", prepared, "--objective", "electra",
                        "--objective.discriminator_weight", "3")  # fmt: skip
    model, batch = given["trainable"].model, given["make_batch"](0)
    with torch.no_grad():
        loss = given["loss_fn"](model, batch)
        gen, disc = electra_loss(model, batch, 1.0)
    assert disc > 0
    assert loss.tolist() == pytest.approx([float(gen), 3 * float(disc)], rel=1e-5)


def test_qa_score_is_p_start_times_p_end():
    """best_answers' score is softmax(start logits)[s] x softmax(end logits)[e] over the answer's window (its
    tokens only: the padding of a 2-D array of logits does not count), for the best span of context tokens."""
    context = "the key is alice smith"
    offsets = [None, None, None, (0, 3), (4, 7), (8, 10), (11, 16), (17, 22), None]
    examples = [{"context": context}, {"context": context}]
    features = [
        {"example_index": 0, "offsets": offsets},
        {"example_index": 1, "offsets": offsets[:6] + [None]},  # a shorter window: padded logits below
    ]
    start = np.array(
        [[0.5, 3.0, 0.2, 0.1, 2.0, 0.3, 1.1, -1.0, 0.0], [0.1, 0.2, 0.3, 1.5, 0.4, -0.2, 0.7, 9.0, 9.0]]
    )
    end = np.array(
        [[0.4, 0.0, 2.9, -0.5, 0.3, 2.5, 0.1, 1.0, 0.2], [0.0, 0.3, 0.1, 0.2, 1.7, 0.6, 0.5, 9.0, 9.0]]
    )
    answers = best_answers(examples, features, start, end)

    def p(logits: np.ndarray, i: int) -> float:
        return float(torch.softmax(torch.tensor(logits), 0)[i])

    # example 0: start "key" (token 4), end "is" (token 5); [CLS]-like tokens 1 and 2 are higher but no context
    assert (answers[0]["text"], answers[0]["start"], answers[0]["end"]) == ("key is", 4, 10)
    assert answers[0]["score"] == pytest.approx(p(start[0], 4) * p(end[0], 5), rel=1e-6)
    # example 1: 7 tokens in its window; start "the" (token 3), end "key" (token 4)
    assert answers[1]["text"] == "the key"
    assert answers[1]["score"] == pytest.approx(p(start[1, :7], 3) * p(end[1, :7], 4), rel=1e-6)


def test_serve_answers_500_for_a_failed_forward_pass_and_goes_on(served_models, monkeypatch):
    """A forward pass that raises answers its request 500 with {"error": one line}; the next request is answered
    as before the failure."""
    from starlette.testclient import TestClient

    from masklm.serve.app import create_app
    from masklm.serve.models import load_served

    served = load_served(str(served_models["cls"] / "model"), "float32")
    forward = served.model.forward
    failures = [RuntimeError("out of memory\nwhile computing a batch")]

    def failing_forward(*args, **kwargs):
        if failures:
            raise failures.pop()
        return forward(*args, **kwargs)

    body = {"inputs": ["alpha great bravo", "kilo awful lima"]}
    with TestClient(create_app([served]), raise_server_exceptions=False) as client:
        before = client.post("/v1/predict", json=body)
        monkeypatch.setattr(served.model, "forward", failing_forward)
        failed = client.post("/v1/predict", json=body)
        after = client.post("/v1/predict", json=body)
    assert before.status_code == 200
    assert failed.status_code == 500 and failed.headers["content-type"] == "application/json"
    assert list(failed.json()) == ["error"]
    message = failed.json()["error"]
    assert "RuntimeError" in message and "out of memory" in message and "\n" not in message
    assert "\n" not in failed.text.strip()
    assert after.status_code == 200 and after.json() == before.json() and not failures
    assert math.isclose(sum(after.json()["outputs"][0]["scores"].values()), 1.0, rel_tol=1e-4)
