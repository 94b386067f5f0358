"""Multiple choice (SWAG): reading both layouts, batches of choices, fine-tuning through the CLI, predict, export,
and the head's weights taken from other checkpoints."""

from __future__ import annotations

import csv
import json
import random
from pathlib import Path

import pytest
import torch
from helpers import cli, minilm_dir, tiny_model_config, write_csv, write_jsonl
from safetensors.torch import load_file

from masklm.config import FinetuneDataConfig
from masklm.data.tokenizer import train_tokenizer
from masklm.errors import UserError
from masklm.model.heads import MaskedLM, SequenceClassification
from masklm.model.io import ModelInfo, load_model, save_model
from masklm.tasks import get_task
from masklm.tasks.multiple_choice import MultipleChoice, collate_choices, encode_multiple_choice

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py

FILLER = "the a of and to in is was for on with river city north south music team game".split()
KEYS = "red green blue gold".split()
# A tiny encoder overfits 16 examples in a few dozen steps at this learning rate.
FAST = ["--train.lr", "3e-3", "--train.batch_size", "4", "--train.threads", "1"]


def mc_examples(n: int, seed: int, choices: int = 4) -> list[dict]:
    """The context names one of KEYS; the right ending repeats it, the others each name another key."""
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        keys = rng.sample(KEYS, choices)
        words = [rng.choice(FILLER) for _ in range(rng.randint(3, 6))]
        words.insert(rng.randrange(len(words) + 1), keys[0])
        endings = [" ".join([rng.choice(FILLER), k, rng.choice(FILLER)]) for k in keys]
        rng.shuffle(endings)
        label = next(i for i, e in enumerate(endings) if keys[0] in e.split())
        out.append({"context": " ".join(words), "endings": endings, "label": label})
    return out


def swag_rows(examples: list[dict], sent2: str = "") -> list[dict]:
    """The same examples in SWAG's columns (sent2 starts every ending)."""
    rows = []
    for ex in examples:
        row = {"sent1": ex["context"], "sent2": sent2}
        row.update({f"ending{i}": e for i, e in enumerate(ex["endings"])})
        rows.append({**row, "label": ex["label"]})
    return rows


def read(path: Path, labelled: bool = True) -> list[dict]:
    return get_task("multiple-choice").read(path, FinetuneDataConfig(), labelled)


@pytest.fixture(scope="module")
def tok():
    texts = [f"{ex['context']} {' '.join(ex['endings'])}" for ex in mc_examples(200, 99)]
    return train_tokenizer(texts, vocab_size=120)


@pytest.fixture(scope="module")
def base(tmp_path_factory, tok) -> Path:
    """A randomly initialised masklm model folder (MaskedLM: no pooler)."""
    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("base") / "model"
    return save_model(MaskedLM(tiny_model_config(tok.get_vocab_size())), folder, tok, ModelInfo("MaskedLM"))


# ----------------------------------------------------------------------------------------------------
# Reading


def test_reads_jsonl_and_swag_layouts_alike(tmp_path):
    examples = mc_examples(6, 1)
    assert read(write_jsonl(tmp_path / "a.jsonl", examples)) == examples
    assert read(write_csv(tmp_path / "a.csv", swag_rows(examples))) == examples
    assert read(write_csv(tmp_path / "a.tsv", swag_rows(examples), delimiter="\t")) == examples
    assert read(write_jsonl(tmp_path / "swag.jsonl", swag_rows(examples))) == examples

    # SWAG: sent2 starts every choice (as transformers' run_swag); five endings and extra columns are fine
    row = {"video-id": "v1", "sent1": "She opens the door.", "sent2": "She", "ending0": "walks in.",
           "ending1": "flies.", "ending2": "sings.", "ending3": "sits.", "ending4": "waits.", "label": "4"}  # fmt: skip
    (got,) = read(write_csv(tmp_path / "swag.csv", [row]))
    assert got["context"] == "She opens the door."
    assert got["endings"] == ["She walks in.", "She flies.", "She sings.", "She sits.", "She waits."]
    assert got["label"] == 4

    unlabelled = write_jsonl(
        tmp_path / "u.jsonl", [{k: ex[k] for k in ("context", "endings")} for ex in examples]
    )
    assert [ex["label"] for ex in read(unlabelled, labelled=False)] == [None] * 6
    with pytest.raises(UserError, match=r"u\.jsonl:1: has no 'label' field"):
        read(unlabelled)


