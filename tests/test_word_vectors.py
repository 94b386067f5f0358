"""train.embedding_init ppmi: co-occurrence counts, PPMI + SVD word vectors, and their place in pretraining."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from helpers import prepare_tiny, read_metrics, write_walk_corpus
from safetensors.torch import load_file

from masklm.cli import main
from masklm.config import FinetuneConfig
from masklm.errors import UserError
from masklm.train import word_vectors
from masklm.train.word_vectors import CONTEXT_POWER, cooccurrence, init_word_embeddings, ppmi_vectors


def direct_counts(rows: np.ndarray, vocab: int, skip: set[int], window: int) -> np.ndarray:
    """The dense (V, V) co-occurrence weights, pair by pair."""
    counts = np.zeros((vocab, vocab))
    for row in rows:
        for i, a in enumerate(row):
            for j in range(i + 1, min(len(row), i + window + 1)):
                b = row[j]
                if a in skip or b in skip:
                    continue
                counts[a, b] += 1 / (j - i)
                counts[b, a] += 1 / (j - i)
    return counts


def test_cooccurrence_counts_every_pair_within_the_window_by_distance():
    rng = np.random.default_rng(0)
    blocks = [rng.integers(0, 12, size=(5, 9)), rng.integers(0, 12, size=(3, 9))]
    first, second, weights = cooccurrence(blocks, 12, skip=[0, 1], window=3)
    got = np.zeros((12, 12))
    got[first, second] = weights
    want = direct_counts(np.concatenate(blocks), 12, {0, 1}, 3)
    np.testing.assert_allclose(got, want)
    assert len(set(zip(first.tolist(), second.tolist()))) == len(first)  # one entry per pair
    assert got[[0, 1]].sum() == 0 and got[:, [0, 1]].sum() == 0  # the skipped ids never count


@pytest.mark.parametrize("dense", [True, False])
def test_ppmi_vectors_factor_the_ppmi_matrix(dense, monkeypatch):
    """With as many dimensions as tokens, the vectors' inner products are U S Uᵀ of the SVD U S Vᵀ of the PPMI
    matrix, computed here densely from its definition."""
    if not dense:  # the path of vocabularies too large for a dense matrix
        monkeypatch.setattr(word_vectors, "DENSE_MAX_VOCAB", 0)
    rng = np.random.default_rng(1)
    vocab = 10
    counts = direct_counts(rng.integers(0, vocab, size=(40, 12)), vocab, set(), 4)
    first, second = np.nonzero(counts)
    total, word = counts.sum(), counts.sum(1)
    context = word**CONTEXT_POWER / (word**CONTEXT_POWER).sum()
    with np.errstate(divide="ignore"):
        pmi = np.log(counts / total) - np.log(word[:, None] / total) - np.log(context[None, :])
    ppmi = np.where(counts > 0, np.maximum(pmi, 0), 0)
    vectors = ppmi_vectors(first, second, counts[first, second], vocab, dim=vocab, seed=0).double().numpy()
    u, s, _ = np.linalg.svd(ppmi)
    assert s[0] > 0.5  # a real matrix, not all zeros
    np.testing.assert_allclose(vectors @ vectors.T, (u * s) @ u.T, atol=1e-4)
    again = ppmi_vectors(first, second, counts[first, second], vocab, dim=vocab, seed=0)
    assert torch.equal(again, torch.from_numpy(vectors).float())  # seeded: the same vectors every time


def test_init_word_embeddings_keeps_specials_and_unseen_tokens_and_scales_the_rest():
    torch.manual_seed(0)
    embedding = torch.nn.Embedding(16, 8)  # 12 tokens, 4 padded rows
    before = embedding.weight.detach().clone()
    rows = [np.array([[2, 5, 6, 7, 5, 6, 3], [2, 7, 8, 9, 8, 5, 3]])]  # 2, 3: specials; 10, 11: never seen
    note = init_word_embeddings(embedding, rows, skip=[0, 1, 2, 3], vocab_size=12, std=0.02, seed=0)
    after = embedding.weight.detach()
    changed = [i for i in range(16) if not torch.equal(after[i], before[i])]
    assert changed == [5, 6, 7, 8, 9]
    assert after[changed].std().item() == pytest.approx(0.02, rel=1e-4)
    assert "5 tokens" in note


def test_text_without_positive_pmi_keeps_the_normal_init():
    """One token repeated: its only pair has PMI 0, so no vector; the embedding stays as it was (a zero vector
    scaled to the normal std would have been NaN)."""
    torch.manual_seed(0)
    embedding = torch.nn.Embedding(8, 4)
    before = embedding.weight.detach().clone()
    note = init_word_embeddings(embedding, [np.full((2, 6), 5)], skip=[0, 1], vocab_size=8, std=0.02, seed=0)
    assert torch.equal(embedding.weight.detach(), before)
    assert "of 0 tokens" in note


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    root = tmp_path_factory.mktemp("wv")
    return prepare_tiny(write_walk_corpus(root / "corpus", n_docs=40), root / "data")


def pretrain(data, out, *extra: str) -> dict[str, torch.Tensor]:
    args = ["pretrain", "--preset", "tiny", "--data", str(data), "--output", str(out), "--max-steps", "2"]
    assert main([*args, "--train.eval_every", "0", "--train.threads", "1", *extra]) == 0
    return load_file(str(out / "model" / "model.safetensors"))


def test_pretraining_starts_from_the_word_vectors(prepared, tmp_path, capsys):
    ppmi = pretrain(prepared, tmp_path / "a", "--train.embedding_init", "ppmi")
    assert "from the training text's co-occurrences" in capsys.readouterr().err
    again = pretrain(prepared, tmp_path / "b", "--train.embedding_init", "ppmi")
    normal = pretrain(prepared, tmp_path / "c")
    word = "encoder.embeddings.word.weight"
    assert all(torch.equal(ppmi[k], again[k]) for k in ppmi)  # deterministic
    assert not torch.allclose(ppmi[word], normal[word], atol=1e-3)
    assert (tmp_path / "a" / "summary.json").read_text().count("co-occurrences") == 1  # a note of the run
    assert read_metrics(tmp_path / "a")  # and it trained


def test_an_init_from_model_keeps_its_embeddings(prepared, tmp_path):
    pretrain(prepared, tmp_path / "start")
    normal = pretrain(prepared, tmp_path / "n", "--init-from", str(tmp_path / "start"))
    ppmi = pretrain(
        prepared, tmp_path / "p", "--init-from", str(tmp_path / "start"), "--train.embedding_init", "ppmi"
    )
    assert all(torch.equal(ppmi[k], normal[k]) for k in normal)


def test_fine_tuning_refuses_it():
    cfg = FinetuneConfig()
    cfg.train.embedding_init = "ppmi"
    with pytest.raises(UserError, match="train.embedding_init starts a model pretrained from scratch"):
        cfg.validate()


def test_the_init_time_counts_in_a_minutes_budget_but_the_warmup_starts_at_the_first_step(
    prepared, tmp_path, monkeypatch
):
    """--max-minutes with the word-vector init: its seconds count against the budget (30 s of a 0.55-minute budget
    here, pretended), and the schedule spans the rest, so the first steps still warm up from 0 (they ran at 60% of
    the rate when the init's seconds counted as half the schedule gone)."""
    from masklm.train import pretrain as pretrain_module

    real = pretrain_module.start_word_embeddings
    monkeypatch.setattr(pretrain_module, "start_word_embeddings", lambda *a: real(*a) * 0 + 30.0)
    out = tmp_path / "timed"
    args = [
        "pretrain",
        "--preset",
        "tiny",
        "--data",
        str(prepared),
        "--output",
        str(out),
        "--max-minutes",
        "0.55",
    ]
    assert (
        main(
            [
                *args,
                "--train.embedding_init",
                "ppmi",
                "--train.threads",
                "1",
                "--train.warmup",
                "0.5",
                "--train.schedule",
                "constant",
            ]
        )
        == 0
    )
    first = next(r for r in read_metrics(out) if r.get("split") == "train")
    assert first["elapsed_s"] > 30 and first["lr"] < 0.5e-3  # 30 s of 33 gone before any step, yet warming up
    state = torch.load(next((out / "checkpoints").iterdir()) / "trainer.pt", weights_only=False)
    assert state["setup_s"] == 30.0
