"""Fine-tuning, evaluation and prediction end to end through `masklm.cli.main`, on tiny models.

Every task gets a toy problem a 2-layer, 32-wide encoder learns from scratch in a few dozen steps:
classification keyed by one word, tags keyed by the word, QA answers at a fixed place in the context.
"""

from __future__ import annotations

import csv
import json
import os
import random
import signal
from pathlib import Path

import pytest
import torch
import yaml
from helpers import cli, file_snapshot, keyword_rows, read_metrics, tiny_model_config, write_csv, write_jsonl
from safetensors.torch import load_file, save_file

from masklm import finetune as ft
from masklm.data.tokenizer import train_tokenizer
from masklm.model.heads import MaskedLM
from masklm.model.io import ModelInfo, load_model, save_model

# fmt: off
FILLER = [
    "the", "a", "of", "and", "to", "in", "is", "was", "for", "on", "with", "as",
    "by", "at", "from", "his", "her", "river", "city", "north", "south", "music", "team", "game",
    "season", "album", "band", "film", "valley", "school", "church", "station",
]
# fmt: on
NAMES, PLACES = ("alice", "bob"), ("paris", "rome")
QUESTION = "what is the key ?"
# A tiny encoder learns these toy tasks from scratch in a few dozen steps at this learning rate.
FAST = ["--train.lr", "3e-3", "--train.batch_size", "16", "--train.threads", "1"]


# ----------------------------------------------------------------------------------------------------
# Toy data


def cls_rows(n: int, seed: int) -> list[dict]:
    """Label "pos" when the sentence holds "great", "neg" when it holds "awful"."""
    return keyword_rows(n, seed, FILLER, words=(4, 9))


def ner_sentences(n: int, seed: int) -> list[tuple[list[str], list[str]]]:
    """alice/bob smith → B-PER I-PER, paris/rome → B-LOC, anything else O."""
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        tokens, tags = [], []
        for _ in range(rng.randint(4, 9)):
            r = rng.random()
            if r < 0.15:
                tokens += [rng.choice(NAMES), "smith"]
                tags += ["B-PER", "I-PER"]
            elif r < 0.3:
                tokens.append(rng.choice(PLACES))
                tags.append("B-LOC")
            else:
                tokens.append(rng.choice(FILLER))
                tags.append("O")
        out.append((tokens, tags))
    return out


def qa_examples(n: int, seed: int, impossible_every: int = 0) -> list[dict]:
    """The answer is always the context's third and fourth word (a name or place, then "smith")."""
    rng = random.Random(seed)
    out = []
    for i in range(n):
        words = [rng.choice(FILLER) for _ in range(rng.randint(6, 10))]
        ctx_words = [*words[:2], rng.choice(NAMES + PLACES), "smith", *words[2:]]
        context = " ".join(ctx_words)
        answer = " ".join(ctx_words[2:4])
        ex = {"id": f"q{seed}-{i}", "question": QUESTION, "context": context}
        if impossible_every and i % impossible_every == 0:
            ex["answers"] = {"text": [], "answer_start": []}
        else:
            ex["answers"] = {"text": [answer], "answer_start": [context.index(answer)]}
        out.append(ex)
    return out


def write_conll(path: Path, sentences: list[tuple[list[str], list[str]]], tags: bool = True) -> Path:
    blocks = ["".join(f"{t}\t{g}\n" if tags else f"{t}\n" for t, g in zip(*s)) for s in sentences]
    path.write_text("\n".join(blocks), encoding="utf-8")
    return path


def write_squad_json(path: Path, examples: list[dict]) -> Path:
    paragraphs = [
        {
            "context": ex["context"],
            "qas": [
                {
                    "id": ex["id"],
                    "question": ex["question"],
                    "answers": [{"text": t, "answer_start": s} for t, s in zip(*ex["answers"].values())],
                }
            ],
        }
        for ex in examples
    ]
    path.write_text(json.dumps({"version": "1.1", "data": [{"title": "toy", "paragraphs": paragraphs}]}))
    return path


# ----------------------------------------------------------------------------------------------------
# Fixtures


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("data")
    for split, seed, n in (("train", 1, 64), ("val", 2, 32)):
        write_csv(d / f"cls_{split}.csv", cls_rows(n, seed))
        write_conll(d / f"ner_{split}.txt", ner_sentences(n, seed))
        write_jsonl(d / f"qa_{split}.jsonl", qa_examples(n, seed))
    return d


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> Path:
    """A randomly initialised masklm model folder (MaskedLM) with a WordPiece tokenizer trained on toy text."""
    texts = [r["text"] for r in cls_rows(200, 99)]
    texts += [" ".join(t) for t, _ in ner_sentences(200, 98)]
    texts += [f"{ex['context']} {QUESTION}" for ex in qa_examples(100, 97)]
    tok = train_tokenizer(texts, vocab_size=300)
    cfg = tiny_model_config(tok.get_vocab_size(), hidden_dropout_prob=0.1)
    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("base") / "model"
    save_model(MaskedLM(cfg), folder, tok, ModelInfo("MaskedLM"))
    return folder


