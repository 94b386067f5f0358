"""`masklm serve` end to end: a real server process on a loopback port (tests/conftest.py `server`), driven
over HTTP with httpx: every kind of model, batching under concurrency, every refused request, a full queue,
SIGTERM with requests in flight."""

from __future__ import annotations

import http.client
import json
import shutil
import signal
import socket
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
import torch
from helpers import ServerProcess, cli, write_csv

from masklm.infer.fill_mask import FillMask
from masklm.serve.batcher import length_buckets

TEXTS = [
    "alpha [MASK] charlie",
    "[MASK] bravo charlie delta",
    "echo foxtrot [MASK] hotel india",
    "kilo [MASK] mike [MASK] oscar papa",
    "great [MASK]",
    "juliet kilo lima [MASK] november oscar papa alpha bravo",
]


def post(server: ServerProcess, path: str, body: object) -> httpx.Response:
    return httpx.post(server.url + path, json=body, timeout=30)


def test_health_models_page_and_docs(server):
    assert httpx.get(server.url + "/health").json() == {"status": "ok"}
    models = {m["name"]: m for m in httpx.get(server.url + "/v1/models").json()}
    assert {n: m["task"] for n, m in models.items()} == {
        "tiny": "fill-mask",
        "cls": "classification",
        "ner": "token-classification",
        "qa": "qa",
        "mc": "multiple-choice",
    }
    assert models["cls"]["labels"] == ["neg", "pos"]
    page = httpx.get(server.url + "/")
    assert page.status_code == 200 and "/static/app.js" in page.text
    schema = httpx.get(server.url + "/openapi.json").json()
    assert {"/v1/fill-mask", "/v1/predict", "/v1/embed", "/v1/models", "/health"} <= set(schema["paths"])


def test_fill_mask_equals_the_fill_mask_command(server, served_models):
    fm = FillMask.load(served_models["tiny"], dtype="float32")
    answer = post(server, "/v1/fill-mask", {"model": "tiny", "inputs": TEXTS[:4], "top_k": 3}).json()
    assert answer["model"] == "tiny" and len(answer["outputs"]) == 4
    for text, got in zip(TEXTS, answer["outputs"]):
        want = fm(text, top_k=3)
        assert [[c["token"] for c in m] for m in got] == [[c["token"] for c in m] for m in want]
        for g, w in zip(got, want):
            assert [c["score"] for c in g] == pytest.approx([c["score"] for c in w], abs=1e-5)


def test_predict_classification_equals_masklm_predict(server, served_models, tmp_path):
    texts = ["alpha great bravo charlie", "delta awful echo", "foxtrot golf great"]
    write_csv(tmp_path / "in.csv", [{"text": t} for t in texts])
    assert (
        cli(
            "predict",
            "--model",
            served_models["cls"],
            "--data",
            tmp_path / "in.csv",
            "--output",
            tmp_path / "p.jsonl",
            "--train.precision",  # the server's float32 (--dtype float32)
            "fp32",
        )
        == 0
    )
    rows = [json.loads(line) for line in (tmp_path / "p.jsonl").read_text().splitlines()]
    answer = post(server, "/v1/predict", {"model": "cls", "inputs": texts}).json()
    assert answer["task"] == "classification"
    for row, out in zip(rows, answer["outputs"]):
        assert out["label"] == row["label"]
        assert out["score"] == pytest.approx(row["score"], abs=1e-4)
        assert sum(out["scores"].values()) == pytest.approx(1, abs=1e-4)
        assert out["scores"][out["label"]] == max(out["scores"].values())


