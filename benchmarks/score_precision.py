"""What bfloat16 does to `masklm score`: PLL differences from float32 and minimal-pair decisions that change.

    python -m benchmarks.score_precision --model runs/demo              # agreement pairs built here, 300 sentences
    python -m benchmarks.score_precision --model runs/demo --pairs blimp.jsonl --no-docs

`masklm score --dtype float32` (the default) is exact to float32 rounding; bfloat16 is 2.5x faster on CPUs with
bf16 matrix units (docs/benchmarks.md, "masklm score: pseudo-log-likelihood speed"). Whether it could be the
default depends on what it changes, which this measures on a trained model: the largest and mean absolute PLL
difference from float32 over Rotten Tomatoes sentences, and how many minimal pairs (by default the subject-verb
agreement pairs of benchmarks/agreement_pairs.py) get the other decision. Four ways of using bf16, each against
float32 on the same inputs:

- `bf16 weights`: the model held in bfloat16, what `--dtype bfloat16` (and `auto` on such CPUs) does;
- `bf16 encoder, fp32 head`: the encoder in bfloat16, the vocabulary projection and log-softmax in float32;
- `autocast`: float32 weights, matrix products in bf16 under torch.autocast;
- `autocast encoder, fp32 head`: autocast for the encoder only.

The wall seconds are one pass each (after a warm-up pass), a rough guide; benchmarks/score_speed.py is the speed
measurement.
"""

from __future__ import annotations

import argparse
import copy
import time

import torch

from benchmarks import common
from benchmarks.agreement_pairs import build_pairs
from benchmarks.score_speed import rotten_tomatoes


def variants(model: torch.nn.Module) -> dict:
    """{name: logits_fn} over one float32 MaskedLM (see the module docstring)."""
    low = copy.deepcopy(model).to(torch.bfloat16)

    def bf16_encoder(ids, att, pos):
        return model.vocab_logits(low.encoder(ids, att, None, pos).float())

    def autocast(ids, att, pos):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            return model.logits_at(ids, att, pos)

    def autocast_encoder(ids, att, pos):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            h = model.encoder(ids, att, None, pos)
        return model.vocab_logits(h.float())

    return {
        "float32": model.logits_at,
        "bf16 weights": low.logits_at,
        "bf16 encoder, fp32 head": bf16_encoder,
        "autocast": autocast,
        "autocast encoder, fp32 head": autocast_encoder,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", required=True, help="a masklm run or model folder with a masked-LM head")
    ap.add_argument("--pairs", help="minimal pairs (JSONL); default: the agreement pairs, 200 per group")
    ap.add_argument("--sentences", type=int, default=300)
    ap.add_argument("--threads", type=int, default=None)
    common.add_common_args(ap)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    from masklm.infer.fill_mask import FillMask
    from masklm.infer.score import Scorer, read_pairs

    pairs = read_pairs(args.pairs) if args.pairs else build_pairs(per_group=200, seed=0)
    sentences = rotten_tomatoes(args.sentences)
    fm = FillMask.load(args.model, dtype="float32")
    base = Scorer.from_model(fm.model, fm.tokenizer)
    n = len(pairs)
    pair_sentences = [p["sentence_good"] for p in pairs] + [p["sentence_bad"] for p in pairs]
    results: dict[str, dict] = {}
    for name, fn in variants(fm.model).items():
        scorer = Scorer(fn, fm.tokenizer, base.max_len, device=base.device)
        scorer.score(sentences[:10])
        t0 = time.perf_counter()
        plls = [s.pll for s in scorer.score(sentences)]
        seconds = time.perf_counter() - t0
        pp = [s.pll for s in scorer.score(pair_sentences)]
        results[name] = {"plls": plls, "seconds": seconds, "decisions": [pp[i] > pp[n + i] for i in range(n)]}
    ref = results["float32"]
    rows = []
    for name, r in results.items():
        d = [abs(a - b) for a, b in zip(r["plls"], ref["plls"])]
        flips = sum(a != b for a, b in zip(r["decisions"], ref["decisions"]))
        rows.append(
            [
                name,
                f"{r['seconds']:.1f}",
                f"{max(d):.3f}",
                f"{sum(d) / len(d):.3f}",
                f"{100 * sum(r['decisions']) / n:.2f}",
                f"{flips} ({100 * flips / n:.1f}%)",
            ]
        )
    body = (
        f"- Model: `{args.model}`; {len(sentences)} Rotten Tomatoes sentences; {n} minimal pairs "
        f"({args.pairs or 'benchmarks.agreement_pairs, at most 200 per group (the simple group has 168), seed 0'})\n"
        "- ΔPLL: absolute difference from float32 per sentence (nats); flipped: pairs whose decision (good "
        "sentence scored higher) differs from float32's\n\n"
        + common.table(
            ["variant", "wall s (one pass)", "max ΔPLL", "mean ΔPLL", "pair accuracy", "flipped pairs"], rows
        )
        + "\n"
    )
    print(body)
    if not args.no_docs:
        threads = f"{torch.get_num_threads()} torch threads"
        common.append_docs("masklm score in bfloat16: what it changes", body, args.shared, threads)


if __name__ == "__main__":
    main()
