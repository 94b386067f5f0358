"""Domain-adaptive pretraining (Gururangan et al. 2020): `masklm pretrain --init-from MODEL --input DOMAIN_TEXT`
continues pretraining an existing encoder on new text, and the result fine-tunes like any model.

The start is a tiny Hugging Face `BertModel` folder (an encoder without MLM head weights, as all-MiniLM-L6-v2 is),
written with transformers. What is checked: the run starts from that encoder's weights (and shape), gets a fresh
MLM head and says so, keeps the model's own tokenizer (no new vocabulary), evaluates masked accuracy, and
`masklm finetune` on it keeps the continued encoder; a masklm run given to --init-from goes on with its own MLM
head. The refusal of `--init-from` with `--data` prepared by another tokenizer is the case
`pretrain-init-from-other-tokenizer` of tests/test_bad_inputs.py.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import random
from pathlib import Path

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
transformers = pytest.importorskip("transformers")

from helpers import TINY_ENCODER, cli, final_weights, read_metrics, write_csv  # noqa: E402

from masklm.data.tokenizer import load_tokenizer, tokenizer_hash, train_tokenizer  # noqa: E402
from masklm.model.io import load_model  # noqa: E402

# The "general" text the Hugging Face model's tokenizer is trained on, and the "domain": film reviews made of
# the same words, so the domain text is tokenised with the model's vocabulary as it is.
GENERAL = [
    "the film was good and the actors were great",
    "a bad plot with awful acting and a boring ending",
    "the music was great but the story was bad",
    "i loved the ending , the cast was good",
    "the director made a boring film with great music",
] * 8
POSITIVE, NEGATIVE = ["good", "great", "loved"], ["bad", "awful", "boring"]
NOUNS = ["film", "plot", "acting", "ending", "music", "story", "cast", "actors", "director"]
STEPS, LR = 6, 1e-3
# Adam moves a weight by about lr per step (a little more at most), weight decay by far less: the bound on how far
# STEPS steps at LR can take a weight from where it started. A fresh initialisation is further than this from the
# Hugging Face model's weights (`randomised` below), so the check cannot pass by accident.
MOVED_AT_MOST = 3 * STEPS * LR
PRETRAIN = ["--preset", "tiny", "--seq-len", "32", "--data.val_fraction", "0.2", "--train.eval_every", "0",
            "--train.threads", "1", "--train.warmup", "0"]  # fmt: skip


def review(rng: random.Random) -> tuple[str, str]:
    """One review sentence and its label."""
    label = rng.choice(["pos", "neg"])
    words = POSITIVE if label == "pos" else NEGATIVE
    return (
        f"the {rng.choice(NOUNS)} was {rng.choice(words)} and the {rng.choice(NOUNS)} was {rng.choice(words)}",
        label,
    )


def randomised(model: torch.nn.Module) -> torch.nn.Module:
    """Weights well away from any fresh initialisation (noise of std 0.1 on every one)."""
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.1)
    return model


@pytest.fixture(scope="module")
def hf_encoder(tmp_path_factory) -> Path:
    """A Hugging Face BertModel folder: config.json (architectures ["BertModel"]), model.safetensors without MLM
    head weights, and a small WordPiece tokenizer (tokenizer.json and vocab.txt)."""
    folder = tmp_path_factory.mktemp("hf") / "encoder"
    vocab = train_tokenizer(GENERAL, vocab_size=80).get_vocab()
    config = transformers.BertConfig(**{**TINY_ENCODER, "vocab_size": len(vocab)})
    torch.manual_seed(0)
    randomised(transformers.BertModel(config)).save_pretrained(str(folder))
    transformers.BertTokenizerFast(vocab=vocab).save_pretrained(str(folder))
    (folder / "vocab.txt").write_text(
        "".join(t + "\n" for t in sorted(vocab, key=vocab.get))
    )  # as BERT ships it
    assert json.loads((folder / "config.json").read_text())["architectures"] == ["BertModel"]
    assert {"model.safetensors", "tokenizer.json", "vocab.txt"} <= {p.name for p in folder.iterdir()}
    return folder


@pytest.fixture(scope="module")
def domain(tmp_path_factory) -> Path:
    """The domain text: 40 files of review sentences."""
    folder = tmp_path_factory.mktemp("domain")
    rng = random.Random(0)
    for i in range(40):
        (folder / f"review{i:02d}.txt").write_text(" . ".join(review(rng)[0] for _ in range(4)))
    return folder


@pytest.fixture(scope="module")
def continued(hf_encoder, domain, tmp_path_factory, one_thread) -> tuple[Path, str]:
    """`masklm pretrain --init-from HF_DIR --input DOMAIN`: the run folder and what it printed to stderr."""
    run = tmp_path_factory.mktemp("dapt") / "run"
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        code = cli("pretrain", "--init-from", hf_encoder, "--input", domain, "--output", run,
                   "--max-steps", STEPS, "--train.lr", LR, *PRETRAIN)  # fmt: skip
    assert code == 0, err.getvalue()
    return run, err.getvalue()


def encoder_of(weights: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v for k, v in weights.items() if k.startswith("encoder.")}


# ----------------------------------------------------------------------------------------------------------------


def test_continues_the_hugging_face_encoder(hf_encoder, continued):
    run, _ = continued
    start = encoder_of(load_model(hf_encoder)[0].state_dict())
    end = encoder_of(final_weights(run))
    assert start.keys() == end.keys() and start
    moved = {k: (end[k] - start[k]).abs().max().item() for k in start}
    assert max(moved.values()) <= MOVED_AT_MOST, max(moved.items(), key=lambda kv: kv[1])  # started from them
    assert max(moved.values()) > 0  # and pretraining changed them

    saved = json.loads((run / "model" / "config.json").read_text())["model"]
    assert (
        saved["max_position_embeddings"] == TINY_ENCODER["max_position_embeddings"]
    )  # the model's, not the preset's
    assert saved["hidden_dropout_prob"] == TINY_ENCODER["hidden_dropout_prob"]


def test_fresh_mlm_head_is_noted(continued):
    run, stderr = continued
    summary = json.loads((run / "summary.json").read_text())
    assert any(n.startswith("MLM head initialised from scratch") for n in summary["notes"]), summary["notes"]
    assert "note: MLM head initialised from scratch" in stderr


def test_keeps_the_models_own_tokenizer(hf_encoder, continued):
    run, _ = continued
    _, hf_tokenizer, _ = load_model(hf_encoder)
    for path in (run / "tokenizer.json", run / "model" / "tokenizer.json", run / "data" / "tokenizer.json"):
        tok = load_tokenizer(path)
        assert tokenizer_hash(tok) == tokenizer_hash(hf_tokenizer), path
        assert tok.get_vocab() == hf_tokenizer.get_vocab(), path  # no new vocabulary


def test_masked_accuracy_is_evaluated(continued):
    run, _ = continued
    summary = json.loads((run / "summary.json").read_text())
    assert 0 <= summary["eval"]["accuracy"] <= 1 and summary["eval"]["loss"] > 0
    assert "frequency_baseline_accuracy" in summary
    evals = [r for r in read_metrics(run) if "accuracy" in r]
    assert evals and evals[-1]["accuracy"] == summary["eval"]["accuracy"]


def test_result_finetunes_with_the_continued_encoder(hf_encoder, continued, tmp_path, one_thread):
    run, _ = continued
    rng = random.Random(1)
    rows = [dict(zip(("text", "label"), review(rng))) for _ in range(48)]
    train, val = write_csv(tmp_path / "train.csv", rows[:32]), write_csv(tmp_path / "val.csv", rows[32:])
    ft = tmp_path / "ft"
    assert cli("finetune", "--task", "classification", "--model", run, "--train", train, "--validation", val,
               "--output", ft, "--train.epochs", "1", "--train.lr", "1e-9", "--train.threads", "1") == 0  # fmt: skip
    tuned = encoder_of(final_weights(ft))
    pretrained = encoder_of(final_weights(run))
    original = encoder_of(load_model(hf_encoder)[0].state_dict())
    assert all(
        torch.allclose(tuned[k], pretrained[k], atol=1e-6) for k in pretrained
    )  # the continued encoder
    assert not all(torch.allclose(tuned[k], original[k], atol=1e-6) for k in original)  # not the original one
    summary = json.loads((ft / "summary.json").read_text())
    assert 0 <= summary["best"]["value"] <= 1


def test_masklm_run_continues_with_its_own_mlm_head(continued, domain, tmp_path, one_thread):
    run, _ = continued
    again = tmp_path / "again"
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        code = cli("pretrain", "--init-from", run, "--input", domain, "--output", again,
                   "--max-steps", "2", "--train.lr", "1e-9", *PRETRAIN)  # fmt: skip
    assert code == 0, err.getvalue()
    assert json.loads((again / "summary.json").read_text())["notes"] == []
    assert "initialised from scratch" not in err.getvalue()
    before, after = final_weights(run), final_weights(again)
    assert before.keys() == after.keys() and "decoder_bias" in after
    assert all(torch.allclose(after[k], before[k], atol=1e-6) for k in before)  # the MLM head too
    first, second = (json.loads((r / "summary.json").read_text())["eval"] for r in (run, again))
    assert second["loss"] == pytest.approx(first["loss"], rel=1e-4)  # the same held-out rows, masks and model


def test_layer_decay_keeps_the_encoder_close_while_the_fresh_head_trains(
    hf_encoder, domain, tmp_path, one_thread
):
    """`--train.layer_decay 0.25`: the fresh MLM head at the full rate, block i of L at lr * 0.25^(L - i) and the
    embeddings at lr * 0.25^(L + 1) (L = 2: 1/64 of it), so after the same steps each has moved at most its own
    share of the bound, while the head's bias (zero at the start) moved further than the embeddings may."""
    run = tmp_path / "decayed"
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        code = cli("pretrain", "--init-from", hf_encoder, "--input", domain, "--output", run,
                   "--max-steps", STEPS, "--train.lr", LR, "--train.layer_decay", "0.25", *PRETRAIN)  # fmt: skip
    assert code == 0, err.getvalue()
    L, d = TINY_ENCODER["num_hidden_layers"], 0.25
    start = encoder_of(load_model(hf_encoder)[0].state_dict())
    end = final_weights(run)
    bounds = {
        "encoder.embeddings.": d ** (L + 1),
        "encoder.layers.0.": d**L,
        "encoder.layers.1.": d ** (L - 1),
    }
    for prefix, share in bounds.items():
        moved = max((end[k] - start[k]).abs().max().item() for k in start if k.startswith(prefix))
        assert 0 < moved <= MOVED_AT_MOST * share, (prefix, moved, MOVED_AT_MOST * share)
    assert end["decoder_bias"].abs().max().item() > MOVED_AT_MOST * d ** (L + 1)