def test_predict_tagger_qa_multiple_choice_and_embed(server):
    text = "alice smith went to paris, then rome."
    ner = post(server, "/v1/predict", {"model": "ner", "inputs": text}).json()["outputs"][0]
    assert ner["tokens"] == ["alice", "smith", "went", "to", "paris", ",", "then", "rome", "."]
    assert len(ner["tags"]) == len(ner["tokens"])
    assert any(tag != "O" for tag in ner["tags"])  # the untrained tagger's tags here: entities to check
    assert [(e["label"], e["text"], e["start"], e["end"]) for e in ner["entities"]] == tagged_entities(
        text, ner["tokens"], ner["tags"]
    )
    for e in ner["entities"]:
        assert (
            text[e["start"] : e["end"]] == e["text"] and e["label"] in ("LOC", "PER") and 0 < e["score"] <= 1
        )
    context = "the key is alice smith in paris"
    qa = post(
        server,
        "/v1/predict",
        {"model": "qa", "inputs": {"question": "what is the key ?", "context": context}},
    )
    qa = qa.json()["outputs"][0]
    assert context[qa["start"] : qa["end"]] == qa["answer"] != "" and 0 < qa["score"] <= 1
    items = [
        {"context": "alice", "endings": ["smith", "went to paris", "rome"]},
        {"context": "b", "endings": ["c", "d"]},
    ]
    mc = post(server, "/v1/predict", {"model": "mc", "inputs": items}).json()["outputs"]
    assert [len(m["scores"]) for m in mc] == [3, 2]
    assert all(m["scores"][m["choice"]] == max(m["scores"]) for m in mc)
    assert all(sum(m["scores"]) == pytest.approx(1.0, abs=1e-5) for m in mc)  # a softmax over the endings
    vectors = post(
        server, "/v1/embed", {"model": "cls", "inputs": ["alpha", "bravo charlie"], "normalize": True}
    )
    vectors = torch.tensor(vectors.json()["outputs"])
    assert vectors.shape == (2, 32) and torch.allclose(vectors.norm(dim=-1), torch.ones(2), atol=1e-3)


def tagged_entities(text: str, tokens: list[str], tags: list[str]) -> list[tuple[str, str, int, int]]:
    """(label, text, start, end) of the entities BIO tags mark, the tokens found in `text` in order: a B- tag
    (or an I- tag of another type than the open entity's) starts one, an I- tag of its type extends it, O ends
    it."""
    spans, pos = [], 0
    for token in tokens:
        start = text.index(token, pos)
        pos = start + len(token)
        spans.append((start, pos))
    found: list[list] = []
    open_entity = None
    for tag, (start, end) in zip(tags, spans):
        if tag == "O":
            open_entity = None
            continue
        prefix, label = tag.split("-", 1)
        if open_entity is not None and prefix == "I" and label == open_entity[0]:
            open_entity[2] = end
        else:
            open_entity = [label, start, end]
            found.append(open_entity)
    return [(label, text[start:end], start, end) for label, start, end in found]


def test_concurrent_clients_get_their_own_answers(server):
    """32 requests from 12 threads at once, fill-mask and classification mixed: every answer equals the
    answer to the same request sent alone (batching neither mixes nor changes them)."""
    requests = [("/v1/fill-mask", {"model": "tiny", "inputs": t, "top_k": 4}) for t in TEXTS]
    requests += [
        ("/v1/predict", {"model": "cls", "inputs": f"{w} great {w}"}) for w in ("alpha", "kilo lima")
    ]
    requests += [
        ("/v1/predict", {"model": "mc", "inputs": {"context": "a", "endings": ["b"] * n}}) for n in (2, 3)
    ]
    alone = [post(server, path, body).json() for path, body in requests]
    jobs = [requests[i % len(requests)] for i in range(32)]
    with ThreadPoolExecutor(12) as pool:
        together = list(pool.map(lambda job: post(server, *job).json(), jobs))
    for i, got in enumerate(together):
        want = alone[i % len(requests)]
        assert got.keys() == want.keys()
        assert _flat(got["outputs"]) == pytest.approx(_flat(want["outputs"]), abs=2e-3)
        assert _words(got["outputs"]) == _words(want["outputs"])


def _flat(value: object) -> list[float]:
    """Every number in a JSON value, in order."""
    if isinstance(value, dict):
        return [x for v in value.values() for x in _flat(v)]
    if isinstance(value, list):
        return [x for v in value for x in _flat(v)]
    return [float(value)] if isinstance(value, int | float) and not isinstance(value, bool) else []


def _words(value: object) -> list[str]:
    """Every string in a JSON value, in order (tokens, labels)."""
    if isinstance(value, dict):
        return [x for k, v in value.items() for x in [k, *_words(v)]]
    if isinstance(value, list):
        return [x for v in value for x in _words(v)]
    return [value] if isinstance(value, str) else []


