"""WNUT-16 fine-tuning with the random streams taken out: masklm fed Hugging Face's batch order, head init and
dropout seed, next to the Hugging Face loop of finetune_vs_hf.py.

    python -m benchmarks.finetune_same_streams --seed 0            # 6 epochs at lr 1e-4, as in docs/benchmarks.md
    python -m benchmarks.finetune_same_streams --epochs 1 --limit 300   # a smoke run (~1 min)

finetune_vs_hf.py compares the two tools as users run them: each draws its own head initialisation, data order
(masklm: length-bucketed batches) and dropout masks. This script removes those three differences, so that what
is left is implementation:
- masklm's `finetune()` gets, epoch by epoch, the batches of the DataLoader that `hf_fit` uses;
- its classifier starts from the weights `from_pretrained` gives the Hugging Face model for the same seed
  (rows matched by label name);
- both sides reseed torch's global generator just before training, so dropout draws from the same stream.
It prints both sides' validation F1 after every epoch, the best of each, and test F1 of the kept model.
Everything else (data, split, settings, evaluation) is finetune_vs_hf.py's.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import torch

from benchmarks import finetune_vs_hf as bench
from masklm import finetune as ft  # noqa: E402

DROPOUT_SEED = 777


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--epochs", type=int, default=6)
    ap.add_argument("--lr", type=float, default=1e-4)
    ap.add_argument("--limit", type=int, default=None, help="use only the first N training sentences")
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    a = ap.parse_args()
    args = argparse.Namespace(
        epochs=float(a.epochs), lr=a.lr, batch_size=32, max_length=128, seed=a.seed, threads=a.threads
    )
    torch.set_num_threads(a.threads)
    train, val, test = bench.wnut(a.seed)
    train = train[: a.limit]
    bench.unseen_tags_as_o(train, val, test)
    tags = sorted({t for s in train for t in s["tags"]})

    from transformers import AutoModelForTokenClassification

    # Hugging Face's batch order: the DataLoader of hf_fit, drawn epoch after epoch.
    loader = torch.utils.data.DataLoader(
        list(range(len(train))),
        batch_size=args.batch_size,
        shuffle=True,
        generator=torch.Generator().manual_seed(a.seed),
    )
    hf_order = [[b.tolist() for b in loader] for _ in range(a.epochs)]
    ft.EpochBatches.order = lambda self, epoch: hf_order[epoch]

    load_model = ft.load_model

    def load_with_hf_head(*pos, **kw):
        model, tok, info = load_model(*pos, **kw)
        if "labels" in kw:  # the fine-tuning start, not the later reload of the kept model
            torch.manual_seed(a.seed)  # as run_hf_ner does before from_pretrained
            hf = AutoModelForTokenClassification.from_pretrained(
                bench.encoder_dir(), num_labels=len(tags), dtype=torch.float32
            )
            rows = [tags.index(label) for label in kw["labels"]]
            with torch.no_grad():
                model.classifier.weight.copy_(hf.classifier.weight[rows])
                model.classifier.bias.copy_(hf.classifier.bias[rows])
        return model, tok, info

    from masklm.train import run as run_skeleton  # finetune() calls fit() through the run skeleton

    fit = run_skeleton.fit

    def seeded_fit(*pos, **kw):
        torch.manual_seed(DROPOUT_SEED)
        return fit(*pos, **kw)

    ft.load_model, run_skeleton.fit = load_with_hf_head, seeded_fit

    hf_fit = bench.hf_fit
    hf_curve: list[float] = []

    def seeded_hf_fit(model, feats, collate, evaluate, args):
        torch.manual_seed(DROPOUT_SEED)

        def recorded(m):
            hf_curve.append(evaluate(m))
            return hf_curve[-1]

        return hf_fit(model, feats, collate, recorded, args)

    bench.hf_fit = seeded_hf_fit

    with tempfile.TemporaryDirectory(prefix="same-streams-") as tmp:
        work = Path(tmp)
        parts = dict(zip(("train", "val", "test"), (train, val, test)))
        files = {k: bench.write_conll(work / f"ner_{k}.txt", v) for k, v in parts.items()}
        ours = bench.run_masklm("token-classification", files, args, work)
        metrics = (work / "masklm-token-classification" / "metrics.jsonl").read_text().splitlines()
        our_curve = [r["f1"] for r in map(json.loads, metrics) if "f1" in r]
    theirs = bench.run_hf_ner((train, val, test), args)

    print(f"WNUT-16 seed {a.seed}, {a.epochs} epochs at lr {a.lr}, HF batch order / head init / dropout seed")
    print("| | " + " | ".join(f"epoch {e + 1}" for e in range(len(hf_curve))) + " | best val | test |")
    print("|---|" + "---:|" * (len(hf_curve) + 2))
    for name, curve, r in (("masklm", our_curve, ours), ("transformers", hf_curve, theirs)):
        cells = " | ".join(f"{100 * v:.2f}" for v in curve)
        print(f"| {name} | {cells} | {100 * r['val']:.2f} | {100 * r['test']['f1']:.2f} |")


if __name__ == "__main__":
    main()