def test_layer_decay_is_refused_for_electra(domain, tmp_path, capsys):
    code = cli("pretrain", "--input", domain, "--output", tmp_path / "run", "--objective", "electra",
               "--train.layer_decay", "0.8", *PRETRAIN)  # fmt: skip
    assert code == 2
    assert "train.layer_decay in pretraining is for the mlm objective" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


def test_seq_len_may_reach_the_models_positions_above_the_presets(hf_encoder, domain, tmp_path, one_thread):
    """--init-from brings its own max_position_embeddings: a --seq-len above the preset's (tiny: 128) but within
    the model's is fine (it was refused by the preset's limit, whose fix, --model.max_position_embeddings, is
    refused with --init-from), and one above the model's is refused before anything is written."""
    folder = tmp_path / "long"
    vocab = load_tokenizer(hf_encoder).get_vocab_size()
    config = transformers.BertConfig(**{**TINY_ENCODER, "vocab_size": vocab, "max_position_embeddings": 256})
    transformers.BertModel(config).save_pretrained(str(folder))
    for name in ("tokenizer.json", "vocab.txt"):
        (folder / name).write_bytes((hf_encoder / name).read_bytes())
    common = ["--init-from", folder, "--input", domain, "--max-steps", 1, *PRETRAIN]
    assert cli("pretrain", *common, "--seq-len", 160, "--output", tmp_path / "run") == 0
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["seq_len"] == 160
    assert cli("pretrain", *common, "--seq-len", 300, "--output", tmp_path / "too_long") == 2
    assert not (tmp_path / "too_long").exists()
