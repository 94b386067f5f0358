"""masklm from Python: what the functions leave of the caller's objects, models and settings, and the one-line
UserError (not a traceback from torch, not a wrong answer) for arguments of the wrong kind."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from helpers import prepare_tiny, tiny_model_config, write_walk_corpus

from masklm.compare import compare
from masklm.config import Config, DataConfig, FinetuneConfig, load_config
from masklm.data.prepare import prepare
from masklm.data.tokenizer import train_tokenizer
from masklm.errors import UserError
from masklm.finetune import finetune
from masklm.infer.score import Scorer
from masklm.model.heads import MaskedLM
from masklm.model.io import ModelInfo, load_model, save_model
from masklm.train.pretrain import pretrain

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    tok = train_tokenizer(["the cat sleeps on the mat", "a dog runs in the park"] * 20, vocab_size=60)
    folder = tmp_path_factory.mktemp("api") / "model"
    save_model(
        MaskedLM(tiny_model_config(tok.get_vocab_size(), hidden_dropout_prob=0.5)),
        folder,
        tok,
        ModelInfo("MaskedLM"),
    )
    return folder


def test_load_model_gives_a_model_in_eval_mode(model_dir):
    """It came back in training mode: dropout on, two calls on one input answered differently."""
    model, tok, _ = load_model(model_dir)
    ids = torch.tensor([tok.encode("the cat sleeps").ids])
    with torch.no_grad():
        assert not model.training and torch.equal(model(ids), model(ids))
    with pytest.raises(UserError, match="labels must be a list of label names, not the string 'neg'"):
        load_model(model_dir, "SequenceClassification", labels="neg")  # it was ['n', 'e', 'g']
    # head options of the wrong name or value: a TypeError / ValueError from the head's constructor before
    with pytest.raises(UserError, match="the SequenceClassification head has no option 'pool'"):
        load_model(model_dir, "SequenceClassification", labels=["a", "b"], head={"pool": "mean"})
    with pytest.raises(
        UserError, match="the SequenceClassification head: pooling must be cls or mean, not 'max'"
    ):
        load_model(model_dir, "SequenceClassification", labels=["a", "b"], head={"pooling": "max"})


def test_scorer_arguments(model_dir):
    scorer = Scorer.load(model_dir)
    one = scorer.score("the cat sleeps")  # a string is one sentence, not one per character
    assert len(one) == 1 and one == scorer.score(["the cat sleeps"])
    for bad, message in (
        (lambda: scorer.score(["the cat", None]), "sentences as strings, not NoneType"),
        (lambda: scorer.pairs([]), "no minimal pairs"),
        (lambda: scorer.pairs([{"sentence_good": "the cat"}]), 'needs "sentence_good" and "sentence_bad"'),
        (lambda: Scorer.load(model_dir, token_budget=0), "at least 1, not 0"),
    ):
        with pytest.raises(UserError, match=message):
            bad()


def test_training_functions_leave_the_callers_config_and_check_it(tmp_path):
    data = prepare_tiny(write_walk_corpus(tmp_path / "corpus", n_docs=12), tmp_path / "data")
    cfg = load_config("tiny", overrides={"train.max_steps": 2, "train.eval_every": 0, "train.threads": 1})
    before = cfg.to_dict()
    pretrain(cfg, data, tmp_path / "run")
    # vocab_size and seq_len were filled in from the data, in the caller's object
    assert cfg.to_dict() == before
    assert len(compare(tmp_path / "run")["rows"]) == 1  # one run as a path, not one per character

    with pytest.raises(UserError, match="takes a FinetuneConfig, not a Config"):
        finetune(Config(), "classification", tmp_path / "run", "t.csv", "v.csv", tmp_path / "ft")
    bad = FinetuneConfig()
    bad.train.lr = -1.0
    with pytest.raises(UserError, match="train.lr must be positive"):
        finetune(bad, "classification", tmp_path / "run", "t.csv", "v.csv", tmp_path / "ft")
    assert not (tmp_path / "ft").exists()  # (a folder left behind refused the corrected retry)


def test_prepare_takes_one_path_and_refuses_rows_pretraining_refuses(tmp_path):
    corpus = write_walk_corpus(tmp_path / "corpus", n_docs=6)
    tok = train_tokenizer([p.read_text() for p in corpus.iterdir()], vocab_size=120)
    meta = prepare(corpus, tmp_path / "out", DataConfig(seq_len=16), tokenizer=tok, progress=False)
    assert meta["documents"] == 6
    with pytest.raises(UserError, match="data.seq_len must be at least 8, not 4"):
        prepare([corpus], tmp_path / "out4", DataConfig(seq_len=4), tokenizer=tok, progress=False)


def test_pretraining_without_a_budget_makes_one_pass_over_the_training_rows(tmp_path):
    """docs/pretraining.md: with no --max-steps, --max-tokens or --max-minutes (nor one in the preset), pretrain
    runs ceil(training rows / batch size) steps."""
    data = prepare_tiny(write_walk_corpus(tmp_path / "corpus", n_docs=12), tmp_path / "data")
    rows = json.loads((data / "meta.json").read_text())["splits"]["train"]["sequences"]
    cfg = load_config(
        "tiny",
        overrides={"train.max_steps": None, "train.batch_size": 4, "train.eval_every": 0, "train.threads": 1},
    )
    assert cfg.train.max_steps is None and cfg.train.max_tokens is None and cfg.train.max_minutes is None
    pretrain(cfg, data, tmp_path / "run")
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert rows > 4 and summary["steps"] == -(-rows // 4)
