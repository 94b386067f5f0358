"""Fine-tuning options: --init random, head.pooling, head.classifier_dropout, train.layer_decay, and the check
of optional dependencies before any work. Tiny models, a step or two each."""

from __future__ import annotations

import dataclasses
import json
import random
import sys
from pathlib import Path

import pytest
import tokenizers
import torch
import yaml
from helpers import (
    cli,
    file_snapshot,
    final_weights,
    keyword_rows,
    random_inputs,
    read_metrics,
    tiny_model_config,
    write_csv,
)
from safetensors.torch import load_file

from masklm import finetune as ft
from masklm.config import FinetuneConfig, FinetuneTrainConfig, HeadConfig
from masklm.data.tokenizer import train_tokenizer
from masklm.model.base import build_model
from masklm.model.encoder import set_attention_dropout
from masklm.model.heads import MaskedLM, SequenceClassification, TokenClassification
from masklm.model.io import ModelInfo, load_model, save_model
from masklm.tasks import get_task
from masklm.train.optim import lr_factor, make_optimizer, param_groups, set_lr

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py

WORDS = "the a of and to in is was river city north south music team game season album band film".split()
FAST = ["--train.lr", "3e-3", "--train.batch_size", "8", "--train.threads", "1"]


def cls_rows(n: int, seed: int) -> list[dict]:
    """ "pos" when the sentence holds "great", "neg" when it holds "awful"."""
    return keyword_rows(n, seed, WORDS, words=(3, 8))