BAD_REQUESTS = [  # (path, raw body, status, a word the error must hold)
    ("/v1/fill-mask", "{not json", 400, "JSON"),
    ("/v1/fill-mask", "[1, 2]", 400, "object"),
    ("/v1/fill-mask", json.dumps({"model": "tiny", "inputs": 5}), 400, "string"),
    ("/v1/fill-mask", json.dumps({"model": "tiny", "inputs": "a [MASK]", "top_k": "5"}), 400, "top_k"),
    ("/v1/fill-mask", json.dumps({"model": "tiny", "inputs": "a [MASK]", "top_k": 0}), 400, "top_k"),
    ("/v1/fill-mask", json.dumps({"model": "tiny", "inputs": "a [MASK]", "top_k": 10**6}), 400, "limit"),
    ("/v1/fill-mask", json.dumps({"model": "nope", "inputs": "a [MASK]"}), 404, "unknown model"),
    ("/v1/fill-mask", json.dumps({"inputs": "a [MASK]"}), 400, "several models"),
    ("/v1/fill-mask", json.dumps({"model": "tiny", "inputs": "  "}), 400, "empty"),
    ("/v1/fill-mask", json.dumps({"model": "tiny", "inputs": []}), 400, "empty"),
    ("/v1/fill-mask", json.dumps({"model": "tiny", "inputs": "no mask here"}), 400, "[MASK]"),
    ("/v1/fill-mask", json.dumps({"model": "tiny", "inputs": "[MASK] " * 20}), 400, "limit of 16"),
    (
        "/v1/fill-mask",
        json.dumps({"model": "tiny", "inputs": "alpha " * 100 + "[MASK]"}),
        413,
        "limit of 400",
    ),
    ("/v1/fill-mask", json.dumps({"model": "tiny", "inputs": ["a [MASK]"] * 9}), 413, "limit of 8"),
    ("/v1/fill-mask", json.dumps({"model": "tiny", "inputs": "a [MASK]", "extra": 1}), 400, "unknown field"),
    ("/v1/fill-mask", json.dumps({"model": "cls", "inputs": "a [MASK]"}), 400, "masked-LM"),
    ("/v1/predict", json.dumps({"model": "tiny", "inputs": "a b"}), 400, "fine-tuned"),
    ("/v1/predict", json.dumps({"model": "qa", "inputs": {"context": "alice smith"}}), 400, "question"),
    ("/v1/predict", json.dumps({"model": "qa", "inputs": {"question": "", "context": "a"}}), 400, "empty"),
    ("/v1/predict", json.dumps({"model": "qa", "inputs": "what ?"}), 400, "question"),
    ("/v1/predict", json.dumps({"model": "cls", "inputs": [3]}), 400, "inputs[0]"),
    ("/v1/predict", json.dumps({"model": "cls", "inputs": {"txt": "a"}}), 400, "unknown field"),
    ("/v1/predict", json.dumps({"model": "ner", "inputs": "..."}), 200, ""),  # punctuation is a word
    ("/v1/predict", json.dumps({"model": "ner", "inputs": " "}), 400, "empty"),
    ("/v1/predict", json.dumps({"model": "mc", "inputs": {"context": "a", "endings": ["b"]}}), 400, "two"),
    ("/v1/embed", json.dumps({"model": "tiny", "inputs": "a", "normalize": "yes"}), 400, "normalize"),
    ("/v1/nothing", json.dumps({}), 404, "no such path"),
    ("/v1/fill-mask", "", 400, "body"),
    ("/v1/predict", '{"model": "cls", "inputs": ' + "[" * 100_000 + "]" * 100_000 + "}", 400, "body"),
    ("/v1/embed", json.dumps({"model": "tiny", "inputs": "a b " * 40}), 400, "limit of 64"),  # 82 tokens
    # a zero-width space: no token, so the vector was [CLS] and [SEP]'s alone
    (
        "/v1/embed",
        json.dumps({"model": "tiny", "inputs": ["a", "\u200b"]}),
        400,
        "inputs[1]: the text has no token",
    ),
    # a lone surrogate ("\ud800" in the JSON) is no text: 400 naming where it is, not a tokenizer error
    ("/v1/predict", json.dumps({"model": "cls", "inputs": "\ud800"}), 400, "inputs: not valid Unicode"),
    ("/v1/fill-mask", json.dumps({"model": "tiny", "inputs": "\ud800 [MASK]"}), 400, "lone surrogate"),
    (
        "/v1/embed",
        json.dumps({"model": "tiny", "inputs": ["a", "\ud800 [MASK]"]}),
        400,
        "inputs[1]: not valid",
    ),
    (
        "/v1/predict",
        json.dumps({"model": "qa", "inputs": {"question": "\ud800", "context": "a"}}),
        400,
        "inputs.question: not valid Unicode",
    ),
    (
        "/v1/predict",
        json.dumps({"model": "mc", "inputs": [{"context": "\udfff", "endings": ["b", "c"]}]}),
        400,
        "inputs[0].context: not valid Unicode",
    ),
    ("/v1/predict", json.dumps({"model": "cls\udfff", "inputs": "a"}), 400, "model: not valid Unicode"),
    ("/v1/predict", json.dumps({"model": "cls", "inputs": {"\ud800": "a"}}), 400, "a field name in inputs"),
]