@pytest.fixture(scope="module")
def cls_run(base, data, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("runs") / "cls"
    rc = cli(
        "finetune", "--task", "classification", "--model", base, "--train", data / "cls_train.csv",
        "--validation", data / "cls_val.csv", "--output", out, "--train.epochs", 8, *FAST,
    )  # fmt: skip
    assert rc == 0
    return out


def last_json(capsys) -> dict:
    return json.loads(capsys.readouterr().out.strip().splitlines()[-1])


# ----------------------------------------------------------------------------------------------------
# Round trips


def test_classification_round_trip(cls_run, data, tmp_path, capsys):
    for name in ("config.yaml", "command.txt", "metrics.jsonl", "curves.png", "summary.json"):
        assert (cls_run / name).is_file(), name
    assert list((cls_run / "checkpoints").glob("step_*"))
    assert (cls_run / "command.txt").read_text().startswith("masklm finetune --task classification")
    summary = json.loads((cls_run / "summary.json").read_text())
    assert summary["accuracy"] == 1.0
    assert {"macro_f1", "mcc", "f1", "loss"} <= set(summary)
    assert summary["best"]["metric"] == "accuracy"
    saved = json.loads((cls_run / "model" / "config.json").read_text())
    assert saved["architecture"] == "SequenceClassification" and saved["labels"] == ["neg", "pos"]
    config = yaml.safe_load((cls_run / "config.yaml").read_text())
    assert config["data"]["max_length"] == 64  # 128 by default, capped at the model's positions
    assert config["train"]["lr"] == 3e-3 and config["run"]["task"] == "classification"

    capsys.readouterr()
    assert cli("evaluate", "--model", cls_run, "--data", data / "cls_val.csv", "--json") == 0
    metrics = last_json(capsys)
    assert metrics == pytest.approx({k: summary[k] for k in metrics})
    assert set(metrics) == {"accuracy", "macro_f1", "mcc", "f1", "loss"}

    val = cls_rows(32, 2)
    unlabelled = write_jsonl(tmp_path / "texts.jsonl", [{"text": r["text"]} for r in val])
    assert cli("predict", "--model", cls_run, "--data", unlabelled, "--output", tmp_path / "p.jsonl") == 0
    rows = [json.loads(line) for line in (tmp_path / "p.jsonl").read_text().splitlines()]
    assert [r["label"] for r in rows] == [r["label"] for r in val]
    assert all(0.5 <= r["score"] <= 1 for r in rows)
    assert (
        cli("predict", "--model", cls_run / "model", "--data", unlabelled, "--output", tmp_path / "p.csv")
        == 0
    )
    with open(tmp_path / "p.csv", newline="") as f:
        assert [r["label"] for r in csv.DictReader(f)] == [r["label"] for r in val]


def test_pairs_integer_labels_tsv_and_overrides(base, tmp_path, capsys):
    rng = random.Random(3)
    rows = []
    for r in cls_rows(48, 5):
        label = rng.choice([0, 1, 2])
        rows.append({"sentence": r["text"], "second": " ".join(rng.sample(FILLER, 3)), "gold": label})
    write_csv(tmp_path / "train.tsv", rows, delimiter="\t")
    out = tmp_path / "run"
    settings = [
        "--data.text_column",
        "sentence",
        "--data.text_pair_column",
        "second",
        "--data.label_column",
        "gold",
    ]
    rc = cli(
        "finetune", "--task", "classification", "--model", base, "--train", tmp_path / "train.tsv",
        "--validation", tmp_path / "train.tsv", "--output", out, *FAST, *settings,
        "--train.epochs", 1, "--data.max_length", 24, "--train.seed", 7, "--train.metric_for_best", "macro_f1",
    )  # fmt: skip
    assert rc == 0
    config = yaml.safe_load((out / "config.yaml").read_text())
    assert config["data"]["max_length"] == 24 and config["train"]["seed"] == 7
    assert config["train"]["epochs"] == 1
    summary = json.loads((out / "summary.json").read_text())
    assert summary["labels"] == ["0", "1", "2"] and summary["best"]["metric"] == "macro_f1"
    assert "f1" not in summary  # binary F1 only for two labels
    # predict keeps the column names and writes integer labels back as integers
    assert (
        cli("predict", "--model", out, "--data", tmp_path / "train.tsv", "--output", tmp_path / "p.jsonl")
        == 0
    )
    first = json.loads((tmp_path / "p.jsonl").read_text().splitlines()[0])
    assert set(first) == {"sentence", "second", "gold", "score"} and first["gold"] in (0, 1, 2)


def test_regression(base, tmp_path, capsys):
    rows = [{"text": r["text"], "score": 1.0 if r["label"] == "pos" else -1.0} for r in cls_rows(48, 6)]
    write_jsonl(tmp_path / "train.jsonl", rows)
    out = tmp_path / "run"
    rc = cli(
        "finetune", "--task", "classification", "--model", base, "--train", tmp_path / "train.jsonl",
        "--validation", tmp_path / "train.jsonl", "--output", out, "--data.regression", "true",
        "--data.label_column", "score", "--train.epochs", 20, *FAST,
    )  # fmt: skip
    assert rc == 0
    err = capsys.readouterr().err
    assert "parameters for regression on" in err and "note: the validation file is the training file" in err
    summary = json.loads((out / "summary.json").read_text())
    assert summary["best"]["metric"] == "pearson" and summary["pearson"] > 0.9
    assert {"spearman", "mse", "loss"} <= set(summary)
    assert json.loads((out / "model" / "config.json").read_text())["labels"] is None
    assert (
        cli("predict", "--model", out, "--data", tmp_path / "train.jsonl", "--output", tmp_path / "p.jsonl")
        == 0
    )
    preds = [json.loads(line)["score"] for line in (tmp_path / "p.jsonl").read_text().splitlines()]
    assert all(isinstance(p, float) for p in preds)
    assert all((p > 0) == (r["score"] > 0) for p, r in zip(preds, rows))


def test_token_classification_round_trip(base, data, tmp_path, capsys):
    out = tmp_path / "run"
    rc = cli(
        "finetune", "--task", "token-classification", "--model", base, "--train", data / "ner_train.txt",
        "--validation", data / "ner_val.txt", "--output", out, "--train.epochs", 8, *FAST,
    )  # fmt: skip
    assert rc == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["f1"] == 1.0 and summary["best"]["metric"] == "f1"
    assert summary["labels"] == ["B-LOC", "B-PER", "I-PER", "O"]
    capsys.readouterr()
    assert cli("evaluate", "--model", out, "--data", data / "ner_val.txt", "--json") == 0
    metrics = last_json(capsys)
    assert set(metrics) == {"precision", "recall", "f1", "accuracy", "loss"}
    assert metrics == pytest.approx({k: summary[k] for k in metrics})

    val = ner_sentences(32, 2)
    plain = write_conll(tmp_path / "tokens.txt", val, tags=False)  # one column: no tags
    assert cli("predict", "--model", out, "--data", plain, "--output", tmp_path / "p.jsonl") == 0
    rows = [json.loads(line) for line in (tmp_path / "p.jsonl").read_text().splitlines()]
    assert [(r["tokens"], r["tags"]) for r in rows] == [(t, g) for t, g in val]
    assert cli("predict", "--model", out, "--data", plain, "--output", tmp_path / "p.conll") == 0
    blocks = (tmp_path / "p.conll").read_text().split("\n\n")
    assert blocks[0].splitlines() == [f"{t}\t{g}" for t, g in zip(*val[0])] and len(blocks) == len(val)


def test_evaluate_uses_the_precision_of_training(base, data, tmp_path, capsys, monkeypatch):
    """A model fine-tuned in fp32 on a machine where "auto" means bf16 is evaluated in fp32 too, so `evaluate`
    reproduces summary.json; --train.precision still overrides."""
    monkeypatch.setattr("masklm.train.loop.native_bf16", lambda device: True)
    out = tmp_path / "run"
    rc = cli(
        "finetune", "--task", "token-classification", "--model", base, "--train", data / "ner_train.txt",
        "--validation", data / "ner_val.txt", "--output", out, "--train.epochs", 2, "--train.precision", "fp32",
        *FAST,
    )  # fmt: skip
    assert rc == 0
    summary = json.loads((out / "summary.json").read_text())
    capsys.readouterr()
    assert cli("evaluate", "--model", out, "--data", data / "ner_val.txt", "--json") == 0
    assert last_json(capsys)["loss"] == pytest.approx(summary["loss"], rel=1e-6)
    args = ("evaluate", "--model", out, "--data", data / "ner_val.txt", "--json", "--train.precision", "bf16")
    assert cli(*args) == 0
    assert last_json(capsys)["loss"] != pytest.approx(summary["loss"], rel=1e-6)  # bf16 rounds differently


def test_qa_round_trip_with_windows(base, tmp_path, capsys):
    train = write_squad_json(tmp_path / "train.json", qa_examples(64, 1))
    val = write_jsonl(tmp_path / "val.jsonl", qa_examples(32, 2))
    out = tmp_path / "run"
    # 18 tokens leave 10 for the context: longer contexts are cut into overlapping windows
    rc = cli(
        "finetune", "--task", "qa", "--model", base, "--train", train, "--validation", val, "--output", out,
        "--train.epochs", 10, "--data.max_length", 18, "--data.doc_stride", 4, *FAST,
    )  # fmt: skip
    assert rc == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["train_features"] > summary["train_examples"]  # several windows per long context
    assert summary["exact_match"] >= 90 and summary["f1"] >= 90
    assert "NoAns_exact" not in summary
    capsys.readouterr()
    assert cli("evaluate", "--model", out, "--data", val, "--json") == 0
    metrics = last_json(capsys)
    assert metrics == pytest.approx({k: summary[k] for k in metrics})

    questions = [{k: ex[k] for k in ("id", "question", "context")} for ex in qa_examples(32, 2)]
    unlabelled = write_jsonl(tmp_path / "q.jsonl", questions)
    assert cli("predict", "--model", out, "--data", unlabelled, "--output", tmp_path / "p.jsonl") == 0
    rows = [json.loads(line) for line in (tmp_path / "p.jsonl").read_text().splitlines()]
    gold = {ex["id"]: ex["answers"]["text"][0] for ex in qa_examples(32, 2)}
    assert sum(r["answer"] == gold[r["id"]] for r in rows) >= 29
    assert cli("predict", "--model", out, "--data", unlabelled, "--output", tmp_path / "p.json") == 0
    assert set(json.loads((tmp_path / "p.json").read_text())) == set(gold)


def test_qa_version_2_detected(base, tmp_path):
    train = write_jsonl(tmp_path / "train.jsonl", qa_examples(32, 1, impossible_every=4))
    val = write_jsonl(tmp_path / "val.jsonl", qa_examples(16, 2, impossible_every=4))
    out = tmp_path / "run"
    rc = cli(
        "finetune", "--task", "qa", "--model", base, "--train", train, "--validation", val, "--output", out,
        "--train.epochs", 1, *FAST,
    )  # fmt: skip
    assert rc == 0
    assert yaml.safe_load((out / "config.yaml").read_text())["data"]["version_2"] is True
    summary = json.loads((out / "summary.json").read_text())
    assert {"exact_match", "f1", "HasAns_exact", "HasAns_f1", "NoAns_exact", "NoAns_f1"} <= set(summary)


def test_qa_version_2_false_with_unanswerable_training_questions_is_refused(base, tmp_path, capsys):
    train = write_jsonl(tmp_path / "train.jsonl", qa_examples(8, 1, impossible_every=4))
    argv = ["finetune", "--task", "qa", "--model", base, "--train", train, "--validation", train]
    assert cli(*argv, "--output", tmp_path / "run", "--data.version_2", "false", *FAST) == 2
    err = capsys.readouterr().err
    assert "2 unanswerable question(s), but --data.version_2 is false" in err and err.count("\n") == 1
    assert not (tmp_path / "run").exists()


def test_hugging_face_folder_as_model(base, data, tmp_path):
    hf = pytest.importorskip("masklm.model.hf")
    from masklm.model.io import load_model

    model, tok, _ = load_model(base)
    folder = tmp_path / "hf"
    folder.mkdir()
    save_file(hf.to_hf_state_dict(model), str(folder / "model.safetensors"))
    (folder / "config.json").write_text(json.dumps(hf.config_to_hf(model.cfg)))
    (folder / "tokenizer.json").write_text(tok.to_str())
    out = tmp_path / "run"
    rc = cli(
        "finetune", "--task", "classification", "--model", folder, "--train", data / "cls_train.csv",
        "--validation", data / "cls_val.csv", "--output", out, "--train.epochs", 1, *FAST,
    )  # fmt: skip
    assert rc == 0
    summary = json.loads((out / "summary.json").read_text())
    assert any("initialised from scratch" in n for n in summary["notes"])


# ----------------------------------------------------------------------------------------------------
# Resume


@pytest.mark.parametrize("batching", ["bucketed", "tokens"])
def test_resume_equals_uninterrupted_run(base, data, tmp_path, monkeypatch, capsys, batching):
    args = [
        "finetune", "--task", "classification", "--model", base, "--train", data / "cls_train.csv",
        "--validation", data / "cls_val.csv", "--train.epochs", 2.5, "--train.log_every", 1, *FAST,
        "--train.batching", batching,
    ]  # fmt: skip
    assert cli(*args, "--output", tmp_path / "a") == 0  # 2.5 epochs of 4 steps: 10 steps

    real, calls = ft.task_loss, []

    def interrupted(*a, **k):  # SIGTERM in the middle of step 6 (epoch 2): fit finishes the step and stops
        calls.append(1)
        if len(calls) == 6:
            os.kill(os.getpid(), signal.SIGTERM)
        return real(*a, **k)

    monkeypatch.setattr(ft, "task_loss", interrupted)
    assert cli(*args, "--output", tmp_path / "b") == 0
    assert not (tmp_path / "b" / "summary.json").exists()
    assert [p.name for p in (tmp_path / "b" / "checkpoints").glob("step_*")] == ["step_00000006"]
    monkeypatch.setattr(ft, "task_loss", real)
    capsys.readouterr()
    # the task, model, files and settings (2.5 epochs, not the default 3) come from the run folder
    assert cli("finetune", "--output", tmp_path / "b", "--resume") == 0
    assert "best validation accuracy" in capsys.readouterr().out

    for name in ("model/model.safetensors", "checkpoints/step_00000010/model.safetensors"):
        a, b = load_file(str(tmp_path / "a" / name)), load_file(str(tmp_path / "b" / name))
        assert all(torch.equal(a[k], b[k]) for k in a), name

    def records(run: str) -> list[dict]:
        keep = ("step", "split", "loss", "lr", "accuracy")
        return [{k: r[k] for k in keep if k in r} for r in read_metrics(tmp_path / run)]

    assert records("a") == records("b")
    sa, sb = (json.loads((tmp_path / r / "summary.json").read_text()) for r in "ab")
    assert sa["best"] == sb["best"] and sa["last_eval"] == sb["last_eval"] and sb["steps"] == 10


# ----------------------------------------------------------------------------------------------------
# Bad input: one line, exit code 2, nothing written


def _bad_inputs(d: Path) -> dict[str, tuple[list[object], str]]:
    write_csv(d / "unseen.csv", [*cls_rows(4, 9), {"text": "so so", "label": "meh"}])
    lines = (d / "ner_train.txt").read_text().splitlines()
    lines[4] = "alice\tB-PER\textra"
    (d / "ner_bad.txt").write_text("\n".join(lines) + "\n")
    squad = qa_examples(4, 1)
    squad[2]["answers"]["answer_start"] = [1]
    write_jsonl(d / "qa_bad.jsonl", squad)
    (d / "empty.csv").write_text("")
    write_csv(d / "one_label.csv", [{"text": "a b", "label": "x"}] * 3)
    write_conll(d / "ner_one_tag.txt", [(["a", "b"], ["O", "O"]), (["c"], ["O"])])

    def cls(train: str = "cls_train.csv", val: str = "cls_val.csv", *extra: object) -> list[object]:
        return ["--task", "classification", "--train", d / train, "--validation", d / val, *extra]

    return {
        "missing column": (cls("cls_train.csv", "cls_val.csv", "--data.text_column", "body"), "has no column 'body'"),
        "unseen label": (cls("cls_train.csv", "unseen.csv"), "label 'meh'"),
        "conll fields": (
            ["--task", "token-classification", "--train", d / "ner_bad.txt", "--validation", d / "ner_val.txt"],
            "ner_bad.txt:5 has 3 fields",
        ),
        "answer_start": (
            ["--task", "qa", "--train", d / "qa_bad.jsonl", "--validation", d / "qa_val.jsonl"],
            "answer_start",
        ),
        "empty file": (cls("empty.csv"), "empty"),
        "one label": (cls("one_label.csv"), "at least two labels"),
        "one tag": (
            ["--task", "token-classification", "--train", d / "ner_one_tag.txt", "--validation", d / "ner_val.txt"],
            "every token has the tag 'O'; token classification needs at least two tags",
        ),
        "unknown key": (cls("cls_train.csv", "cls_val.csv", "--train.bogus", "1"), "unknown config key"),
        "bad metric": (cls("cls_train.csv", "cls_val.csv", "--train.metric_for_best", "bleu"), "metric_for_best"),
        "bad value": (cls("cls_train.csv", "cls_val.csv", "--train.epochs", "many"), "expects a finite number"),
        "infinite epochs": (cls("cls_train.csv", "cls_val.csv", "--train.epochs", "inf"), "expects a finite number"),
        "infinite lr": (cls("cls_train.csv", "cls_val.csv", "--train.lr", "inf"), "expects a finite number"),
        "nan threshold": (cls("cls_train.csv", "cls_val.csv", "--data.null_threshold", "nan"), "expects a finite number"),
        "token budget": (cls("cls_train.csv", "cls_val.csv", "--train.max_tokens", "9"), "max_tokens"),
        "unknown task": (["--task", "ner", "--train", d / "cls_train.csv", "--validation", d / "cls_val.csv"], "unknown task"),
        "missing args": (["--task", "classification"], "needs --train, --validation"),
    }  # fmt: skip


@pytest.mark.parametrize("existing", [False, True])
def test_bad_inputs_one_line_exit_2_nothing_written(base, data, tmp_path, capsys, existing):
    out = tmp_path / "out"
    if (
        existing
    ):  # an earlier run's folder stays exactly as it was (even with --overwrite: inputs are checked first)
        out.mkdir()
        (out / "config.yaml").write_text("train: {}\n")
        (out / "summary.json").write_text('{"accuracy": 0.5}\n')
    before = file_snapshot(out)
    for name, (argv, message) in _bad_inputs(data).items():
        flags = ["--overwrite"] if existing else []
        rc = cli("finetune", "--model", base, "--output", out, *argv, *flags)
        err = capsys.readouterr().err.strip().splitlines()
        err = [line for line in err if not line.startswith("note:")]
        assert rc == 2, name
        assert len(err) == 1 and err[0].startswith("error: ") and message in err[0], (name, err)
        assert file_snapshot(out) == before, name


def test_existing_output_folder_is_refused(cls_run, base, data, capsys):
    before = file_snapshot(cls_run)
    rc = cli(
        "finetune", "--task", "classification", "--model", base, "--train", data / "cls_train.csv",
        "--validation", data / "cls_val.csv", "--output", cls_run,
    )  # fmt: skip
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and "already exists" in err[0]
    assert file_snapshot(cls_run) == before


def test_evaluate_and_predict_errors(cls_run, base, data, tmp_path, capsys):
    existing = tmp_path / "p.jsonl"
    existing.write_text("keep me\n")
    cases = [
        (
            ["predict", "--model", cls_run, "--data", data / "cls_val.csv", "--output", existing],
            "already exists",
        ),
        (
            ["predict", "--model", cls_run, "--data", data / "cls_val.csv", "--output", tmp_path / "p.xml"],
            ".xml",
        ),
        (["evaluate", "--model", base, "--data", data / "cls_val.csv"], "not a fine-tuned"),
        (["evaluate", "--model", cls_run, "--data", data / "ner_val.txt"], "unsupported file type"),
        (["evaluate", "--model", cls_run, "--data", tmp_path / "missing.csv"], "not found"),
    ]
    for argv, message in cases:
        rc = cli(*argv)
        err = capsys.readouterr().err.strip().splitlines()
        assert rc == 2 and len(err) == 1 and message in err[0], (argv, err)
    assert existing.read_text() == "keep me\n"
    assert not (tmp_path / "p.xml").exists()
    # a file without the label column can be predicted but not evaluated
    write_jsonl(tmp_path / "texts.jsonl", [{"text": "great film"}])
    assert cli("evaluate", "--model", cls_run, "--data", tmp_path / "texts.jsonl") == 2
    assert "no label column" in capsys.readouterr().err


@pytest.mark.parametrize("task", ["classification", "token-classification"])
def test_accumulated_micro_batches_train_like_one_batch(tmp_path, task):
    """Ten examples in micro-batches of 4, 4 and 2 (grad_accum 3) train as one batch of ten: each micro-batch
    counts by its items (examples; labelled tokens for NER), not a third each."""
    rows = cls_rows(10, 5)
    write_csv(tmp_path / "train.csv", rows)
    write_conll(tmp_path / "train.txt", ner_sentences(10, 5))
    tok = train_tokenizer(
        [r["text"] for r in cls_rows(200, 99)] + [" ".join(t) for t, _ in ner_sentences(200, 98)],
        vocab_size=300,
    )
    torch.manual_seed(0)
    base = save_model(
        MaskedLM(tiny_model_config(tok.get_vocab_size())), tmp_path / "base", tok, ModelInfo("MaskedLM")
    )
    train = tmp_path / ("train.csv" if task == "classification" else "train.txt")
    weights = {}
    for name, batch, accum in (("one", 12, 1), ("accumulated", 4, 3)):
        out = tmp_path / name
        assert cli(
            "finetune", "--task", task, "--model", base, "--train", train, "--validation", train, "--output", out,
            "--train.batch_size", batch, "--train.grad_accum", accum, "--train.max_steps", 3, "--train.warmup", 0,
            "--train.lr", 1e-2, "--train.threads", 1, "--head.classifier_dropout", 0, "--train.precision", "fp32",
        ) == 0  # fmt: skip
        weights[name] = load_file(str(out / "model" / "model.safetensors"))
    for key, value in weights["one"].items():
        torch.testing.assert_close(weights["accumulated"][key], value, rtol=1e-4, atol=1e-5, msg=key)


def test_bucket_batches_sets_how_alike_batch_lengths_are():
    from masklm.errors import UserError
    from masklm.finetune import EpochBatches, build_config

    lengths = [3 + (7 * i) % 61 for i in range(640)]
    features = [{"input_ids": [5] * n, "token_type_ids": [0] * n, "labels": 0} for n in lengths]

    def spread(bucket_batches: int) -> float:
        """Mean over batches of (longest - shortest) length in the batch."""
        order = EpochBatches(features, 16, 0, seed=3, bucket_batches=bucket_batches).order(0)
        assert sorted(i for batch in order for i in batch) == list(range(len(lengths)))
        return sum(max(lengths[i] for i in b) - min(lengths[i] for i in b) for b in order) / len(order)

    assert (
        spread(40) < 5 < 40 < spread(1)
    )  # one bucket of all examples: near-equal lengths; 1: random batches
    assert build_config({}).train.bucket_batches == 50
    with pytest.raises(UserError, match="train.bucket_batches must be at least 1"):
        build_config({"train.bucket_batches": 0})


# ----------------------------------------------------------------------------------------------------
# predict: the output file, the tokens it can hold, labels it ignores


def test_predict_refuses_to_write_over_its_data(cls_run, data, tmp_path, capsys, monkeypatch):
    """--output naming the --data file (as such, relative, through a symbolic or a hard link) is refused even
    with --overwrite: the user's file, gold labels and all, stays as it was."""
    mine = tmp_path / "mine.csv"
    mine.write_bytes((data / "cls_val.csv").read_bytes())
    before = mine.read_bytes()
    (tmp_path / "link.csv").symlink_to(mine)
    os.link(mine, tmp_path / "hard.csv")
    (tmp_path / "sub").mkdir()
    monkeypatch.chdir(tmp_path / "sub")
    for output in (
        mine,
        "../mine.csv",
        tmp_path / "sub" / ".." / "mine.csv",
        tmp_path / "link.csv",
        tmp_path / "hard.csv",
    ):
        rc = cli("predict", "--model", cls_run, "--data", mine, "--output", output, "--overwrite")
        err = capsys.readouterr().err.strip().splitlines()
        assert rc == 2 and len(err) == 1 and "is the --data file" in err[0], (output, err)
        assert mine.read_bytes() == before
    assert (tmp_path / "link.csv").is_symlink()


def test_predict_keeps_every_input_row_and_column(cls_run, data, tmp_path, capsys):
    """One output row per input row, in order (a row whose text is empty too), with the input's other columns
    (an id) carried through; an input column named "score" is not overwritten by the probability."""
    rows = list(csv.DictReader((data / "cls_val.csv").read_text(encoding="utf-8").splitlines()))[:4]
    mine = tmp_path / "mine.csv"
    with open(mine, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["id", "text", "score"])
        writer.writerow(["a1", rows[0]["text"], "5"])
        writer.writerow(["a2", "", "4"])  # an empty text: still an input row
        writer.writerow(["a3", rows[1]["text"], "3"])
        writer.writerow(["", "   ", ""])  # every cell blank: still a row
    for suffix in (".csv", ".jsonl"):
        out = tmp_path / f"p{suffix}"
        assert cli("predict", "--model", cls_run, "--data", mine, "--output", out) == 0
        got = (
            list(csv.DictReader(out.read_text(encoding="utf-8").splitlines()))
            if suffix == ".csv"
            else [json.loads(line) for line in out.read_text().splitlines()]
        )
        assert [r["id"] for r in got] == ["a1", "a2", "a3", ""]
        assert [r["score"] for r in got] == ["5", "4", "3", ""]  # the input's own score column, as it was
        assert all(0 < float(r["score_1"]) <= 1 for r in got) and all(r["label"] != "" for r in got)
    capsys.readouterr()


def test_predict_refuses_an_output_inside_the_model_folder(cls_run, base, data, tmp_path, capsys):
    """predict --output MODEL/config.json --overwrite (QA writes .json) replaced the model's config.json and so
    destroyed the model: an --output in the folder the model is read from is refused, through links too."""
    model, _, _ = load_model(base, architecture="QuestionAnswering")
    qa = save_model(
        model, tmp_path / "qa", load_model(base)[1], ModelInfo("QuestionAnswering", task={"name": "qa"})
    )
    (tmp_path / "link").symlink_to(qa)
    before = file_snapshot(qa), file_snapshot(cls_run / "model")
    cases = [
        (qa, qa / "config.json"),
        (qa, tmp_path / "link" / "config.json"),
        (tmp_path / "link", qa / "predictions.jsonl"),
        (cls_run, cls_run / "model" / "predictions.jsonl"),
        (cls_run / "model", cls_run / "model" / "sub" / ".." / "predictions.csv"),
    ]
    for model_path, output in cases:
        rc = cli(
            "predict",
            "--model",
            model_path,
            "--data",
            data / "qa_val.jsonl",
            "--output",
            output,
            "--overwrite",
        )
        err = capsys.readouterr().err.strip().splitlines()
        assert rc == 2 and len(err) == 1 and "lies inside the model folder" in err[0], (output, err)
    assert (file_snapshot(qa), file_snapshot(cls_run / "model")) == before
    # next to the model, in the run folder, is fine
    output = cls_run / "predictions.jsonl"
    assert cli("predict", "--model", cls_run, "--data", data / "cls_val.csv", "--output", output) == 0
    output.unlink()


def test_evaluate_and_predict_keep_the_models_regression(cls_run, base, data, tmp_path, capsys):
    """data.regression follows the model's head and cannot change: a classifier evaluated as a regressor crashed
    in the loss (predict wrote scores from its two logits), a regressor read as a classifier crashed in predict or
    said the file's labels were 'not in the training labels []'."""
    rows = [{"text": r["text"], "label": 1.0 if r["label"] == "pos" else -1.0} for r in cls_rows(16, 7)]
    scores = write_csv(tmp_path / "scores.csv", rows)
    reg = tmp_path / "reg"
    rc = cli(
        "finetune", "--task", "classification", "--model", base, "--train", scores, "--validation", scores,
        "--output", reg, "--data.regression", "true", "--train.max_steps", 1, *FAST,
    )  # fmt: skip
    assert rc == 0
    out = tmp_path / "p.jsonl"
    cases = [
        (cls_run, "true", "is a classifier for 2 labels, so data.regression is false and cannot change"),
        (reg, "false", "is a regressor (one output), so data.regression is true and cannot change"),
    ]
    capsys.readouterr()
    for model, value, message in cases:
        for command in (["evaluate"], ["predict", "--output", out]):
            rc = cli(*command, "--model", model, "--data", data / "cls_val.csv", "--data.regression", value)
            err = capsys.readouterr().err.strip().splitlines()
            assert rc == 2 and len(err) == 1 and message in err[0], (command, model, err)
    assert not out.exists()
    # the model's own setting, given again, is fine
    assert cli("evaluate", "--model", reg, "--data", scores, "--data.regression", "true", "--json") == 0
    assert set(last_json(capsys)) == {"pearson", "spearman", "mse", "loss"}


def test_evaluate_and_predict_refuse_a_device_this_machine_lacks(
    cls_run, data, tmp_path, capsys, monkeypatch
):
    """--train.device cuda without a GPU: the one line finetune gives, not an AssertionError from torch."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    out = tmp_path / "p.jsonl"
    for command in (["evaluate"], ["predict", "--output", out]):
        rc = cli(*command, "--model", cls_run, "--data", data / "cls_val.csv", "--train.device", "cuda")
        err = capsys.readouterr().err.strip().splitlines()
        assert rc == 2 and err == [
            "error: train.device cuda: this machine has no CUDA GPU; use auto or cpu"
        ], err
    assert not out.exists()


@pytest.fixture(scope="module")
def ner_model(base, tmp_path_factory) -> Path:
    """An untrained token-classification model (its tags are random but deterministic): enough for predict."""
    from masklm.model.base import build_model
    from masklm.model.io import load_model

    encoder, tok, _ = load_model(base)
    labels = ["B-LOC", "B-PER", "I-PER", "O"]
    torch.manual_seed(0)
    model = build_model("TokenClassification", encoder.cfg, labels)
    info = ModelInfo("TokenClassification", labels=labels, task={"name": "token-classification"})
    return save_model(model, tmp_path_factory.mktemp("ner") / "model", tok, info)


def test_predict_conll_refuses_tokens_it_cannot_hold(ner_model, tmp_path, capsys):
    data = write_jsonl(
        tmp_path / "mine.jsonl", [{"tokens": ["bob"]}, {"tokens": ["alice", "New York", "a\tb"]}]
    )
    out = tmp_path / "mine.conll"
    rc = cli("predict", "--model", ner_model, "--data", data, "--output", out)
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and err[0].startswith("error: "), err
    assert "mine.jsonl: sentence 2 has the token 'a\\tb'" in err[0] and ".jsonl" in err[0]
    assert not out.exists()
    # without the tab the file is written, and read back as it was ("New York": the columns split on tabs)
    write_jsonl(data, [{"tokens": ["bob"]}, {"tokens": ["alice", "New York", "{"]}])
    assert cli("predict", "--model", ner_model, "--data", data, "--output", out) == 0
    assert [
        s["tokens"] for s in ft.get_task("token-classification").read(out, ft.FinetuneDataConfig(), True)
    ] == [
        ["bob"],
        ["alice", "New York", "{"],
    ]


def test_predict_ignores_tags_on_some_lines(ner_model, tmp_path, capsys):
    """Labels are ignored by predict: tags on some JSONL lines only are fine; evaluate still refuses them."""
    rows = [{"tokens": ["alice", "smith"], "tags": ["B-PER", "I-PER"]}, {"tokens": ["paris"]}]
    data = write_jsonl(tmp_path / "mixed.jsonl", rows)
    assert cli("predict", "--model", ner_model, "--data", data, "--output", tmp_path / "p.jsonl") == 0
    predicted = [json.loads(line) for line in (tmp_path / "p.jsonl").read_text().splitlines()]
    assert [p["tokens"] for p in predicted] == [["alice", "smith"], ["paris"]]
    capsys.readouterr()
    assert cli("evaluate", "--model", ner_model, "--data", data) == 2
    assert "has no 'tags' field unlike line 1" in capsys.readouterr().err


# ----------------------------------------------------------------------------------------------------
# Resuming after the training file changed; notes on resume


def _two_step_run(base: str | Path, data: Path, tmp_path: Path) -> tuple[Path, Path]:
    """A 2-step classification run on a copy of the training file: (the copy, the run folder)."""
    train = tmp_path / "train.csv"
    train.write_bytes((data / "cls_train.csv").read_bytes())
    out = tmp_path / "run"
    args = ["finetune", "--task", "classification", "--model", base, "--train", train,
            "--validation", data / "cls_val.csv", "--output", out, "--train.max_steps", 2, *FAST]  # fmt: skip
    assert cli(*args) == 0
    return train, out


def test_resume_refuses_a_changed_label_set(base, data, tmp_path, capsys):
    train, out = _two_step_run(base, data, tmp_path)
    assert yaml.safe_load((out / "config.yaml").read_text())["run"]["labels"] == ["neg", "pos"]
    with open(train, "a", encoding="utf-8") as f:
        f.write("great awful film,mixed\n")
    before = file_snapshot(out)
    capsys.readouterr()
    assert cli("finetune", "--output", out, "--resume", "--train.max_steps", 4) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: "), err
    assert "labels of" in err[0] and "changed since" in err[0] and "added mixed" in err[0]
    assert "another architecture" not in err[0]
    assert file_snapshot(out) == before
    # a run folder from before config.yaml recorded the labels: its best model's labels are compared
    config = yaml.safe_load((out / "config.yaml").read_text())
    del config["run"]["labels"]
    (out / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    assert cli("finetune", "--output", out, "--resume", "--train.max_steps", 4) == 2
    assert "added mixed" in capsys.readouterr().err


def test_resume_refuses_a_training_file_with_other_examples(base, data, tmp_path, capsys):
    """Rows added to the training file (same labels) changed every batch and the steps of an epoch of the
    resumed run, which went on with exit 0."""
    train, out = _two_step_run(base, data, tmp_path)
    lines = train.read_text(encoding="utf-8").splitlines(keepends=True)
    with open(train, "a", encoding="utf-8") as f:
        f.writelines(lines[1:4])
    before = file_snapshot(out)
    capsys.readouterr()
    assert cli("finetune", "--output", out, "--resume", "--train.max_steps", 4) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"error: {train} holds {len(lines) + 2} examples"), err
    assert f"started with {len(lines) - 1}" in err[0] and "restore the training file" in err[0]
    assert file_snapshot(out) == before


def test_resume_keeps_the_notes_of_the_start(base, data, tmp_path, capsys):
    """train.lr left to its default is noted at the start and saved as set: the resumed run's summary keeps the
    note (and the same labels spelled otherwise, "1" for "1.0", are the same label set)."""
    rows = [{"text": r["text"], "label": 1.0 if r["label"] == "pos" else 0.0} for r in cls_rows(48, 3)]
    train = write_jsonl(tmp_path / "train.jsonl", rows)
    out = tmp_path / "run"
    slow = [a for a in FAST if a not in ("--train.lr", "3e-3")]
    args = ["finetune", "--task", "classification", "--model", base, "--train", train,
            "--validation", train, "--output", out, "--train.max_steps", 2, *slow]  # fmt: skip
    assert cli(*args) == 0
    first = json.loads((out / "summary.json").read_text())["notes"]
    assert any(n.startswith("train.lr 0.0003, the default") for n in first)
    assert json.loads((out / "model" / "config.json").read_text())["labels"] == ["0", "1"]
    # as a run started before JSON's 1.0 was read as the label "1" recorded them: the same numbers
    config = yaml.safe_load((out / "config.yaml").read_text())
    config["run"]["labels"] = ["0.0", "1.0"]
    (out / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    assert cli("finetune", "--output", out, "--resume", "--train.max_steps", 4) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["steps"] == 4 and summary["notes"] == first
    assert summary["labels"] == ["0.0", "1.0"]  # the run goes on with the labels it started with


@pytest.mark.parametrize("tmp_left", [True, False], ids=["new-best-in-tmp", "tmp-gone"])
def test_a_kill_between_the_best_models_renames_is_completed_on_resume(tmp_path, tmp_left):
    """_save_best renames RUN/model to .model.old, then .model.tmp (complete) to RUN/model: a kill between the two
    left no RUN/model, and a resumed run compared its evaluations against nothing. BestModel completes the swap."""
    run_dir = tmp_path / "run"
    for name, value in ((".model.old", 0.5), (".model.tmp", 0.75)):
        (run_dir / name).mkdir(parents=True)
        best = {"metric": "accuracy", "value": value, "step": 4}
        (run_dir / name / "config.json").write_text(json.dumps({"best": best}))
    if not tmp_left:
        (run_dir / ".model.tmp" / "config.json").unlink()
        (run_dir / ".model.tmp").rmdir()
    best = ft.BestModel(run_dir, None, None, None, "accuracy", False, 10, resume=True).best
    assert best is not None and best["value"] == (0.75 if tmp_left else 0.5)
    assert sorted(p.name for p in run_dir.iterdir()) == ["model"]


def test_a_first_best_model_cut_while_written_is_not_taken(tmp_path):
    """No RUN/model and no .model.old: the first save was cut while .model.tmp was written; it is not used."""
    run_dir = tmp_path / "run"
    (run_dir / ".model.tmp").mkdir(parents=True)
    assert ft.BestModel(run_dir, None, None, None, "accuracy", False, 10, resume=True).best is None
    assert not (run_dir / "model").exists()


def test_what_a_kill_left_beside_the_best_model_is_deleted_on_resume(tmp_path):
    """RUN/model in place and a .model.old / .model.tmp beside it (a kill after the swap, before its last
    deletion, or while the next best was written): a resumed run keeps RUN/model and deletes the leftovers."""
    run_dir = tmp_path / "run"
    for name, value in (("model", 0.75), (".model.old", 0.5), (".model.tmp", 0.9)):
        (run_dir / name).mkdir(parents=True)
        best = {"metric": "accuracy", "value": value, "step": 4}
        (run_dir / name / "config.json").write_text(json.dumps({"best": best}))
    best = ft.BestModel(run_dir, None, None, None, "accuracy", False, 10, resume=True).best
    assert best is not None and best["value"] == 0.75
    assert sorted(p.name for p in run_dir.iterdir()) == ["model"]


def test_resume_from_another_working_folder(base, data, tmp_path, monkeypatch, capsys):
    """A run started with relative paths could not be resumed from another folder: the recorded paths led
    nowhere, and the same files given from there were refused as others. The run records absolute paths, and a
    path given to --resume may stand for a recorded one that leads nowhere from here (an older run's)."""
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "train.csv").write_bytes((data / "cls_train.csv").read_bytes())
    (tmp_path / "a" / "val.csv").write_bytes((data / "cls_val.csv").read_bytes())
    monkeypatch.chdir(tmp_path / "a")
    args = ["finetune", "--task", "classification", "--model", base, "--train", "train.csv",
            "--validation", "val.csv", "--output", "run", "--train.max_steps", 2, *FAST]  # fmt: skip
    assert cli(*args) == 0
    monkeypatch.chdir(tmp_path)
    assert cli("finetune", "--output", "a/run", "--resume", "--train.max_steps", 3) == 0
    # an older run's relative paths: the files given from here are taken
    config = yaml.safe_load((tmp_path / "a/run/config.yaml").read_text())
    config["run"].update(train="train.csv", validation="val.csv")
    (tmp_path / "a/run/config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    given = ["--train", "a/train.csv", "--validation", "a/val.csv"]
    assert cli("finetune", "--output", "a/run", "--resume", *given, "--train.max_steps", 4) == 0
    # a recorded file that is there and is not the one given is still refused
    (tmp_path / "other.csv").write_bytes((data / "cls_train.csv").read_bytes())
    capsys.readouterr()
    assert (
        cli("finetune", "--output", "a/run", "--resume", "--train", "other.csv", "--train.max_steps", 5) == 2
    )
    assert "with --train" in capsys.readouterr().err


def test_evaluate_json_is_strict_json(monkeypatch, capsys):
    """A metric that is not finite (the correlation of constant predictions) is null in `evaluate --json`: NaN and
    Infinity are not JSON, and strict parsers refuse them."""
    monkeypatch.setattr(
        ft, "evaluate_model", lambda *a: {"pearson": float("nan"), "mse": float("inf"), "x": 0.5}
    )
    assert cli("evaluate", "--model", "m", "--data", "d.csv", "--json") == 0
    out = capsys.readouterr().out.strip()
    assert json.loads(out, parse_constant=lambda c: pytest.fail(f"{c} in {out}")) == {
        "pearson": None,
        "mse": None,
        "x": 0.5,
    }


def test_the_last_line_counts_skipped_steps(monkeypatch, capsys, tmp_path):
    """Steps skipped for a non-finite loss show in finetune's last line, not only in summary.json."""
    summary = {
        "best": {"metric": "pearson", "value": 0.5, "epoch": 1, "step": 4},
        "last_eval": {"pearson": 0.5},
    }
    summary["pearson"] = 0.5
    for skipped, shown in ((0, None), (1, "(1 step skipped: non-finite"), (3, "(3 steps skipped")):
        monkeypatch.setattr(ft, "finetune", lambda *a, n=skipped, **k: {**summary, "skipped_steps": n})
        args = ["--task", "classification", "--model", "m", "--train", "t.csv", "--validation", "v.csv"]
        assert cli("finetune", *args, "--output", tmp_path / "r") == 0
        line = capsys.readouterr().out.strip()
        assert line.startswith("best validation pearson 0.5000") and (
            shown in line if shown else "skipped" not in line
        )


def test_a_finished_run_without_its_best_model_is_not_resumed(cls_run, tmp_path, capsys):
    """RUN/model deleted: resumed, the run took its final weights for the best and wrote "value": NaN."""
    import shutil

    run = tmp_path / "run"
    shutil.copytree(cls_run, run)
    shutil.rmtree(run / "model")
    before = file_snapshot(run)
    capsys.readouterr()
    assert cli("finetune", "--output", run, "--resume") == 2
    err = capsys.readouterr().err
    assert (
        err.count("error:") == 1 and "model (the best model of its evaluations by accuracy) is missing" in err
    )
    assert file_snapshot(run) == before


def test_run_files_hold_strict_json(tmp_path):
    """No evaluation with a finite value: the best "value" is null in config.json and summary.json, not NaN."""
    from masklm.utils import finite_json

    summary = {"best": {"value": float("nan"), "step": 3}, "loss": float("inf"), "x": [1.0, float("-inf")]}
    assert finite_json(summary) == {"best": {"value": None, "step": 3}, "loss": None, "x": [1.0, None]}
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "config.json").write_text(json.dumps({"best": {"metric": "f1", "value": None}}))
    assert ft._best_so_far(tmp_path) is None


def test_resume_refuses_a_training_file_edited_since(base, data, tmp_path, monkeypatch, capsys):
    """Same number of examples and labels, other contents (labels swapped): resumed, the run went on training on
    other data than it started with, silently."""
    train = tmp_path / "train.csv"
    train.write_text((data / "cls_train.csv").read_text())
    args = [
        "finetune", "--task", "classification", "--model", base, "--train", train, "--validation",
        data / "cls_val.csv", "--train.epochs", 2, "--output", tmp_path / "run", *FAST,
    ]  # fmt: skip
    real, calls = ft.task_loss, []

    def interrupted(*a, **k):
        calls.append(1)
        if len(calls) == 3:
            os.kill(os.getpid(), signal.SIGTERM)
        return real(*a, **k)

    monkeypatch.setattr(ft, "task_loss", interrupted)
    assert cli(*args) == 0
    monkeypatch.setattr(ft, "task_loss", real)
    rows = list(csv.DictReader(train.open()))
    labels = sorted({r["label"] for r in rows})
    write_csv(train, [{**r, "label": labels[1 - labels.index(r["label"])]} for r in rows])
    before = file_snapshot(tmp_path / "run")
    capsys.readouterr()
    assert cli(*args, "--resume") == 2
    assert "the examples of" in capsys.readouterr().err
    assert file_snapshot(tmp_path / "run") == before
    train.write_text((data / "cls_train.csv").read_text().replace("\n", "\r\n"))  # the same rows, saved again
    assert cli(*args, "--resume") == 0