@pytest.mark.parametrize(
    ("name", "rows", "message"),
    [
        ("jsonl", [{"context": "a", "endings": ["x", "y", "z"], "label": 0},
                   {"context": "b", "endings": ["x", "y"], "label": 1}],
         r"bad\.jsonl:2: has 2 endings, line 1 has 3; give every example"),
        ("jsonl", [{"context": "a", "endings": ["x", "y"], "label": 2}],
         r"bad\.jsonl:1: label 2 is out of range for 2 endings; write the index of the right ending, 0 to 1"),
        ("jsonl", [{"context": "a", "endings": ["x", "y"], "label": 1.5}],
         r"bad\.jsonl:1: label '1\.5' is not an ending index"),
        ("jsonl", [{"context": "a", "endings": ["x", "y"], "label": None}], r"bad\.jsonl:1: has no label"),
        ("jsonl", [{"context": "a", "endings": "x y", "label": 0}],
         r"bad\.jsonl:1: 'endings' is str, expected a list of strings"),
        ("jsonl", [{"context": "a", "endings": ["x"], "label": 0}], r"bad\.jsonl:1: has 1 ending\(s\)"),
        # taken, and then the CSV of its predictions could not be read back by evaluate
        ("jsonl", [{"context": "a", "endings": ["x", " "], "label": 0}], r"bad\.jsonl:1: ending 1 is blank"),
        ("csv", [{"sent2": "", "ending0": "x", "ending1": "y", "label": 0}], r"bad\.csv: has no column 'sent1'"),
        ("csv", [{"sent1": "a", "ending0": "x", "ending1": "y", "label": "-1"}], r"bad\.csv:2: label -1 is out of range"),
        ("csv", [{"text": "a", "label": 0}], r"bad\.csv: has neither an 'endings' nor an 'ending0' column"),
        ("csv", [{"sent1": "a", "sent2": "b", "ending0": "x", "ending1": "y", "ending2": "z", "label": 0},
                 {"sent1": "a", "sent2": "b", "ending0": "x", "ending1": "y", "ending2": " ", "label": 1}],
         r"bad\.csv:3: ending2 is blank; give every example of a file the same number of endings"),
        # the endings were read up to the gap: ending3 was left out and the set trained as 2 choices
        ("csv", [{"sent1": "a", "sent2": "b", "ending0": "x", "ending1": "y", "ending3": "z", "label": 0}],
         r"bad\.csv: has column ending3 but no ending2; number the ending columns ending0, ending1, \.\.\. without a gap"),
    ],
    ids=["ending-count", "label-range", "label-float", "label-null", "endings-str", "one-ending", "blank-ending",
         "no-sent1", "negative-label", "no-layout", "swag-blank-ending", "swag-ending-gap"],
)  # fmt: skip
def test_bad_inputs_are_one_line_errors(tmp_path, name, rows, message):
    path = tmp_path / f"bad.{name}"
    write_jsonl(path, rows) if name == "jsonl" else write_csv(path, rows)
    with pytest.raises(UserError, match=message) as e:
        read(path)
    assert "\n" not in str(e.value)


# ----------------------------------------------------------------------------------------------------
# Encoding and batches