@pytest.mark.parametrize(
    "path, body, status, word", BAD_REQUESTS, ids=[f"{b[0]}-{i}" for i, b in enumerate(BAD_REQUESTS)]
)
def test_bad_requests_get_one_line_errors(server, path, body, status, word):
    r = httpx.post(server.url + path, content=body, headers={"content-type": "application/json"}, timeout=30)
    assert r.status_code == status, r.text
    if status >= 400:
        answer = r.json()
        assert list(answer) == ["error"] and "\n" not in answer["error"] and word in answer["error"]
    assert httpx.get(server.url + "/health").status_code == 200
    assert "Traceback" not in server.log.read_text()  # a refused request is no failure of the server


@pytest.mark.parametrize(
    "content_type",
    ["application/x-www-form-urlencoded", "text/plain; charset=utf-8", "multipart/form-data", None],
)
def test_a_json_body_is_read_whatever_its_content_type(server, content_type):
    """`curl -d` labels the body a form (application/x-www-form-urlencoded): the JSON endpoints read it as JSON
    all the same, and a body that is not JSON gets the same 400 as one labelled JSON."""
    headers = {"content-type": content_type} if content_type else {}
    bodies = {
        "/v1/fill-mask": {"model": "tiny", "inputs": TEXTS[0], "top_k": 3},
        "/v1/predict": {"model": "cls", "inputs": ["a fine film", "dull"]},
        "/v1/embed": {"model": "tiny", "inputs": "alpha bravo"},
    }
    for path, body in bodies.items():
        r = httpx.post(server.url + path, content=json.dumps(body), headers=headers, timeout=30)
        assert r.status_code == 200, (path, r.text)
        assert r.json() == post(server, path, body).json()
    bad = httpx.post(server.url + "/v1/fill-mask", content="inputs=a+[MASK]", headers=headers, timeout=30)
    assert bad.status_code == 400 and "not valid JSON" in bad.json()["error"]


def test_oversized_body_is_refused_before_it_is_read(server):
    r = httpx.post(
        server.url + "/v1/embed", content=b"x" * (2 << 20), headers={"content-type": "application/json"}
    )
    assert r.status_code == 413 and "limit" in r.json()["error"]


def test_a_chunked_body_is_refused_once_past_the_limit(server):
    """Without a Content-Length, the server counts the bytes it reads: 413 once past --max-body-bytes (1 MiB),
    answered before the body ends (this one never does); a chunked body within the limit is answered."""
    with socket.create_connection(("127.0.0.1", server.port), timeout=30) as s:
        s.sendall(
            b"POST /v1/embed HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n"
        )
        chunk = b"x" * (64 << 10)
        for _ in range(17):  # 1.06 MiB, and no last chunk
            s.sendall(b"%x\r\n%s\r\n" % (len(chunk), chunk))
        answer = http.client.HTTPResponse(s)
        answer.begin()
        assert answer.status == 413 and "limit" in json.loads(answer.read())["error"]

    def chunks() -> Iterator[bytes]:
        yield b'{"model": "tiny", '
        yield b'"inputs": "alpha bravo"}'

    r = httpx.post(server.url + "/v1/embed", content=chunks(), headers={"content-type": "application/json"})
    assert r.status_code == 200 and len(r.json()["outputs"][0]) == 32


def test_memory_stays_flat_under_bad_requests(server):
    bodies = [body for _, body, status, _ in BAD_REQUESTS if status >= 400] * 12
    with httpx.Client(timeout=30) as client:

        def send(body: str) -> httpx.Response:
            headers = {"content-type": "application/json"}
            return client.post(server.url + "/v1/fill-mask", content=body, headers=headers)

        for b in bodies[:60]:  # warm-up: allocator pools, caches
            send(b)
        before = server.rss_kib()
        for b in bodies:
            assert send(b).status_code >= 400
    assert server.rss_kib() - before < 20_000, "the server grew by more than 20 MB answering bad requests"