def write_ner(path: Path, n: int, seed: int) -> Path:
    """CoNLL lines: "paris" / "rome" are B-LOC, anything else O."""
    rng = random.Random(seed)
    blocks = []
    for _ in range(n):
        words = [rng.choice([*WORDS, "paris", "rome"]) for _ in range(rng.randint(3, 7))]
        blocks.append("".join(f"{w}\t{'B-LOC' if w in ('paris', 'rome') else 'O'}\n" for w in words))
    path.write_text("\n".join(blocks), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("data")
    write_csv(d / "train.csv", cls_rows(24, 1))
    write_csv(d / "val.csv", cls_rows(8, 2))
    write_ner(d / "ner_train.txt", 16, 3)
    write_ner(d / "ner_val.txt", 8, 4)
    return d


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> Path:
    """A masklm MaskedLM model folder (random weights stand in for pretrained ones) with a toy tokenizer."""
    tok = train_tokenizer([r["text"] for r in cls_rows(100, 9)] + ["paris rome"] * 5, vocab_size=120)
    cfg = tiny_model_config(tok.get_vocab_size(), hidden_dropout_prob=0.1)
    torch.manual_seed(123)
    folder = tmp_path_factory.mktemp("base") / "model"
    save_model(MaskedLM(cfg), folder, tok, ModelInfo("MaskedLM"))
    return folder


def finetune_args(base: Path, data: Path, out: Path, *extra: object, task: str = "classification") -> list:
    files = ("train.csv", "val.csv") if task == "classification" else ("ner_train.txt", "ner_val.txt")
    return [
        "finetune", "--task", task, "--model", base, "--train", data / files[0],
        "--validation", data / files[1], "--output", out, "--train.max_steps", 2, *FAST, *extra,
    ]  # fmt: skip


def one_line_error(capsys) -> str:
    err = [line for line in capsys.readouterr().err.strip().splitlines() if not line.startswith("note:")]
    assert len(err) == 1 and err[0].startswith("error: "), err
    return err[0]


# ----------------------------------------------------------------------------------------------------
# --init random


def test_random_init_is_a_fresh_seeded_model_of_the_same_architecture(base):
    task, labels = get_task("classification"), ["neg", "pos"]
    pretrained, tok0, _ = ft._load_start_model(task, base, labels, FinetuneConfig())
    starts = {}
    for seed in (0, 0, 1):
        cfg = FinetuneConfig(train=FinetuneTrainConfig(seed=seed))
        model, tok, notes = ft._load_start_model(task, base, labels, cfg, init="random")
        assert (
            type(model) is type(pretrained) and model.cfg == pretrained.cfg and tok.to_str() == tok0.to_str()
        )
        assert any("--init random" in n for n in notes)
        starts.setdefault(seed, []).append(model.state_dict())
    a, b = starts[0]
    assert all(torch.equal(a[k], b[k]) for k in a)  # the same seed: the same weights
    other = starts[1][0]
    assert not torch.equal(a["encoder.layers.0.attn.qkv.weight"], other["encoder.layers.0.attn.qkv.weight"])
    own = pretrained.state_dict()
    assert set(own) == set(a) and not any(
        torch.equal(own[k], a[k]) for k in a if k.startswith("encoder.") and own[k].std() > 0
    )
    # exactly the weights a new model of that config gets after seeding
    torch.manual_seed(0)
    new = build_model("SequenceClassification", pretrained.cfg, labels).state_dict()
    assert all(torch.equal(new[k], a[k]) for k in a)


def test_init_random_from_the_command_line_is_recorded_and_repeatable(base, data, tmp_path, capsys):
    for name in ("a", "b"):
        assert cli(*finetune_args(base, data, tmp_path / name, "--init", "random")) == 0
    assert "random init (seed 0)" in capsys.readouterr().err
    wa, wb = final_weights(tmp_path / "a"), final_weights(tmp_path / "b")
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    assert (tmp_path / "a" / "model" / "tokenizer.json").read_text() == (base / "tokenizer.json").read_text()
    config = yaml.safe_load((tmp_path / "a" / "config.yaml").read_text())
    summary = json.loads((tmp_path / "a" / "summary.json").read_text())
    assert config["run"]["init"] == "random" and summary["init"] == "random"
    # the default is unchanged: the pretrained weights, recorded as such
    assert cli(*finetune_args(base, data, tmp_path / "p")) == 0
    assert json.loads((tmp_path / "p" / "summary.json").read_text())["init"] == "pretrained"
    pretrained = final_weights(tmp_path / "p")
    key = "encoder.embeddings.word.weight"
    start = load_file(str(base / "model.safetensors"))[key]
    assert (pretrained[key] - start).abs().max() < (wa[key] - start).abs().max()
    # --resume keeps the run's --init and refuses another
    capsys.readouterr()
    assert cli(*finetune_args(base, data, tmp_path / "a", "--resume", "--init", "pretrained")) == 2
    assert "--init random" in one_line_error(capsys)


# ----------------------------------------------------------------------------------------------------
# head.pooling and head.classifier_dropout


def test_mean_pooling_changes_the_logits_ignores_padding_and_survives_save_and_load(base, tmp_path):
    tok = tokenizers.Tokenizer.from_file(str(base / "tokenizer.json"))
    V = tok.get_vocab_size()
    cfg = tiny_model_config(V)
    torch.manual_seed(0)
    cls_model = SequenceClassification(cfg, 3).eval()
    torch.manual_seed(0)
    mean_model = SequenceClassification(cfg, 3, pooling="mean").eval()
    assert mean_model.pooler is None and not any(k.startswith("pooler.") for k in mean_model.state_dict())
    mean_model.load_state_dict(
        {k: v for k, v in cls_model.state_dict().items() if not k.startswith("pooler.")}
    )
    inputs = random_inputs(V, (9, 6), second_segment=4, seed=1)
    with torch.no_grad():
        a, b = cls_model(**inputs), mean_model(**inputs)
        assert not torch.allclose(a, b)
        # the mean is over real tokens only: row 1 alone, unpadded, gives the same logits
        short = {k: v[1:, :6] for k, v in inputs.items()}
        torch.testing.assert_close(mean_model(**short)[0], b[1])
        h = mean_model.encoder(**inputs)
        m = inputs["attention_mask"][1, :, None].float()
        torch.testing.assert_close(mean_model.classifier((h[1] * m).sum(0) / m.sum()), b[1])

    save_model(mean_model, tmp_path / "m", tok, ModelInfo("SequenceClassification", labels=["a", "b", "c"]))
    assert json.loads((tmp_path / "m" / "config.json").read_text())["head"]["pooling"] == "mean"
    loaded, _, info = load_model(tmp_path / "m")
    assert loaded.pooling == "mean" and info.head["pooling"] == "mean"
    with torch.no_grad():
        torch.testing.assert_close(loaded.eval()(**inputs), b)
    # asking for cls pooling instead gives a classifier whose pooler starts fresh, with a note
    again, _, info = load_model(tmp_path / "m", head={"pooling": "cls"})
    assert again.pooler is not None and any("pooling cls requested" in n for n in info.notes)


def test_mean_pooled_classifier_end_to_end(base, data, tmp_path, capsys):
    run = tmp_path / "run"
    assert cli(*finetune_args(base, data, run, "--head.pooling", "mean")) == 0
    assert yaml.safe_load((run / "config.yaml").read_text())["head"]["pooling"] == "mean"
    assert json.loads((run / "model" / "config.json").read_text())["head"]["pooling"] == "mean"
    fm = ft.load_finetuned(run)
    assert fm.model.pooling == "mean" and fm.cfg.head.pooling == "mean"
    capsys.readouterr()
    assert cli("evaluate", "--model", run, "--data", data / "val.csv", "--json") == 0
    metrics = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    summary = json.loads((run / "summary.json").read_text())
    assert metrics["accuracy"] == pytest.approx(summary["accuracy"])
    # the head is the model's: evaluate / predict refuse to change it
    assert cli("evaluate", "--model", run, "--data", data / "val.csv", "--head.pooling", "cls") == 2
    assert "head.pooling is saved with the model" in one_line_error(capsys)
    # Hugging Face export is refused in one line, nothing written; ONNX works
    assert cli("export", run, tmp_path / "hf", "--format", "hf") == 2
    assert "BertForSequenceClassification" in one_line_error(capsys) and not (tmp_path / "hf").exists()
    pytest.importorskip("onnxruntime")
    assert cli("export", run, tmp_path / "onnx", "--format", "onnx") == 0


def test_finetuning_a_finetuned_model_again_keeps_its_head(base, data, tmp_path, capsys):
    """A fine-tuned model fine-tuned again (more data, a second stage) without head settings keeps its head's
    options and trained classifier, and its config.yaml says so; a head setting given, even at its default,
    asks for that head instead."""
    first = tmp_path / "first"
    assert (
        cli(*finetune_args(base, data, first, "--head.pooling", "mean", "--head.classifier_dropout", 0.2))
        == 0
    )
    capsys.readouterr()
    again = tmp_path / "again"
    assert cli(*finetune_args(first / "model", data, again)) == 0
    assert "initialised from scratch" not in capsys.readouterr().err
    assert yaml.safe_load((again / "config.yaml").read_text())["head"] == {
        "pooling": "mean",
        "classifier_dropout": 0.2,
    }
    assert json.loads((again / "model" / "config.json").read_text())["head"]["pooling"] == "mean"
    # --init random builds the same head afresh
    assert cli(*finetune_args(first / "model", data, tmp_path / "random", "--init", "random")) == 0
    assert yaml.safe_load((tmp_path / "random" / "config.yaml").read_text())["head"]["pooling"] == "mean"
    capsys.readouterr()
    cls = tmp_path / "cls"
    assert cli(*finetune_args(first / "model", data, cls, "--head.pooling", "cls")) == 0
    assert "pooling cls requested" in capsys.readouterr().err
    assert json.loads((cls / "model" / "config.json").read_text())["head"]["pooling"] == "cls"


def test_classifier_dropout_acts_in_training_only():
    cfg = tiny_model_config(120)  # hidden_dropout_prob 0: any dropout comes from the head
    inputs = random_inputs(120, (9, 6), second_segment=4, seed=2)
    for head in (SequenceClassification, TokenClassification):
        torch.manual_seed(0)
        plain = head(cfg, 3)
        torch.manual_seed(0)
        dropped = head(cfg, 3, classifier_dropout=0.5)
        assert plain.dropout.p == 0.0 and dropped.dropout.p == 0.5
        assert dropped.head_options()["classifier_dropout"] == 0.5
        with torch.no_grad():
            torch.testing.assert_close(
                plain.eval()(**inputs), dropped.eval()(**inputs)
            )  # eval: no difference
            plain.train(), dropped.train()
            torch.testing.assert_close(plain(**inputs), plain.eval()(**inputs))
            assert not torch.allclose(dropped(**inputs), dropped.eval()(**inputs))  # training: dropped out
    # None keeps the encoder's hidden_dropout_prob, as before
    assert SequenceClassification(tiny_model_config(120, hidden_dropout_prob=0.1), 2).dropout.p == 0.1


def test_classifier_dropout_is_saved_and_exported(base, data, tmp_path, capsys):
    run = tmp_path / "run"
    args = finetune_args(base, data, run, "--head.classifier_dropout", 0.3, task="token-classification")
    assert cli(*args) == 0
    assert json.loads((run / "model" / "config.json").read_text())["head"] == {"classifier_dropout": 0.3}
    assert ft.load_finetuned(run).model.dropout.p == 0.3
    assert cli("export", run, tmp_path / "hf", "--format", "hf", "--no-check") == 0
    assert json.loads((tmp_path / "hf" / "config.json").read_text())["classifier_dropout"] == 0.3
    model, _, info = load_model(tmp_path / "hf")  # a Hugging Face folder brings its classifier_dropout along
    assert model.dropout.p == 0.3 and info.head == {"classifier_dropout": 0.3}
    # a head setting the task's head does not take is refused before anything is written
    capsys.readouterr()
    out = tmp_path / "refused"
    assert cli(*finetune_args(base, data, out, "--head.pooling", "mean", task="token-classification")) == 2
    assert "head.pooling does not apply to token-classification" in one_line_error(capsys)
    assert not out.exists()


# ----------------------------------------------------------------------------------------------------
# train.layer_decay


def _group_of(optimizer: torch.optim.Optimizer) -> dict[int, dict]:
    return {id(p): g for g in optimizer.param_groups for p in g["params"]}


def test_layer_decay_gives_each_depth_its_learning_rate():
    torch.manual_seed(0)
    model = SequenceClassification(tiny_model_config(120, num_hidden_layers=3), 2)
    L, lr, d = 3, 1e-3, 0.8
    train = FinetuneTrainConfig(lr=lr, layer_decay=d, weight_decay=0.01)
    opt = make_optimizer(model, train, torch.device("cpu"))
    assert opt.defaults.get("fused")  # the fused kernel takes the per-group rates
    groups = _group_of(opt)

    def expected_scale(name: str) -> float:
        if name.startswith("encoder.embeddings."):
            return d ** (L + 1)
        if name.startswith("encoder.layers."):
            return d ** (L - int(name.split(".")[2]))
        return 1.0  # the pooler and the classifier

    for name, p in model.named_parameters():
        g = groups[id(p)]
        assert g["lr"] == pytest.approx(lr * expected_scale(name)), name
        assert g["weight_decay"] == (0.01 if p.ndim >= 2 else 0.0), name
    assert groups[id(model.classifier.weight)]["lr"] == lr
    assert groups[id(model.encoder.layers[2].ffn_norm.weight)]["lr"] == pytest.approx(lr * d)
    # at a given step the schedule scales every group's own rate: the ratios stay
    total, step = 20, 13
    factor = lr_factor(step / total, train, total)
    set_lr(opt, lr * factor)
    for name, p in model.named_parameters():
        assert groups[id(p)]["lr"] == pytest.approx(lr * factor * expected_scale(name)), name
    # the fused step moves each parameter by about its group's rate (Adam's first step: |update| ~ lr)
    set_lr(opt, lr)
    for g in opt.param_groups:
        g["weight_decay"] = 0.0
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    inputs = random_inputs(120, (9, 6), second_segment=4, seed=3)
    model(**inputs).sum().backward()
    opt.step()
    for name in ("encoder.embeddings.word.weight", "encoder.layers.0.attn.qkv.weight", "classifier.weight"):
        moved = (dict(model.named_parameters())[name] - before[name]).abs().max().item()
        assert moved == pytest.approx(lr * expected_scale(name), rel=0.05), name
    # the optimizer state (per group) survives a resume: same groups, scales and rates
    again = make_optimizer(model, train, torch.device("cpu"))
    again.load_state_dict(opt.state_dict())
    set_lr(again, lr * factor)
    assert [g["lr"] for g in again.param_groups] == pytest.approx(
        [lr * factor * g["lr_scale"] for g in opt.param_groups]
    )


def test_layer_decay_puts_the_embedding_projection_with_the_embeddings():
    """With model.embedding_size the projection to the hidden size lies between the embeddings and block 0: it
    trains at the embeddings' rate (ELECTRA's embeddings_project at depth 0), not at the head's."""
    cfg = tiny_model_config(120, num_hidden_layers=2, embedding_size=8)
    lr, d = 1e-3, 0.5
    for model in (SequenceClassification(cfg, 2), MaskedLM(cfg)):
        groups = _group_of(
            make_optimizer(model, FinetuneTrainConfig(lr=lr, layer_decay=d), torch.device("cpu"))
        )
        embeddings = groups[id(model.encoder.embeddings.word.weight)]["lr"]
        assert embeddings == pytest.approx(lr * d**3)
        for p in model.encoder.embed_proj.parameters():
            assert groups[id(p)]["lr"] == embeddings


def test_layer_decay_one_keeps_todays_two_groups():
    torch.manual_seed(0)
    model = SequenceClassification(tiny_model_config(120), 2)
    train = FinetuneTrainConfig(lr=2e-5)
    assert train.layer_decay == 1.0
    opt = make_optimizer(model, train, torch.device("cpu"))
    today = torch.optim.AdamW(
        param_groups(model, train.weight_decay),
        lr=train.lr,
        betas=(train.beta1, train.beta2),
        eps=train.eps,
        fused=True,
    )

    def plain(o: torch.optim.Optimizer) -> list[dict]:
        return [{**g, "params": [id(p) for p in g["params"]]} for g in o.param_groups]

    assert plain(opt) == plain(today) and len(opt.param_groups) == 2
    set_lr(opt, 1e-5)
    assert all(g["lr"] == 1e-5 for g in opt.param_groups)


def test_layer_decay_run_resumes_bit_identically(base, data, tmp_path):
    # a constant rate, so that stopping after 2 of 4 steps and resuming trains exactly like 4 steps in one go
    extra = ["--train.layer_decay", 0.7, "--train.schedule", "constant", "--train.warmup", 0]
    args = finetune_args(base, data, tmp_path / "a", *extra)
    args[args.index("--train.max_steps") + 1] = 4
    assert cli(*args) == 0
    assert cli(*finetune_args(base, data, tmp_path / "b", *extra)) == 0
    assert cli("finetune", "--output", tmp_path / "b", "--resume", "--train.max_steps", 4) == 0
    a = load_file(str(tmp_path / "a" / "checkpoints" / "step_00000004" / "model.safetensors"))
    b = load_file(str(tmp_path / "b" / "checkpoints" / "step_00000004" / "model.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a)


# ----------------------------------------------------------------------------------------------------
# Optional dependencies are checked before any work


def test_missing_seqeval_fails_before_training(base, data, tmp_path, capsys, monkeypatch):
    run = tmp_path / "ner"
    assert cli(*finetune_args(base, data, run, task="token-classification")) == 0  # with seqeval: fine
    capsys.readouterr()
    monkeypatch.setitem(sys.modules, "seqeval", None)  # as if it were not installed
    calls, real = [], ft.load_model
    monkeypatch.setattr(ft, "load_model", lambda *a, **k: calls.append(1) or real(*a, **k))
    out = tmp_path / "out"
    assert cli(*finetune_args(base, data, out, task="token-classification")) == 2
    message = one_line_error(capsys)
    assert "seqeval" in message and "pip install 'masklm[finetune]'" in message
    assert not out.exists() and not calls  # nothing written, no model loaded
    before = file_snapshot(run)
    assert cli("evaluate", "--model", run, "--data", data / "ner_val.txt") == 2
    assert "pip install 'masklm[finetune]'" in one_line_error(capsys)
    assert file_snapshot(run) == before
    # tags without B-/I- prefixes need no seqeval; predictions never do
    task = get_task("token-classification")
    assert task.requirements(FinetuneConfig().data, ["NOUN", "VERB"]) == []
    assert (
        cli("predict", "--model", run, "--data", data / "ner_val.txt", "--output", tmp_path / "p.jsonl") == 0
    )


def test_head_config_defaults_are_todays_behaviour():
    assert HeadConfig() == HeadConfig(pooling="cls", classifier_dropout=None)
    # the defaults ask for nothing (the model's own head options, else these), a given setting asks for itself
    assert ft.head_options(get_task("classification"), HeadConfig()) == {}
    assert ft.head_options(get_task("classification"), HeadConfig(), given={"head.pooling"}) == {
        "pooling": "cls"
    }
    assert ft.head_options(get_task("classification"), HeadConfig(pooling="mean")) == {"pooling": "mean"}
    assert ft.head_options(get_task("qa"), HeadConfig()) == {}


# ----------------------------------------------------------------------------------------------------
# train.attention_dropout


def test_attention_dropout_sets_only_the_attention_weights_dropout(base, data, tmp_path, capsys):
    """train.attention_dropout replaces the model's attention_probs_dropout_prob in training (random init too)
    and nothing else: the hidden dropout and the saved config stay; the default is 0, None keeps the model's; out
    of [0, 1) is a one-line error before anything is written."""
    task, labels = get_task("classification"), ["neg", "pos"]
    attention = lambda m: {a.dropout_p for a in m.modules() if a.__class__.__name__ == "SelfAttention"}  # noqa: E731
    masked_lm, tok, _ = load_model(base)
    start = save_model(
        MaskedLM(dataclasses.replace(masked_lm.cfg, attention_probs_dropout_prob=0.1)),
        tmp_path / "start",
        tok,
        ModelInfo("MaskedLM"),
    )
    kept, _, _ = ft._load_start_model(
        task, start, labels, FinetuneConfig(train=FinetuneTrainConfig(attention_dropout=None))
    )
    assert attention(kept) == {kept.cfg.attention_probs_dropout_prob} == {0.1}
    default, _, _ = ft._load_start_model(task, start, labels, FinetuneConfig())  # the default is 0
    assert attention(default) == {0.0} and default.cfg.attention_probs_dropout_prob == 0.1
    for init in ("pretrained", "random"):
        cfg = FinetuneConfig(train=FinetuneTrainConfig(attention_dropout=0.0))
        model, _, _ = ft._load_start_model(task, start, labels, cfg, init=init)
        assert attention(model) == {0.0} and len(model.encoder.layers) > 1
        assert model.cfg.attention_probs_dropout_prob == 0.1 and model.cfg.hidden_dropout_prob == 0.1
    # with the hidden dropout off too, a training forward is deterministic only once attention dropout is 0
    inputs = random_inputs(model.cfg.vocab_size, (9, 6), second_segment=4, seed=2)
    quiet = SequenceClassification(
        tiny_model_config(model.cfg.vocab_size, attention_probs_dropout_prob=0.5), 2
    )
    quiet.train()
    with torch.no_grad():
        assert not torch.allclose(quiet(**inputs), quiet(**inputs))
        assert set_attention_dropout(quiet, 0.0) == quiet.cfg.num_hidden_layers
        torch.testing.assert_close(quiet(**inputs), quiet.eval()(**inputs))
    out = tmp_path / "refused"
    assert cli(*finetune_args(base, data, out, "--train.attention_dropout", 1.0)) == 2
    assert "train.attention_dropout must be in [0, 1), not 1.0" in one_line_error(capsys) and not out.exists()


# ----------------------------------------------------------------------------------------------------
# train.eval_epochs: how often the validation file is evaluated


def test_eval_epochs_auto_spaces_evaluations_when_validation_outweighs_training():
    auto = FinetuneTrainConfig()
    assert [ft.eval_epochs(auto, n, 500) for n in (100, 300, 499, 500, 6824)] == [5, 2, 2, 1, 1]
    assert ft.eval_epochs(FinetuneTrainConfig(eval_epochs=4), 6824, 500) == 4  # set: taken as it is


def test_eval_epochs_sets_which_steps_are_evaluated_and_kept(tmp_path, base, data, capsys):
    write_csv(tmp_path / "few.csv", cls_rows(8, 5))  # 8 examples: one step per epoch at batch 8
    write_csv(tmp_path / "val.csv", cls_rows(24, 6))  # 3x the training set: auto evaluates every 3 epochs

    def run(name: str, *extra: object) -> tuple[list[int], dict, str]:
        out = tmp_path / name
        args = ["finetune", "--task", "classification", "--model", base, "--train", tmp_path / "few.csv",
                "--validation", tmp_path / "val.csv", "--output", out, "--train.epochs", 7, *FAST, *extra]  # fmt: skip
        capsys.readouterr()
        assert cli(*args) == 0
        steps = [r["step"] for r in read_metrics(out) if r.get("split") == "val"]
        summary = json.loads((out / "summary.json").read_text())
        return steps, summary, capsys.readouterr().err

    steps, summary, err = run("auto")
    assert steps == [3, 6, 7] and summary["eval_epochs"] == 3 and summary["best"]["step"] in steps
    assert "validation every 3 epochs" in err
    steps, summary, err = run("every", "--train.eval_epochs", 1)
    assert steps == list(range(1, 8)) and summary["eval_epochs"] == 1 and "validation every" not in err
    steps, _, _ = run(
        "two", "--train.eval_epochs", 2, "--train.eval_every", 3
    )  # eval_every adds steps 3 and 6
    assert steps == [2, 3, 4, 6, 7]
    out = tmp_path / "refused"
    assert cli(*finetune_args(base, data, out, "--train.eval_epochs", 0)) == 2
    assert "train.eval_epochs must be at least 1" in one_line_error(capsys) and not out.exists()


# ----------------------------------------------------------------------------------------------------
# train.lr unset: chosen by the encoder's width


def test_default_lr_follows_the_encoders_width(base, data, tmp_path, capsys):
    assert [ft.default_lr(h) for h in (64, 128, 256, 384, 768, 1024)] == [3e-4] * 3 + [5e-5] * 3
    no_lr = [a for a in finetune_args(base, data, tmp_path / "x") if a not in ("--train.lr", "3e-3")]
    assert "--train.lr" not in no_lr
    for name, extra, lr in (("auto", [], 3e-4), ("set", ["--train.lr", 1e-4], 1e-4)):
        out = tmp_path / name
        capsys.readouterr()
        assert cli(*[out if a == tmp_path / "x" else a for a in no_lr], *extra) == 0
        saved = yaml.safe_load((out / "config.yaml").read_text())["train"]["lr"]
        assert saved == lr  # the value used is what config.yaml (and so --resume) holds
        noted = "train.lr 0.0003, the default for hidden size" in capsys.readouterr().err
        assert noted == (name == "auto")
    _, tok, _ = load_model(base)  # a wider encoder with the same tokenizer gets BERT's 5e-5
    wide = save_model(
        MaskedLM(tiny_model_config(tok.get_vocab_size(), hidden_size=384, num_attention_heads=4)),
        tmp_path / "wide",
        tok,
        ModelInfo("MaskedLM"),
    )
    out = tmp_path / "wide-run"
    assert cli(*[wide if a == base else out if a == tmp_path / "x" else a for a in no_lr]) == 0
    assert yaml.safe_load((out / "config.yaml").read_text())["train"]["lr"] == 5e-5
    capsys.readouterr()
    out = tmp_path / "zero"
    assert cli(*finetune_args(base, data, out, "--train.lr", 0)) == 2
    assert "train.lr must be positive" in one_line_error(capsys) and not out.exists()


# ----------------------------------------------------------------------------------------------------
# train.epochs unset: 3, or enough for 150 optimizer steps


def test_default_epochs_give_few_examples_enough_steps(base, data, tmp_path, capsys):
    assert [ft.default_epochs(n) for n in (1, 4, 32, 50, 51, 400)] == [150.0, 38.0, 5.0, 3.0, 3.0, 3.0]
    args = [a for a in finetune_args(base, data, tmp_path / "x") if a not in ("--train.max_steps", 2)]
    assert "--train.max_steps" not in args and "--train.epochs" not in args
    for name, extra, epochs, steps in (("auto", [], 50.0, 150), ("set", ["--train.epochs", 2], 2.0, 6)):
        out = tmp_path / name
        capsys.readouterr()
        assert (
            cli(*[out if a == tmp_path / "x" else a for a in args], *extra) == 0
        )  # 24 rows: 3 steps an epoch
        assert yaml.safe_load((out / "config.yaml").read_text())["train"]["epochs"] == epochs
        assert json.loads((out / "summary.json").read_text())["steps"] == steps
        noted = (
            "train.epochs 50, the default for 3 steps an epoch: at least 150 steps" in capsys.readouterr().err
        )
        assert noted == (name == "auto")


def test_a_data_setting_of_another_task_is_refused(base, data, tmp_path, capsys):
    """--data.doc_stride with classification, --data.regression with token classification (on the command line or
    in a config file) were taken, saved with the model and did nothing; refused, naming the task that reads it."""
    out = tmp_path / "run"
    assert cli(*finetune_args(base, data, out, "--data.doc_stride", 8)) == 2
    assert "data.doc_stride is a setting of qa, not of classification" in one_line_error(capsys)
    (tmp_path / "c.yaml").write_text("data:\n  regression: true\n")
    args = finetune_args(base, data, out, "--config", tmp_path / "c.yaml", task="token-classification")
    assert cli(*args) == 2
    assert (
        "data.regression is a setting of classification and prompt-classification, not of"
        in one_line_error(capsys)
    )
    assert not out.exists()
    assert cli(*finetune_args(base, data, out, "--data.text_column", "text")) == 0  # one of its own
    # a step budget: config.yaml records no epoch count that never ran (it said 19.0, the automatic value)
    assert yaml.safe_load((out / "config.yaml").read_text())["train"]["epochs"] is None


def test_a_hugging_face_export_keeps_the_task_settings(base, data, tmp_path):
    """A fine-tuned model exported with --format hf lost its task settings (a QA model's max_length and
    doc_stride): evaluate and predict on the export used the defaults. They travel in config.json now."""
    run = tmp_path / "run"
    assert cli(*finetune_args(base, data, run, "--data.max_length", 40, task="token-classification")) == 0
    assert ft.load_finetuned(run).cfg.data.max_length == 40
    assert cli("export", run, tmp_path / "hf", "--format", "hf", "--no-check") == 0
    assert (
        json.loads((tmp_path / "hf" / "config.json").read_text())["masklm_task"]["data"]["max_length"] == 40
    )
    assert ft.load_finetuned(tmp_path / "hf").cfg.data.max_length == 40