def test_choices_are_encoded_as_pairs_and_batched_as_batch_choices_tokens(tok):
    examples = [
        {"context": "red river city", "endings": ["the red team", "a blue game", "gold"], "label": 2},
        {"context": "north", "endings": ["of", "the green music team of the south", "and"], "label": 0},
    ]
    features = encode_multiple_choice(tok, examples, max_length=64)
    for ex, f in zip(examples, features):  # untruncated: BERT's own pair layout
        pairs = [tok.encode(ex["context"], e) for e in ex["endings"]]
        assert f["input_ids"] == [p.ids for p in pairs] and f["token_type_ids"] == [p.type_ids for p in pairs]
        assert f["labels"] == ex["label"]

    batch = collate_choices(features, pad_id=0)
    lengths = [[len(ids) for ids in f["input_ids"]] for f in features]
    longest = max(max(row) for row in lengths)
    for key in ("input_ids", "attention_mask", "token_type_ids"):
        assert batch[key].shape == (2, 3, longest), key
    assert batch["attention_mask"].sum(-1).tolist() == lengths
    assert batch["labels"].tolist() == [2, 0]
    assert (batch["input_ids"][batch["attention_mask"] == 0] == 0).all()  # padding
    assert (batch["token_type_ids"][batch["attention_mask"] == 0] == 0).all()

    short = encode_multiple_choice(tok, examples, max_length=8)  # longest-first: the longer side is cut
    assert all(len(ids) <= 8 for f in short for ids in f["input_ids"])
    sep = tok.token_to_id("[SEP]")
    choice = short[1]["input_ids"][1]  # "north" (1 token) + a 7-word ending: only the ending is cut
    assert choice[:3] == [tok.token_to_id("[CLS]"), *tok.encode("north", add_special_tokens=False).ids, sep]
    assert "labels" not in encode_multiple_choice(tok, [{**examples[0], "label": None}], 64)[0]


# ----------------------------------------------------------------------------------------------------
# Fine-tuning, evaluate, predict, export


@pytest.fixture(scope="module")
def mc_run(tmp_path_factory, base) -> tuple[Path, Path]:
    """`masklm finetune --task multiple-choice` on 16 examples, validated on the same file (overfitting)."""
    folder = tmp_path_factory.mktemp("mc")
    train = write_jsonl(folder / "train.jsonl", mc_examples(16, 1))
    out = folder / "run"
    rc = cli(
        "finetune", "--task", "multiple-choice", "--model", base, "--train", train, "--validation", train,
        "--output", out, "--train.epochs", 40, *FAST,
    )  # fmt: skip
    assert rc == 0
    return out, train


def test_overfits_a_tiny_set_and_predictions_round_trip(mc_run, tmp_path, capsys):
    run, train = mc_run
    summary = json.loads((run / "summary.json").read_text())
    assert summary["accuracy"] == 1.0 and summary["best"]["metric"] == "accuracy"
    assert summary["task"] == "multiple-choice" and summary["labels"] is None
    assert set(summary["last_eval"]) == {"accuracy", "loss"}
    saved = json.loads((run / "model" / "config.json").read_text())
    assert saved["architecture"] == "MultipleChoice" and saved["task"]["name"] == "multiple-choice"
    assert any(
        "MultipleChoice head initialised from scratch" in n and "pooler" in n for n in summary["notes"]
    )

    capsys.readouterr()
    assert cli("evaluate", "--model", run, "--data", train, "--json") == 0
    metrics = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert metrics == pytest.approx({k: summary[k] for k in ("accuracy", "loss")})

    gold = [json.loads(line) for line in train.read_text().splitlines()]
    unlabelled = write_jsonl(tmp_path / "u.jsonl", [{k: g[k] for k in ("context", "endings")} for g in gold])
    assert cli("predict", "--model", run, "--data", unlabelled, "--output", tmp_path / "p.jsonl") == 0
    rows = [json.loads(line) for line in (tmp_path / "p.jsonl").read_text().splitlines()]
    right = sum(r["label"] == g["label"] for r, g in zip(rows, gold))
    assert right / len(gold) == metrics["accuracy"]
    for r, g in zip(rows, gold):
        assert r["context"] == g["context"] and r["endings"] == g["endings"]
        assert len(r["scores"]) == 4 and sum(r["scores"]) == pytest.approx(1, abs=1e-4)
        assert max(r["scores"]) == r["scores"][r["label"]]

    # CSV predictions are in the SWAG layout, with a score per ending; evaluate reads them back
    assert cli("predict", "--model", run, "--data", unlabelled, "--output", tmp_path / "p.csv") == 0
    with open(tmp_path / "p.csv", newline="") as f:
        table = list(csv.DictReader(f))
    assert list(table[0]) == ["sent1", "sent2", "ending0", "ending1", "ending2", "ending3", "label",
                              "score0", "score1", "score2", "score3"]  # fmt: skip
    assert [int(r["label"]) for r in table] == [r["label"] for r in rows]
    capsys.readouterr()
    assert cli("evaluate", "--model", run, "--data", tmp_path / "p.csv", "--json") == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["accuracy"] == metrics["accuracy"]


