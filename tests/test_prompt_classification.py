"""Prompt-based classification (`--task prompt-classification`): a template with one [MASK], a word per label, the
labels' scores read off the MLM head. Round trip on a tiny model, the scores against a direct computation, the
template kept whole under truncation, and one clear line for each kind of bad setting."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml
from helpers import cli, file_snapshot, keyword_rows, tiny_model_config, write_csv

from masklm.config import FinetuneDataConfig
from masklm.data.tokenizer import train_tokenizer
from masklm.model.heads import MaskedLM
from masklm.model.io import ModelInfo, load_model, save_model
from masklm.tasks import get_task, task_of_architecture

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py

FILLER = [
    "the",
    "a",
    "of",
    "and",
    "to",
    "in",
    "is",
    "was",
    "for",
    "on",
    "with",
    "film",
    "team",
    "music",
    "river",
]
PROMPT = "{text} it was [MASK] ."
WORDS = "neg=awful,pos=great"
FAST = ["--train.lr", "3e-3", "--train.batch_size", "16", "--train.threads", "1"]


def rows(n: int, seed: int) -> list[dict]:
    return keyword_rows(n, seed, FILLER)


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("data")
    write_csv(d / "train.csv", rows(64, 1))
    write_csv(d / "val.csv", rows(32, 2))
    return d


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> Path:
    """A randomly initialised MaskedLM whose tokenizer has "great", "awful", "it" and "was" as tokens."""
    tok = train_tokenizer(
        [r["text"] + " it was great . it was awful ." for r in rows(200, 99)], vocab_size=200
    )
    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("base") / "model"
    save_model(MaskedLM(tiny_model_config(tok.get_vocab_size())), folder, tok, ModelInfo("MaskedLM"))
    return folder


def settings(**changes) -> FinetuneDataConfig:
    return FinetuneDataConfig(**{"prompt": PROMPT, "label_words": WORDS, "max_length": 32, **changes})


def test_round_trip_keeps_a_masked_lm_with_its_template(base, data, tmp_path, capsys):
    out = tmp_path / "run"
    rc = cli(
        "finetune", "--task", "prompt-classification", "--model", base, "--train", data / "train.csv",
        "--validation", data / "val.csv", "--output", out, "--train.epochs", 20,
        "--data.prompt", PROMPT, "--data.label_words", WORDS, *FAST,
    )  # fmt: skip
    assert rc == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["accuracy"] == 1.0
    saved = json.loads((out / "model" / "config.json").read_text())
    assert saved["architecture"] == "MaskedLM" and saved["labels"] == ["neg", "pos"]
    assert saved["task"]["name"] == "prompt-classification"
    assert saved["task"]["data"]["prompt"] == PROMPT and saved["task"]["data"]["label_words"] == WORDS
    assert yaml.safe_load((out / "config.yaml").read_text())["run"]["task"] == "prompt-classification"

    capsys.readouterr()
    assert cli("evaluate", "--model", out, "--data", data / "val.csv", "--json") == 0
    metrics = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert metrics == pytest.approx({k: summary[k] for k in metrics})

    texts = write_csv(tmp_path / "texts.csv", [{"text": r["text"]} for r in rows(32, 2)])
    assert cli("predict", "--model", out, "--data", texts, "--output", tmp_path / "p.csv") == 0
    predicted = (tmp_path / "p.csv").read_text().splitlines()[1:]
    assert [line.rsplit(",", 2)[-2] for line in predicted] == [r["label"] for r in rows(32, 2)]

    # the fine-tuned model is still a masked LM: fill-mask reads the label word off the template
    capsys.readouterr()
    assert cli("fill-mask", out / "model", "a river film great it was [MASK] .", "--top-k", "1") == 0
    assert "great" in capsys.readouterr().out

    # its Hugging Face export (a BertForMaskedLM) evaluates as the model does: the labels come back from id2label
    # (an AssertionError traceback before)
    assert cli("export", out, tmp_path / "hf", "--format", "hf") == 0
    capsys.readouterr()
    assert cli("evaluate", "--model", tmp_path / "hf", "--data", data / "val.csv", "--json") == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1]) == pytest.approx(metrics)


def test_scores_are_the_mlm_logits_of_the_label_words_at_the_mask(base):
    task = get_task("prompt-classification")
    model, tok, _ = load_model(base)
    model.eval()
    examples = [{"text": r["text"], "text_pair": None, "label": r["label"]} for r in rows(5, 3)]
    labels = ["neg", "pos"]
    features = task.encode(tok, examples, settings(), labels, Path("x.csv"), labelled=True)
    batch = task.collate(features, pad_id=0)
    with torch.no_grad():
        scores = task.forward(model, batch)  # (B, 2)
        full = model(batch["input_ids"], batch["attention_mask"])  # (B, T, V): every position
    words = [tok.token_to_id("awful"), tok.token_to_id("great")]
    mask = tok.token_to_id("[MASK]")
    for row, f in enumerate(features):
        assert f["input_ids"][f["prompt_position"]] == mask and f["input_ids"].count(mask) == 1
        assert torch.allclose(scores[row], full[row, f["prompt_position"], words], atol=1e-5)
    assert [f["labels"] for f in features] == [labels.index(ex["label"]) for ex in examples]


def test_a_long_text_is_cut_and_the_template_kept(base):
    task = get_task("prompt-classification")
    _, tok, _ = load_model(base)
    long = {"text": " ".join(["the film"] * 40), "text_pair": None, "label": None}
    (f,) = task.encode(tok, [long], settings(max_length=16), ["neg", "pos"], Path("x.csv"), labelled=False)
    tail = tok.encode("it was [MASK] .", add_special_tokens=False).ids
    assert len(f["input_ids"]) == 16 and f["input_ids"][-1 - len(tail) : -1] == tail
    assert f["input_ids"][f["prompt_position"]] == tok.token_to_id("[MASK]")


def test_plain_classification_refuses_a_prompt(base, data, tmp_path, capsys):
    flags = ["--data.prompt", PROMPT, "--data.label_words", WORDS, "--train.epochs", 1, *FAST]
    rc = cli(
        "finetune", "--task", "classification", "--model", base, "--train", data / "train.csv",
        "--validation", data / "val.csv", "--output", tmp_path / "run", *flags,
    )  # fmt: skip
    assert rc == 2 and "--task prompt-classification" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


def test_a_pretraining_run_is_not_taken_for_a_prompt_classifier():
    assert task_of_architecture("MaskedLM") is None
    assert task_of_architecture("SequenceClassification").name == "classification"


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        ([], "needs a template"),
        (["--data.prompt", "{text} it was good .", "--data.label_words", WORDS], "[MASK] exactly once"),
        (["--data.prompt", "[MASK] {text} [MASK]", "--data.label_words", WORDS], "[MASK] exactly once"),
        (["--data.prompt", "it was [MASK] ."], "must contain {text} once"),
        (["--data.prompt", "{text} ? [MASK] , {text_pair}"], "must contain {text_pair} not at all"),
        (["--data.prompt", PROMPT, "--data.label_words", "neg=awful"], "label 'pos'"),
        (["--data.prompt", PROMPT, "--data.label_words", "neg=awful,pos=great,meh=was"], "names label 'meh'"),
        (["--data.prompt", PROMPT, "--data.label_words", "neg=awful,pos=awful"], "several labels"),
        (
            ["--data.prompt", PROMPT, "--data.label_words", "neg=awful,pos=AWFUL"],
            "are the same token (awful)",
        ),
        (["--data.prompt", PROMPT, "--data.label_words", "neg awful,pos=great"], "is not LABEL=WORD"),
        (["--data.prompt", PROMPT, "--data.label_words", "neg=awful,pos=splendiferous"], "one token"),
        (["--data.prompt", PROMPT, "--data.label_words", "neg=awful,pos=zzz"], "one token"),
        (["--data.prompt", PROMPT, "--data.label_words", "neg=awful,pos=[MASK]"], "[MASK], a special token"),
        (["--data.prompt", PROMPT, "--data.label_words", '{"neg": "awful", "pos": 3}'], "to one word"),
        (
            ["--data.prompt", PROMPT, "--data.label_words", '{"neg": "awful", "pos": "great"'],
            "not a valid JSON",
        ),
        (
            ["--data.prompt", PROMPT, "--data.label_words", '{"neg": "awful", "neg": "great"}'],
            "label 'neg' twice",
        ),
        (["--data.prompt", PROMPT, "--data.label_words", WORDS, "--data.regression", "true"], "not scores"),
        (["--data.prompt", PROMPT, "--data.label_words", WORDS, "--head.pooling", "mean"], "head.pooling"),
        (["--data.prompt", PROMPT, "--data.label_words", WORDS, "--head.pooling", "cls"], "head.pooling"),
    ],
)
def test_bad_settings_one_line_exit_2_nothing_written(base, data, tmp_path, capsys, flags, message):
    out = tmp_path / "run"
    before = file_snapshot(base)
    rc = cli(
        "finetune", "--task", "prompt-classification", "--model", base, "--train", data / "train.csv",
        "--validation", data / "val.csv", "--output", out, "--train.epochs", 1, *FAST, *flags,
    )  # fmt: skip
    err = capsys.readouterr().err.strip()
    assert rc == 2 and message in err and len(err.splitlines()) == 1, err
    assert not out.exists() and file_snapshot(base) == before


def test_label_words_as_json_name_labels_with_commas_and_equals():
    from masklm.tasks.prompt_classification import parse_label_words

    spec = '{"bad, really": "awful", "a=b": "great"}'
    assert parse_label_words(spec) == {"bad, really": "awful", "a=b": "great"}
    assert parse_label_words("neg=awful, pos = great") == {"neg": "awful", "pos": "great"}


def test_onnx_export_of_a_prompt_classifier_says_how_to_read_its_labels(base, tmp_path):
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    from masklm.export import export_model

    model, tok, _ = load_model(base)
    task = {"name": "prompt-classification", "data": {"prompt": PROMPT, "label_words": "pos=great,neg=awful"}}
    folder = tmp_path / "prompt_model"
    save_model(model, folder, tok, ModelInfo("MaskedLM", labels=["neg", "pos"], task=task))
    out = export_model(folder, tmp_path / "onnx", "onnx")
    config = json.loads((out / "config.json").read_text())
    assert config["labels"] == ["neg", "pos"]
    assert config["prompt"] == {
        "template": PROMPT,
        "label_words": ["awful", "great"],
        "label_token_ids": [tok.token_to_id("awful"), tok.token_to_id("great")],
    }
    plain = export_model(base, tmp_path / "onnx_plain", "onnx")  # a pretraining run: no read-out
    assert "prompt" not in json.loads((plain / "config.json").read_text())
