"""`masklm serve` behaviour docs/serving.md promises beyond tests/test_serve.py: Hugging Face BERT folders (with an
MLM head: fill-mask; a bare BertModel: embeddings only) and the request limits set by the command's flags, each
at and above its limit.

The app is built by the command itself (`masklm serve ... --flags` through masklm.cli.main), with uvicorn's
server replaced by one that keeps the app instead of listening, and then driven in-process with Starlette's
TestClient: the flags reach the app the way a user's do, without a server process.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
transformers = pytest.importorskip("transformers")
pytest.importorskip("fastapi")

from helpers import SENTENCES, TINY_ENCODER  # noqa: E402
from starlette.testclient import TestClient  # noqa: E402

import masklm.serve  # noqa: E402
from masklm.cli import main  # noqa: E402
from masklm.data.tokenizer import train_tokenizer  # noqa: E402
from masklm.infer.fill_mask import FillMask  # noqa: E402

CORPUS = SENTENCES * 10

# The limits the app is served with in test_limits_flags (their defaults are 16, 100, 64, 5000 and 1 MiB).
MAX_MASKS, MAX_TOP_K, MAX_INPUTS, MAX_CHARS, MAX_BODY = 2, 3, 3, 40, 400


@pytest.fixture(scope="module")
def vocab() -> dict[str, int]:
    return train_tokenizer(CORPUS, vocab_size=100).get_vocab()


def randomised(model: torch.nn.Module) -> torch.nn.Module:
    """Weights far from a fresh initialisation (whose near-uniform logits would rank candidates by rounding)."""
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.3)
    return model.eval()


def save_hf(model: torch.nn.Module, vocab: dict[str, int], folder: Path) -> Path:
    model.save_pretrained(str(folder))
    # (transformers 5 ignores vocab_file=: the vocabulary is given as a dict)
    transformers.BertTokenizerFast(vocab=vocab).save_pretrained(str(folder))
    return folder


def hf_folder(tmp_path_factory, vocab: dict[str, int], model_class: type, seed: int, name: str) -> Path:
    """A Hugging Face folder `name` (the name it is served under) of a tiny, randomised `model_class` (its name in
    config.json's architectures)."""
    torch.manual_seed(seed)
    config = transformers.BertConfig(**{**TINY_ENCODER, "vocab_size": len(vocab)})
    folder = save_hf(randomised(model_class(config)), vocab, tmp_path_factory.mktemp("hf") / name)
    assert json.loads((folder / "config.json").read_text())["architectures"] == [model_class.__name__]
    return folder


@pytest.fixture(scope="module")
def hf_mlm(tmp_path_factory, vocab) -> Path:
    """A Hugging Face BertForMaskedLM folder (MLM head weights saved)."""
    return hf_folder(tmp_path_factory, vocab, transformers.BertForMaskedLM, seed=0, name="mlm")


@pytest.fixture(scope="module")
def hf_encoder(tmp_path_factory, vocab) -> Path:
    """A Hugging Face BertModel folder: an encoder without MLM head weights, as sentence encoders ship."""
    return hf_folder(tmp_path_factory, vocab, transformers.BertModel, seed=1, name="encoder")


def serve_app(monkeypatch, *argv: object):
    """The app `masklm serve ARGV` would listen with, built by the command (its flags parsed by its parser)."""
    apps = []

    class KeepApp:
        def __init__(self, config) -> None:
            apps.append(config.app)

        def run(self) -> None:
            pass

    monkeypatch.setattr(masklm.serve, "_server_class", lambda: KeepApp)
    assert main(["serve", *map(str, argv), "--port", "0", "--threads", "1"]) == 0
    assert len(apps) == 1
    return apps[0]


def assert_refused(reply, status: int, *words: str) -> str:
    """`reply` is a refusal with `status` and {"error": one line holding every word}; the line."""
    assert reply.status_code == status, reply.text
    assert reply.headers["content-type"] == "application/json"
    body = reply.json()
    assert list(body) == ["error"] and isinstance(body["error"], str)
    assert "\n" not in body["error"] and "\n" not in reply.text.strip()
    for word in words:
        assert word in body["error"], body["error"]
    return body["error"]


def test_fill_mask_on_a_hugging_face_folder_equals_fill_mask(hf_mlm, monkeypatch, one_thread):
    """A Hugging Face BertForMaskedLM folder is served for fill-mask: its candidates over HTTP (two texts in one
    request, so one batch with padding) are FillMask's on that folder, and the ones transformers ranks first."""
    app = serve_app(monkeypatch, f"bert={hf_mlm}", "--dtype", "float32")
    texts = ["the cat [MASK] on the mat .", "a [MASK] and a cat are [MASK] , they play all day !"]
    with TestClient(app) as client:
        models = client.get("/v1/models").json()
        answer = client.post("/v1/fill-mask", json={"inputs": texts, "top_k": 5})
    assert [(m["name"], m["task"]) for m in models] == [("bert", "fill-mask")]
    assert answer.status_code == 200, answer.text
    assert answer.json()["model"] == "bert"
    outputs = answer.json()["outputs"]
    assert [len(o) for o in outputs] == [1, 2] and all(len(m) == 5 for o in outputs for m in o)

    fill = FillMask.load(hf_mlm, dtype="float32")
    for text, got in zip(texts, outputs):
        want = fill(text, top_k=5)
        assert [[c["token"] for c in m] for m in got] == [[c["token"] for c in m] for m in want]
        for g, w in zip(got, want):
            assert [c["score"] for c in g] == pytest.approx([c["score"] for c in w], abs=1e-5)

    # the same ranking from transformers' own model, special tokens left out as the server leaves them out
    tokenizer = transformers.BertTokenizerFast.from_pretrained(str(hf_mlm))
    hf = transformers.BertForMaskedLM.from_pretrained(str(hf_mlm)).eval()
    specials = set(tokenizer.all_special_ids)
    for text, got in zip(texts, outputs):
        enc = tokenizer(text, return_tensors="pt")
        with torch.no_grad():
            probs = hf(**enc).logits[0].softmax(-1)
        probs[:, sorted(specials)] = -1.0
        rows = probs[enc["input_ids"][0] == tokenizer.mask_token_id]
        top = rows.topk(5, dim=-1)
        assert [[c["token"] for c in m] for m in got] == [
            tokenizer.convert_ids_to_tokens(ids) for ids in top.indices.tolist()
        ]
        for g, p in zip(got, top.values.tolist()):
            assert [c["score"] for c in g] == pytest.approx(p, abs=1e-4)


def test_a_bare_encoder_is_served_for_embeddings_only(hf_encoder, monkeypatch, one_thread):
    """A bare BertModel folder is served as feature-extraction: /v1/embed answers the mean of the last hidden
    states over the tokens (hidden-size vectors, transformers' own), and fill-mask and predict are refused with
    400 and one line (docs/serving.md: "embeddings only when it is a bare BertModel"), not a 500."""
    app = serve_app(monkeypatch, hf_encoder, "--dtype", "float32")
    # lengths under twice each other: one batch, the shorter text padded (whose padding must not count)
    texts = ["the cat sat", "the cat sat on the mat ."]
    with TestClient(app, raise_server_exceptions=False) as client:
        models = client.get("/v1/models").json()
        embedded = client.post("/v1/embed", json={"inputs": texts})
        unit = client.post("/v1/embed", json={"inputs": texts, "normalize": True})
        fill = client.post("/v1/fill-mask", json={"inputs": "the cat [MASK] on the mat ."})
        predict = client.post("/v1/predict", json={"inputs": "the cat sat"})
        after = client.post("/v1/embed", json={"model": "encoder", "inputs": texts})
    assert models == [
        {"name": "encoder", "task": "feature-extraction", "labels": None, "path": str(hf_encoder)}
    ]
    assert embedded.status_code == 200, embedded.text
    vectors = torch.tensor(embedded.json()["outputs"])
    assert vectors.shape == (2, TINY_ENCODER["hidden_size"])

    tokenizer = transformers.BertTokenizerFast.from_pretrained(str(hf_encoder))
    hf = transformers.BertModel.from_pretrained(str(hf_encoder)).eval()
    enc = tokenizer(texts, return_tensors="pt", padding=True)
    with torch.no_grad():
        hidden = hf(**enc).last_hidden_state
    lengths = enc["attention_mask"].sum(1).tolist()
    assert lengths[0] < lengths[1] <= 2 * lengths[0]
    mask = enc["attention_mask"].unsqueeze(-1).float()
    want = (hidden * mask).sum(1) / mask.sum(1)
    torch.testing.assert_close(vectors, want, atol=1e-4, rtol=1e-4)
    normalized = torch.tensor(unit.json()["outputs"])
    torch.testing.assert_close(normalized, torch.nn.functional.normalize(want, dim=-1), atol=1e-4, rtol=1e-4)

    assert_refused(fill, 400, "'encoder'", "feature-extraction", "masked-LM")
    assert_refused(predict, 400, "'encoder'", "feature-extraction", "fine-tuned")
    assert after.status_code == 200 and after.json() == embedded.json()  # still serving, the same answers


def test_limits_flags_refuse_above_and_answer_at_each_limit(hf_mlm, monkeypatch, one_thread):
    """--max-masks, --max-top-k, --max-inputs, --max-chars and --max-body-bytes, given on the command line: a
    request at each limit is answered, one above it gets the status docs/serving.md gives (400, 400, 413, 413,
    413) and one line naming the limit."""
    app = serve_app(
        monkeypatch,
        hf_mlm,
        "--dtype",
        "float32",
        "--max-masks",
        MAX_MASKS,
        "--max-top-k",
        MAX_TOP_K,
        "--max-inputs",
        MAX_INPUTS,
        "--max-chars",
        MAX_CHARS,
        "--max-body-bytes",
        MAX_BODY,
    )
    two_masks = "the [MASK] sat on the [MASK] ."
    three_masks = "the [MASK] [MASK] on the [MASK] ."
    at_chars = "the cat [MASK]" + " a" * 13
    assert len(at_chars) == MAX_CHARS

    def padded(body: dict, size: int) -> bytes:
        """`body` as JSON of exactly `size` bytes (trailing whitespace is still JSON)."""
        raw = json.dumps(body).encode()
        assert len(raw) <= size
        return raw + b" " * (size - len(raw))

    small = {"inputs": "the cat [MASK] on the mat .", "top_k": 1}
    with TestClient(app, raise_server_exceptions=False) as client:

        def fill(body: dict):
            return client.post("/v1/fill-mask", json=body)

        # [MASK]s per input: 400
        ok = fill({"inputs": two_masks, "top_k": 2})
        assert ok.status_code == 200, ok.text
        assert [len(m) for m in ok.json()["outputs"][0]] == [2, 2]
        error = assert_refused(fill({"inputs": ["the cat [MASK]", three_masks], "top_k": 1}), 400, "[MASK]")
        assert (
            error.startswith("inputs[1]")
            and f"3 [MASK] tokens, above the server's limit of {MAX_MASKS}" in error
        )

        # top_k: 400
        ok = fill({"inputs": "the cat [MASK] on the mat .", "top_k": MAX_TOP_K})
        assert ok.status_code == 200 and len(ok.json()["outputs"][0][0]) == MAX_TOP_K
        assert_refused(
            fill({"inputs": "the cat [MASK] on the mat .", "top_k": MAX_TOP_K + 1}),
            400,
            "top_k",
            f"{MAX_TOP_K + 1} is above the server's limit of {MAX_TOP_K} (--max-top-k)",
        )
        # a request that asks for no top_k gets the default 5, or the limit when lower: never refused
        ok = fill({"inputs": "the cat [MASK] on the mat ."})
        assert ok.status_code == 200 and len(ok.json()["outputs"][0][0]) == min(5, MAX_TOP_K)

        # inputs per request: 413, on every route
        texts = ["the cat [MASK]"] * MAX_INPUTS
        ok = fill({"inputs": texts, "top_k": 1})
        assert ok.status_code == 200 and len(ok.json()["outputs"]) == MAX_INPUTS
        too_many = f"{MAX_INPUTS + 1} inputs, above the server's limit of {MAX_INPUTS}"
        assert_refused(fill({"inputs": [*texts, "a [MASK]"], "top_k": 1}), 413, too_many)
        assert_refused(client.post("/v1/embed", json={"inputs": ["a"] * (MAX_INPUTS + 1)}), 413, too_many)

        # characters per input: 413, on every route
        ok = fill({"inputs": at_chars, "top_k": 1})
        assert ok.status_code == 200, ok.text
        assert client.post("/v1/embed", json={"inputs": at_chars}).status_code == 200
        too_long = f"inputs[0] is {MAX_CHARS + 1} characters long, above the server's limit of {MAX_CHARS}"
        assert_refused(fill({"inputs": at_chars + ".", "top_k": 1}), 413, too_long)
        assert_refused(client.post("/v1/embed", json={"inputs": at_chars + "."}), 413, too_long)

        # body bytes: 413, with a Content-Length or without one (chunked)
        ok = client.post("/v1/fill-mask", content=padded(small, MAX_BODY))
        assert ok.status_code == 200, ok.text
        assert_refused(
            client.post("/v1/fill-mask", content=padded(small, MAX_BODY + 1)),
            413,
            f"the body is {MAX_BODY + 1} bytes, above the server's limit of {MAX_BODY}",
        )
        ok = client.post("/v1/fill-mask", content=iter([padded(small, MAX_BODY)]))
        assert ok.status_code == 200, ok.text
        assert_refused(
            client.post("/v1/fill-mask", content=iter([padded(small, MAX_BODY + 1)])),
            413,
            f"over the server's limit of {MAX_BODY} bytes",
        )

        # the server goes on answering after every refusal
        assert fill(small).json() == client.post("/v1/fill-mask", content=padded(small, MAX_BODY)).json()


def test_default_limits_answer_at_the_limit(hf_mlm, vocab, monkeypatch, one_thread):
    """Without the flags, the documented defaults: 16 [MASK]s and top_k 100 are answered, 17 and 101 refused."""
    app = serve_app(monkeypatch, hf_mlm, "--dtype", "float32")
    with TestClient(app, raise_server_exceptions=False) as client:
        ok = client.post("/v1/fill-mask", json={"inputs": "the " + "[MASK] " * 16, "top_k": 1})
        assert ok.status_code == 200 and len(ok.json()["outputs"][0]) == 16
        assert_refused(
            client.post("/v1/fill-mask", json={"inputs": "the " + "[MASK] " * 17}),
            400,
            "17 [MASK] tokens, above the server's limit of 16",
        )
        # (the tiny vocabulary has 100 tokens, 5 of them special: every other one is a candidate)
        ok = client.post("/v1/fill-mask", json={"inputs": "the cat [MASK]", "top_k": 100})
        assert ok.status_code == 200 and len(ok.json()["outputs"][0][0]) == len(vocab) - 5 == 95
        assert_refused(
            client.post("/v1/fill-mask", json={"inputs": "the cat [MASK]", "top_k": 101}),
            400,
            "top_k: 101 is above the server's limit of 100",
        )


@pytest.mark.parametrize("flag", ["--max-masks", "--max-top-k", "--max-chars", "--max-body-bytes"])
def test_a_limit_below_one_is_refused_before_any_model_is_read(flag, tmp_path, capsys):
    """A limit flag of 0 is refused by the command in one line (exit 2), before the (missing) model is read."""
    assert main(["serve", str(tmp_path / "no-such-model"), flag, "0", "--port", "0"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == f"error: {flag} must be at least 1, not 0"