def test_fine_tuned_run_exports_to_bert_for_multiple_choice(mc_run, tok, tmp_path):
    transformers = pytest.importorskip("transformers")
    run, train = mc_run
    assert cli("export", run, tmp_path / "hf", "--format", "hf") == 0  # with the export's own parity check
    hf = transformers.AutoModelForMultipleChoice.from_pretrained(str(tmp_path / "hf")).eval()
    assert type(hf).__name__ == "BertForMultipleChoice"

    examples = read(train)[:5]
    batch = collate_choices(encode_multiple_choice(tok, examples, 64), pad_id=tok.token_to_id("[PAD]"))
    labels = batch.pop("labels")
    model, _, _ = load_model(run)
    with torch.no_grad():
        ours, theirs = model.eval()(**batch), hf(**batch).logits
    assert ours.shape == (5, 4) and (ours - theirs).abs().max().item() < 1e-5
    assert theirs.argmax(-1).tolist() == labels.tolist()


# ----------------------------------------------------------------------------------------------------
# Starting weights


def test_head_keeps_the_pooler_of_a_hugging_face_bert_folder():
    folder = minilm_dir()
    model, _, info = load_model(folder, architecture="MultipleChoice")
    assert isinstance(model, MultipleChoice)
    weights = load_file(str(folder / "model.safetensors"))
    assert torch.equal(model.pooler.weight, weights["pooler.dense.weight"])
    assert torch.equal(model.pooler.bias, weights["pooler.dense.bias"])
    assert any("new: classifier)" in n for n in info.notes)  # only the classifier starts fresh


def test_head_keeps_the_pooler_of_a_classifier_not_of_a_masked_lm(tmp_path, tok, base):
    torch.manual_seed(3)
    classifier = SequenceClassification(tiny_model_config(tok.get_vocab_size()), num_labels=3)
    folder = save_model(
        classifier, tmp_path / "cls", tok, ModelInfo("SequenceClassification", labels=list("abc"))
    )
    model, _, info = load_model(folder, architecture="MultipleChoice")
    assert torch.equal(model.pooler.weight, classifier.pooler.weight)
    assert torch.equal(model.encoder.embeddings.word.weight, classifier.encoder.embeddings.word.weight)
    assert model.classifier.weight.shape == (1, 32) and "new: classifier)" in info.notes[-1]

    _, _, from_mlm = load_model(base, architecture="MultipleChoice")
    assert "new: classifier, pooler)" in from_mlm.notes[-1]


def test_the_head_is_found_without_importing_the_task_first():
    """`load_model(folder)` of a multiple-choice model in a fresh interpreter said "unknown architecture" unless
    masklm.tasks had been imported (the task module defines the head)."""
    import subprocess
    import sys

    code = "from masklm.model.base import head_class; print(head_class('MultipleChoice').__name__)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "MultipleChoice"