def test_length_buckets_keep_keys_apart_and_lengths_alike():
    keys = ["a", "b", "a", "a", "b", "a"]
    lengths = [5, 5, 30, 6, 7, 4]
    batches = length_buckets(keys, lengths, max_batch=2)
    assert sorted(i for b in batches for i in b) == list(range(6))
    for b in batches:
        assert len({keys[i] for i in b}) == 1 and len(b) <= 2
        assert max(lengths[i] for i in b) <= 2 * min(lengths[i] for i in b)


def test_full_queue_answers_503_and_sigterm_drains_requests_in_flight(served_models, tmp_path):
    """A server that holds at most 2 requests and waits 0.8 s to fill a batch: of 6 requests sent at once, 2
    are held and 4 refused with 503 + Retry-After; SIGTERM while 2 are held lets both finish, then exit 0."""
    srv = ServerProcess(
        [served_models["tiny"], "--max-queue", "2", "--max-wait-ms", "800", "--threads", "1"],
        tmp_path / "log",
    )
    try:
        body = {"inputs": "alpha [MASK] charlie"}
        with ThreadPoolExecutor(6) as pool:
            responses = list(pool.map(lambda _: post(srv, "/v1/fill-mask", body), range(6)))
        codes = sorted(r.status_code for r in responses)
        assert codes == [200, 200, 503, 503, 503, 503]
        refused = next(r for r in responses if r.status_code == 503)
        assert refused.headers["retry-after"] == "1" and "busy" in refused.json()["error"]

        results: list[httpx.Response] = []
        threads = [
            threading.Thread(target=lambda: results.append(post(srv, "/v1/fill-mask", body)))
            for _ in range(2)
        ]
        for t in threads:
            t.start()
        time.sleep(0.3)  # both are held by the batcher, waiting for more
        srv.proc.send_signal(signal.SIGTERM)
        for t in threads:
            t.join(30)
        assert [r.status_code for r in results] == [200, 200]
        assert srv.proc.wait(30) == 0
    finally:
        srv.stop()


def test_serve_refuses_in_one_line_before_any_work(served_models, tmp_path, capsys, monkeypatch):
    """No serve extra, a folder that is no model, a busy port, a bad option: exit 2 with one line."""
    import importlib.util
    import socket

    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "fastapi" else real_find_spec(name, *a)
    )
    assert cli("serve", tmp_path / "nothing-here") == 2
    assert "pip install 'masklm[serve]'" in capsys.readouterr().err
    monkeypatch.undo()

    assert cli("serve", tmp_path / "nothing-here", "--port", "0") == 2
    assert "does not exist" in capsys.readouterr().err
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        assert cli("serve", served_models["tiny"], "--port", busy.getsockname()[1]) == 2
    assert "cannot listen" in capsys.readouterr().err
    assert cli("serve", served_models["tiny"], "--max-batch", "0") == 2
    assert "--max-batch must be at least 1" in capsys.readouterr().err
    for flag, value in (("--port", "99999"), ("--port", "-1"), ("--threads", "-2"), ("--threads", "0")):
        assert cli("serve", served_models["tiny"], flag, value) == 2
        err = capsys.readouterr().err
        assert err.startswith(f"error: {flag} must be") and len(err.strip().splitlines()) == 1
    assert cli("serve", served_models["tiny"], "--dtype", "float16", "--port", "0") == 2
    err = capsys.readouterr().err
    assert "--dtype" in err and len(err.strip().splitlines()) == 1


