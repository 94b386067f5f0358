"""masklm score: pseudo-log-likelihood against a direct per-token computation, the word-level variant, batching
invariance and minimal-pair accuracy."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import tokenizers
import torch
from helpers import cli, random_inputs, tiny_model_config, write_jsonl

from masklm.data.tokenizer import all_special_ids, train_tokenizer
from masklm.errors import UserError
from masklm.infer.fill_mask import FillMask
from masklm.infer.score import Scorer, encode_sentences
from masklm.model.heads import MaskedLM
from masklm.model.io import ModelInfo, load_model, save_model

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py

TRAIN_TEXT = ["the cat sleeps on the mat", "a dog runs in the park", "the cats sleep", "dogs run"] * 20
# Words the 80-token vocabulary has never seen whole, so they split into several pieces.
SENTENCES = [
    "the cat sleeps .",
    "the dogs runs in the parkland",
    "a catamaran sleeps",
    "dogmatic cats run on mats",
    "the",
]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    tok = train_tokenizer(TRAIN_TEXT, vocab_size=80)
    torch.manual_seed(3)
    folder = tmp_path_factory.mktemp("score") / "model"
    save_model(MaskedLM(tiny_model_config(tok.get_vocab_size())), folder, tok, ModelInfo("MaskedLM"))
    return folder


def direct_pll(scorer: Scorer, model: torch.nn.Module, sentence: str, word_level: bool) -> float:
    """Each token masked in its own forward pass of the whole sequence (no labels, no batching), summed."""
    enc = encode_sentences(scorer.tokenizer, [sentence], scorer.max_len)[0]
    total = 0.0
    for p, word in enumerate(enc.words):
        if word is None:
            continue
        ids = torch.tensor([enc.ids])
        ids[0, p] = scorer.mask_id
        if word_level:
            for q in range(p + 1, len(enc.ids)):
                if enc.words[q] == word:
                    ids[0, q] = scorer.mask_id
        with torch.no_grad():
            logits = model(ids)  # (1, T, V)
        total += float(logits[0, p].log_softmax(-1)[enc.ids[p]])
    return total


@pytest.fixture(scope="module")
def loaded(model_dir):
    from masklm.model.io import load_model

    model, _, _ = load_model(model_dir, "MaskedLM")
    return Scorer.load(model_dir), model.eval()


@pytest.mark.parametrize("word_level", [False, True])
def test_pll_equals_direct_computation(loaded, word_level):
    scorer, model = loaded
    got = scorer.score(SENTENCES, word_level=word_level)
    for sentence, score in zip(SENTENCES, got):
        assert score.pll == pytest.approx(direct_pll(scorer, model, sentence, word_level), abs=1e-4)
        assert score.tokens == len(encode_sentences(scorer.tokenizer, [sentence], 64)[0].ids) - 2


@pytest.mark.parametrize(
    "overrides",
    [{}, {"norm": "pre", "position": "rotary", "ffn": "geglu", "bias": False}, {"embedding_size": 16}],
    ids=["bert", "modern", "factorised"],
)
def test_logits_at_one_position_per_row_equal_the_full_forward(overrides):
    """What scoring reads (the last layer run at one query per row) against every position's logits, with
    padded rows and each encoder variant (pre-LN's final norm, rotary queries, an embedding projection)."""
    torch.manual_seed(0)
    model = MaskedLM(tiny_model_config(50, **overrides)).eval()
    inputs = random_inputs(50, (9, 6, 9, 4), second_segment=99, seed=1)
    ids, mask = inputs["input_ids"], inputs["attention_mask"]
    positions = torch.tensor([0, 5, 8, 2])
    with torch.no_grad():
        full = model(ids, mask)[torch.arange(4), positions]  # (4, V)
        got = model.logits_at(ids, mask, positions)
    assert got.shape == full.shape and torch.allclose(got, full, atol=1e-5)
    assert not torch.allclose(got, model.logits_at(ids, mask, torch.tensor([1, 5, 8, 2])), atol=1e-3)


@pytest.mark.parametrize(
    "overrides", [{}, {"norm": "pre", "position": "rotary"}], ids=["bert", "pre-LN rotary"]
)
def test_masked_copies_share_the_first_layers_projections(overrides, monkeypatch):
    """A batch of a sentence's masked copies projects each distinct (token, position) once in the first layer
    (the original's n tokens and [MASK] at each scored position), with the same logits as projecting every row."""
    from masklm.model.encoder import Block

    torch.manual_seed(0)
    model = MaskedLM(tiny_model_config(50, **overrides)).eval()
    sentence = [2, 11, 12, 13, 14, 15, 3]  # [CLS] five tokens [SEP]
    ids = torch.tensor([sentence] * 5)
    positions = torch.arange(1, 6)
    ids[torch.arange(5), positions] = 4  # [MASK]
    rows = []
    projections = Block.projections
    monkeypatch.setattr(Block, "projections", lambda self, x: rows.append(x.shape[0]) or projections(self, x))
    with torch.no_grad():
        got = model.logits_at(ids, None, positions)
        full = model(ids)[torch.arange(5), positions]
    assert rows == [len(sentence) + 5]
    assert torch.allclose(got, full, atol=1e-5)


def test_a_hugging_face_folder_scores_as_transformers_does(model_dir, tmp_path):
    """The model exported as BertForMaskedLM: masklm's PLL of the HF folder equals a per-token loop in transformers."""
    transformers = pytest.importorskip("transformers")
    from masklm.export import export_model

    hf = export_model(model_dir, tmp_path / "hf", "hf", check=False)
    scorer = Scorer.load(hf)
    bert = transformers.BertForMaskedLM.from_pretrained(str(hf)).eval()
    for sentence, got in zip(SENTENCES, scorer.score(SENTENCES)):
        enc = encode_sentences(scorer.tokenizer, [sentence], scorer.max_len)[0]
        total = 0.0
        for p in range(1, len(enc.ids) - 1):
            ids = torch.tensor([enc.ids])
            ids[0, p] = scorer.mask_id
            with torch.no_grad():
                total += float(bert(input_ids=ids).logits[0, p].log_softmax(-1)[enc.ids[p]])
        assert got.pll == pytest.approx(total, abs=1e-4)


def test_word_level_differs_on_words_of_several_pieces(loaded):
    scorer, _ = loaded
    encoded = encode_sentences(scorer.tokenizer, SENTENCES, scorer.max_len)
    split = [
        any(e.words.count(w) > 1 for w in set(e.words) if w is not None) for e in encoded
    ]  # a word of 2+ pieces
    assert any(split) and not all(split)
    plain, word = scorer.score(SENTENCES), scorer.score(SENTENCES, word_level=True)
    for s, a, b in zip(split, plain, word):
        if s:
            assert a.pll != pytest.approx(b.pll, abs=1e-6)
        else:
            assert a.pll == pytest.approx(b.pll, abs=1e-5)


def test_batching_invariance(model_dir):
    one_row = Scorer.load(model_dir, token_budget=1).score(SENTENCES * 3, word_level=True)
    big = Scorer.load(model_dir, token_budget=100_000).score(SENTENCES * 3, word_level=True)
    mid = Scorer.load(model_dir, token_budget=40).score(SENTENCES * 3, word_level=True)
    for a, b, c in zip(one_row, big, mid):
        assert a.pll == pytest.approx(b.pll, abs=1e-4) and a.pll == pytest.approx(c.pll, abs=1e-4)


def test_minimal_pair_accuracy_per_group(loaded, model_dir, tmp_path, capsys):
    scorer, _ = loaded
    pairs = [
        {"sentence_good": "the cat sleeps", "sentence_bad": "the cat sleep", "group": "agreement"},
        {"sentence_good": "the cats sleep", "sentence_bad": "the cats sleeps", "group": "agreement"},
        {"sentence_good": "dogs run", "sentence_bad": "dogs runs", "group": "agreement"},
        {
            "sentence_good": "a dog runs in the park",
            "sentence_bad": "a dog in the park runs",
            "group": "order",
        },
        {
            "sentence_good": "the cat sleeps on the mat",
            "sentence_bad": "mat the on sleeps cat the",
            "group": "order",
        },
    ]
    sentences = [s for p in pairs for s in (p["sentence_good"], p["sentence_bad"])]
    scores = {s: sc.pll for s, sc in zip(sentences, scorer.score(sentences))}
    wins = {"agreement": [], "order": []}
    for p in pairs:
        wins[p["group"]].append(scores[p["sentence_good"]] > scores[p["sentence_bad"]])
    assert cli("score", model_dir, "--data", write_jsonl(tmp_path / "pairs.jsonl", pairs), "--json") == 0
    out = json.loads(capsys.readouterr().out)
    assert out["pairs"] == 5
    assert out["accuracy"] == pytest.approx(sum(sum(w) for w in wins.values()) / 5)
    for group, w in wins.items():
        assert out["groups"][group] == {"accuracy": pytest.approx(sum(w) / len(w)), "pairs": len(w)}


def test_groups_never_meet_the_overall_line(loaded, model_dir, tmp_path, capsys):
    """Pairs without a group count in the overall accuracy only (no "all" row to collide with a group called
    "all"); group names print quoted, so a group called "overall" is not the overall line; numbers name groups as
    JSON writes them."""
    scorer, _ = loaded
    sentences = [
        "the cat sleeps",
        "the cat sleep",
        "dogs run",
        "dogs runs",
        "the cats sleep",
        "the cats sleeps",
    ]
    pairs = [
        {"sentence_good": sentences[0], "sentence_bad": sentences[1], "group": "all"},
        {"sentence_good": sentences[2], "sentence_bad": sentences[3], "group": "overall"},
        {"sentence_good": sentences[4], "sentence_bad": sentences[5], "group": 7},
        {"sentence_good": sentences[0], "sentence_bad": sentences[3]},
        {"sentence_good": sentences[2], "sentence_bad": sentences[1], "group": None},
    ]
    scores = [sc.pll for sc in scorer.score(sentences)]
    win = [scores[0] > scores[1], scores[2] > scores[3], scores[4] > scores[5], scores[0] > scores[3]]
    win.append(scores[2] > scores[1])
    data = write_jsonl(tmp_path / "pairs.jsonl", pairs)
    assert cli("score", model_dir, "--data", data, "--json") == 0
    out = json.loads(capsys.readouterr().out)
    assert out["groups"] == {
        "7": {"accuracy": float(win[2]), "pairs": 1},
        "all": {"accuracy": float(win[0]), "pairs": 1},
        "overall": {"accuracy": float(win[1]), "pairs": 1},
    }
    assert (
        out["pairs"] == 5 and out["ungrouped_pairs"] == 2 and out["accuracy"] == pytest.approx(sum(win) / 5)
    )
    assert cli("score", model_dir, "--data", data) == 0
    lines = [line.split() for line in capsys.readouterr().out.splitlines()]
    assert [line[0] for line in lines] == ['"7"', '"all"', '"overall"', "overall"]
    assert lines[-1][1:] == [f"{sum(win) / 5:.4f}", "(5", "pairs,", "2", "in", "no", "group)"]


@pytest.mark.parametrize("group", ["[1]", '{"a": 1}', "true", '"  "'])
def test_a_group_that_is_no_name_is_refused(model_dir, tmp_path, capsys, group):
    data = tmp_path / "pairs.jsonl"
    data.write_text('{"sentence_good": "a cat", "sentence_bad": "cat a"}\n')
    with open(data, "a") as f:
        f.write(f'{{"sentence_good": "a dog", "sentence_bad": "dog a", "group": {group}}}\n')
    assert cli("score", model_dir, "--data", data) == 2
    err = capsys.readouterr().err
    assert f'{data}:2: "group" is' in err and err.count("\n") == 1, err


def test_fill_mask_never_proposes_special_tokens(model_dir):
    """A model that puts most of its probability on [CLS], [PAD] and [MASK] still answers with real tokens, at the
    model's own probabilities (a softmax over the whole vocabulary)."""
    model, tok, _ = load_model(model_dir)
    specials = [tok.token_to_id(t) for t in ("[CLS]", "[PAD]", "[MASK]")]
    with torch.no_grad():
        model.decoder_bias[specials] += 20.0
    fm = FillMask(model, tok, dtype="float32")
    answers = fm("the [MASK] sleeps", top_k=1000)[0]
    ids = [a["token_id"] for a in answers]
    assert not set(ids) & set(all_special_ids(tok)) and len(ids) == tok.get_vocab_size() - 5
    assert 0 < sum(a["score"] for a in answers) < 0.01  # the specials hold the rest
    assert [a["score"] for a in answers] == sorted((a["score"] for a in answers), reverse=True)


def test_fill_mask_names_the_text_that_has_no_mask(model_dir, capsys):
    """With several texts, the one without [MASK] is named (as the server names inputs[1]); nothing is printed."""
    assert cli("fill-mask", model_dir, "the [MASK] sleeps", "no mask here", "a [mask] runs") == 2
    captured = capsys.readouterr()
    assert captured.err.startswith("error: text 2: the text has no [MASK] token") and not captured.out
    assert cli("fill-mask", model_dir, "the [MASK] sleeps", "the cat [mask]") == 2
    assert "text 2: the text has no [MASK] token ('[mask]' is not it" in capsys.readouterr().err
    assert cli("fill-mask", model_dir, "the cat \uff3bMASK\uff3d") == 2  # full-width brackets
    assert "('\uff3bMASK\uff3d' is not it: the mask token is [MASK]" in capsys.readouterr().err


def test_fill_mask_reads_its_texts_from_a_file(model_dir, tmp_path, capsys):
    """--data FILE: one text a line, blank lines skipped, the answers those of the same texts on the command line;
    a line without [MASK] is named by its line number; texts and --data together (or neither) are refused."""
    texts = ["alpha [MASK] charlie", "[MASK] bravo"]
    path = tmp_path / "texts.txt"
    path.write_text(f"{texts[0]}\n\n{texts[1]}\n", encoding="utf-8")
    capsys.readouterr()
    assert cli("fill-mask", model_dir, *texts, "--json") == 0
    direct = json.loads(capsys.readouterr().out)
    assert cli("fill-mask", model_dir, "--data", path, "--json") == 0
    assert json.loads(capsys.readouterr().out) == direct
    # texts on both sides of an option (argparse leaves those after it over)
    assert cli("fill-mask", model_dir, texts[0], "--json", texts[1]) == 0
    assert json.loads(capsys.readouterr().out) == direct
    assert cli("fill-mask", model_dir, "--top-k", 5, *texts, "--json") == 0
    assert json.loads(capsys.readouterr().out) == direct
    path.write_text(f"{texts[0]}\nno mask here\n", encoding="utf-8")
    assert cli("fill-mask", model_dir, "--data", path) == 2
    assert f"{path}:2: the text has no [MASK]" in capsys.readouterr().err
    for argv in (["--data", path, texts[0]], []):
        assert cli("fill-mask", model_dir, *argv) == 2
        assert "not both or neither" in capsys.readouterr().err


def test_sentence_file_json_and_text(loaded, model_dir, tmp_path, capsys):
    scorer, _ = loaded
    data = tmp_path / "sentences.txt"
    data.write_text("\n".join(SENTENCES[:3]) + "\n\n")
    assert cli("score", model_dir, "--data", data, "--json", "--word-level") == 0
    out = json.loads(capsys.readouterr().out)
    expected = scorer.score(SENTENCES[:3], word_level=True)
    assert [r["sentence"] for r in out["sentences"]] == SENTENCES[:3]
    assert [r["pll"] for r in out["sentences"]] == pytest.approx([e.pll for e in expected], abs=1e-5)
    assert cli("score", model_dir, "--data", data) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 3 and lines[0].endswith(SENTENCES[0])


@pytest.mark.parametrize(
    "content, message",
    [
        ("", "is empty"),
        ('{"sentence_good": "the cat"}\n', "sentence_bad"),
        ('{"sentence_good": "a", "sentence_bad": "b"}\nnot json\n', "not a JSON object"),
        ("word " * 100, "above the model's limit"),
        (
            '{"sentence_god": "a", "sentence_bad": "b"}\n',
            '"sentence_good" is missing',
        ),  # not sentences to score
        ('{"text": "a"}\n', '"sentence_good" is missing'),
        ("the cat\n\u200b\n", "line 2 has no token to score"),
        ('{"sentence_good": "\u200b", "sentence_bad": "the cat"}\n', "pair 1 (sentence_good) has no token"),
        ("the cat\n\x00\x01\n", "NUL bytes"),
        ("the cat [SEP] sleeps\n", "line 1 holds the special token [SEP] in its text"),
        (
            '{"sentence_good": "a [MASK] cat", "sentence_bad": "b"}\n',
            "pair 1 (sentence_good) holds the special token [MASK]",
        ),
        # a plain first line: the pairs after it were scored as sentences of JSON
        (
            'the cat\n{"sentence_good": "a", "sentence_bad": "b"}\n',
            "bad.txt:2 is a JSON minimal pair, but line 1",
        ),
    ],
)
def test_bad_input_is_one_line(model_dir, tmp_path, capsys, content, message):
    data = tmp_path / "bad.txt"
    data.write_text(content, encoding="utf-8")
    assert cli("score", model_dir, "--data", data) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1


def test_pairs_file_with_a_byte_order_mark_and_line_separators(loaded, model_dir, tmp_path, capsys):
    """A BOM does not hide that the file holds pairs, and a U+2028 inside a sentence does not split its line."""
    scorer, _ = loaded
    pair = {"sentence_good": f"{SENTENCES[0]}\u2028{SENTENCES[1]}", "sentence_bad": SENTENCES[2]}
    data = tmp_path / "pairs.jsonl"
    data.write_bytes(b"\xef\xbb\xbf" + (json.dumps(pair, ensure_ascii=False) + "\r\n").encode())
    assert cli("score", model_dir, "--data", data, "--json") == 0
    out = json.loads(capsys.readouterr().out)
    good, bad = scorer.score([pair["sentence_good"], pair["sentence_bad"]])
    assert out["pairs"] == 1 and out["accuracy"] == float(good.pll > bad.pll)


def test_pairs_from_python_check_their_groups(loaded):
    """Scorer.pairs names groups as the file reader does: numbers beside strings are names, a blank one is
    refused."""
    scorer, _ = loaded
    pair = {"sentence_good": SENTENCES[0], "sentence_bad": SENTENCES[2]}
    out = scorer.pairs([{**pair, "group": "a"}, {**pair, "group": 3}])
    assert set(out["groups"]) == {"a", "3"}
    with pytest.raises(UserError, match='pair 2: "group" is blank'):
        scorer.pairs([pair, {**pair, "group": " "}])


def test_word_level_refuses_a_tokenizer_whose_words_cross_spaces(loaded):
    """With a metaspace pre-tokenizer that does not split, the whole sentence is one word: word-level scoring
    would mask every later piece, so it is refused; token-level scoring still works."""
    scorer, model = loaded
    spec = json.loads(scorer.tokenizer.to_str())
    spec["pre_tokenizer"] = {
        "type": "Metaspace",
        "replacement": "\u2581",
        "prepend_scheme": "always",
        "split": False,
    }
    one_word = tokenizers.Tokenizer.from_str(json.dumps(spec))
    assert len(set(one_word.encode("the cat sleeps").word_ids) - {None}) == 1
    other = Scorer.from_model(model, one_word)
    assert other.score(["the cat sleeps"])[0].tokens > 0
    with pytest.raises(UserError, match="words run across spaces"):
        other.score(["the cat sleeps"], word_level=True)
    assert scorer.score(["the cat sleeps"], word_level=True)[0].tokens > 0


# ----------------------------------------------------------------------------------------------------------------
# pretrain --train.eval_pairs

WALK_PAIRS = [
    {
        "sentence_good": "alpha bravo charlie delta",
        "sentence_bad": "alpha charlie bravo delta",
        "group": "swap",
    },
    {"sentence_good": "kilo lima mike november", "sentence_bad": "kilo mike lima november", "group": "swap"},
    {"sentence_good": "echo foxtrot golf", "sentence_bad": "echo foxtrot papa", "group": "replace"},
]


@pytest.mark.parametrize("objective", ["mlm", "electra"])
def test_pretraining_evaluations_report_pair_accuracy(tmp_path, objective):
    from helpers import prepare_tiny, read_metrics, write_walk_corpus

    data = prepare_tiny(write_walk_corpus(tmp_path / "corpus", 30), tmp_path / "data")
    pairs = write_jsonl(tmp_path / "pairs.jsonl", WALK_PAIRS)
    run = tmp_path / "run"
    rc = cli(
        "pretrain", "--preset", "tiny", "--data", data, "--output", run, "--max-steps", 6, "--objective", objective,
        "--train.eval_every", 3, "--train.eval_sequences", 8, "--train.precision", "fp32", "--train.threads", 1,
        "--train.eval_pairs", pairs,
    )  # fmt: skip
    assert rc == 0
    evals = [r for r in read_metrics(run) if r.get("split") == "val"]
    assert len(evals) >= 2 and all(0 <= r["pairs_accuracy"] <= 1 and "accuracy" in r for r in evals)
    final = Scorer.load(run).pairs(WALK_PAIRS)["accuracy"]  # the saved model (ELECTRA: its generator)
    assert evals[-1]["pairs_accuracy"] == pytest.approx(final)


def test_pairs_the_model_cannot_score_are_refused_before_pretraining(tmp_path, capsys):
    from helpers import prepare_tiny, write_walk_corpus

    data = prepare_tiny(write_walk_corpus(tmp_path / "corpus", 30), tmp_path / "data")
    pairs = write_jsonl(
        tmp_path / "pairs.jsonl", [*WALK_PAIRS, {"sentence_good": "alpha " * 600, "sentence_bad": "a"}]
    )
    run = tmp_path / "run"
    rc = cli(
        "pretrain", "--preset", "tiny", "--data", data, "--output", run, "--max-steps", 6,
        "--model.position", "absolute", "--train.eval_pairs", pairs, "--train.threads", 1,
    )  # fmt: skip
    assert rc == 2 and not run.exists()
    assert "pair 4 (sentence_good) is 602 tokens long, above the model's limit" in capsys.readouterr().err