def test_batcher_gathers_concurrent_requests_and_survives_failures():
    """In-process, without a model: 10 requests submitted at once share forward passes of at most 4 features;
    a forward pass that raises fails only its own requests; beyond max_queue, QueueFull at once."""
    import asyncio
    from concurrent.futures import ThreadPoolExecutor as Pool

    from masklm.serve.batcher import Batcher, QueueFull, Work

    calls: list[list[int]] = []

    def forward(key, features):
        calls.append(list(features))
        if -1 in features:
            raise RuntimeError("boom")
        return [f * 10 for f in features]

    def work(*features: int) -> Work:
        return Work(list(features), [("k",)] * len(features), [1] * len(features), lambda outs: outs)

    async def scenario() -> tuple[list, list, bool]:
        batcher = Batcher(forward, Pool(1), max_batch=4, max_wait_ms=50, max_queue=12)
        worker = asyncio.create_task(batcher.run())
        answers = await asyncio.gather(*(batcher.submit(work(i)) for i in range(10)))
        failed = await asyncio.gather(batcher.submit(work(-1)), return_exceptions=True)
        after = await batcher.submit(work(7, 8))
        batcher.pending = batcher.max_queue  # as if 12 requests were held
        try:
            await batcher.submit(work(1))
            full = False
        except QueueFull:
            full = True
        worker.cancel()
        return answers + [after], failed, full

    answers, failed, full = asyncio.run(scenario())
    assert answers == [[i * 10] for i in range(10)] + [[70, 80]]
    assert sorted(len(c) for c in calls[:3]) == [2, 4, 4]  # 10 features in batches of at most 4
    assert isinstance(failed[0], RuntimeError) and full


def test_a_pair_model_refuses_a_single_text(served_models, tmp_path):
    """A classifier fine-tuned on text pairs (its saved data.text_pair_column) answers {"text", "text_pair"}
    and refuses a text alone with 400 instead of answering about an input it never learnt from."""
    from starlette.testclient import TestClient

    from masklm.serve.app import create_app
    from masklm.serve.models import load_served

    folder = tmp_path / "pair"
    shutil.copytree(served_models["cls"] / "model", folder)
    config = json.loads((folder / "config.json").read_text())
    config["task"]["data"]["text_pair_column"] = "text_b"
    (folder / "config.json").write_text(json.dumps(config))
    with TestClient(create_app([load_served(str(folder), "float32")])) as client:
        pair = client.post("/v1/predict", json={"inputs": {"text": "alpha", "text_pair": "great bravo"}})
        assert pair.status_code == 200 and pair.json()["outputs"][0]["label"] in ("neg", "pos")
        alone = client.post("/v1/predict", json={"inputs": ["alpha", "great bravo"]})
        assert alone.status_code == 400 and "inputs[0]" in alone.json()["error"]
        assert "text pairs" in alone.json()["error"]


def test_the_address_shown_is_one_a_browser_opens():
    """--port 0 listens on a port the system picks, which the start line showed as :0; an IPv6 host was shown
    without the brackets a URL needs."""
    from masklm.serve import check_port, url

    assert 0 < check_port("127.0.0.1", 0) <= 65535
    assert url("::1", 8000) == "http://[::1]:8000/" and url("127.0.0.1", 8000) == "http://127.0.0.1:8000/"


def test_a_second_signal_stops_the_server_at_once(monkeypatch, capsys):
    """uvicorn's own force exit on a second Ctrl-C cancelled every request in flight, each with a traceback and a
    plain-text 500, and exited 0; the server exits at once with 128 + the signal's number, as other commands do."""
    import os
    import signal

    import uvicorn

    from masklm.serve import _server_class

    server = _server_class()(uvicorn.Config(app=None))
    exits = []
    monkeypatch.setattr(os, "_exit", lambda code: exits.append(code))
    server.handle_exit(signal.SIGINT, None)  # the first: a graceful stop
    assert server.should_exit and exits == []
    server.handle_exit(signal.SIGINT, None)
    assert exits == [130] and "second signal (SIGINT): stopping at once" in capsys.readouterr().err


def test_an_app_answers_after_a_second_start(served_models):
    """The same app started twice (two `with TestClient(app)` in a row, or a Python user's own server loop): the
    second start's requests waited for ever on batchers bound to the first start's event loop."""
    import threading

    from starlette.testclient import TestClient

    from masklm.serve.app import create_app
    from masklm.serve.models import load_served

    app = create_app([load_served(str(served_models["cls"] / "model"), "float32")])
    answers: list[tuple[int, str]] = []

    def start_and_ask() -> None:
        with TestClient(app) as client:
            reply = client.post("/v1/predict", json={"inputs": "alpha bravo"})
            answers.append((reply.status_code, reply.json()["outputs"][0]["label"]))

    for start in (1, 2):
        worker = threading.Thread(target=start_and_ask, daemon=True)  # a hang fails the test, not the suite
        worker.start()
        worker.join(60)
        assert not worker.is_alive(), f"start {start}: the request got no answer"
    assert answers[0] == answers[1] and answers[0][0] == 200
