"""Several processes under torchrun on CPU (gloo): DDP and FSDP2 train exactly like one process with the same global
batch, checkpoints resume with another number of processes, and a two-"node" launch works over loopback.

Every multi-process run here is 2 processes × 1 thread with the tiny preset and a few steps. The reference is one
process with the whole global batch of 8 sequences: the masks, the data each step sees and the loss (the mean over
all masked tokens of the step) do not depend on how the batch is split, so losses and weights agree to float32
rounding. Dropout is 0 in the tiny preset.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import read_metrics
from safetensors.torch import load_file

from masklm.cli import main
from masklm.config import load_config
from masklm.data.prepare import prepare
from masklm.data.shards import PackedDataset, batch_indices
from masklm.train.pretrain import MaskedBatches, split_global_batch

TOL = 1e-5
STEPS = 3  # the multi-process runs; the reference runs 2 * STEPS
COMMON = [
    "--preset", "tiny", "--train.schedule", "constant", "--train.warmup", "0", "--train.log_every", "1",
    "--train.checkpoint_every", str(STEPS), "--train.eval_every", str(STEPS), "--train.eval_sequences", "22",
]  # fmt: skip
DATA = {"data.one_doc_per_line": True, "data.val_fraction": 0.1}
DATA_ARGS = ["--one-doc-per-line", "--data.val_fraction", "0.1"]


def write_corpus(path: Path) -> Path:
    rng = random.Random(0)
    words = [f"w{i}" for i in range(150)]
    lines = [" ".join(rng.choice(words) for _ in range(rng.randint(20, 60))) for _ in range(300)]
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    return write_corpus(tmp_path_factory.mktemp("corpus") / "corpus.txt")


@pytest.fixture(scope="module")
def data(corpus) -> Path:
    out = corpus.parent / "data"
    prepare([corpus], out, load_config(preset="tiny", overrides=DATA).data, seed=0, progress=False)
    return out


@pytest.fixture(scope="module")
def reference(data) -> Path:
    """One process, micro-batch 8, 2 * STEPS steps (checkpoints and evaluations every STEPS)."""
    out = data.parent / "reference"
    argv = ["pretrain", *COMMON, "--data", str(data), "--output", str(out), "--train.batch_size", "8"]
    assert main([*argv, "--max-steps", str(2 * STEPS)]) == 0
    return out


# ----------------------------------------------------------------------------------------------------------------
# helpers


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(commands: list[list[str]], cwd: Path, timeout: float = 150) -> list[str]:
    """Run the commands side by side (each in its own process group), each with a time limit; their output."""
    env = {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "TOKENIZERS_PARALLELISM": "false",
        "GLOO_SOCKET_IFNAME": "lo",
    }
    logs = [cwd / f"launch{i}.log" for i in range(len(commands))]
    procs = []
    for cmd, log in zip(commands, logs):
        with open(log, "w") as f:
            procs.append(subprocess.Popen(cmd, cwd=cwd, env=env, stdout=f, stderr=subprocess.STDOUT,
                                          start_new_session=True))  # fmt: skip
    deadline = time.monotonic() + timeout
    try:
        for p in procs:
            p.wait(timeout=max(1.0, deadline - time.monotonic()))
    except subprocess.TimeoutExpired:
        pass
    finally:
        for p in procs:
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGKILL)  # the launcher and the workers it started
                p.wait()
    outputs = [log.read_text() for log in logs]
    for p, out in zip(procs, outputs):
        assert p.returncode == 0, out[-3000:]
    return outputs


def torchrun(*args: str) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", *args, "-m", "masklm", "pretrain"]


def train_losses(run: Path) -> dict[int, float]:
    return {r["step"]: r["loss"] for r in read_metrics(run) if r["split"] == "train"}


def val_losses(run: Path) -> dict[int, float]:
    return {r["step"]: r["loss"] for r in read_metrics(run) if r["split"] == "val"}


def assert_same_weights(a: Path, b: Path) -> None:
    wa, wb = load_file(str(a)), load_file(str(b))
    assert wa.keys() == wb.keys()
    for k in wa:
        assert torch.allclose(wa[k], wb[k], rtol=0, atol=TOL), (k, (wa[k] - wb[k]).abs().max())


def assert_same_losses(got: dict[int, float], want: dict[int, float], steps: range) -> None:
    for s in steps:
        assert abs(got[s] - want[s]) <= TOL, (s, got[s], want[s])


def meta(data: Path) -> dict:
    return {k: v for k, v in json.loads((data / "meta.json").read_text()).items() if k != "created"}


def reference_checkpoint(reference: Path, step: int) -> Path:
    return reference / "checkpoints" / f"step_{step:08d}" / "model.safetensors"


# ----------------------------------------------------------------------------------------------------------------
# data: disjoint shares whose union is the one-process batch


def test_ranks_share_each_step_disjointly_with_the_masks_of_one_process(data):
    ds = PackedDataset(data, "train")
    meta = json.loads((data / "meta.json").read_text())
    sp = meta["special_ids"]
    specials = [sp["pad"], sp["cls"], sp["sep"], sp["mask"], sp["unk"]]

    def batches(batch_size: int, rank: int, world: int) -> MaskedBatches:
        cfg = load_config(preset="tiny", overrides={"train.batch_size": batch_size})
        return MaskedBatches(ds, cfg, specials, sp["mask"], meta["vocab_size"], rank, world)

    b, n = 3, len(ds)
    one = batches(4 * b, 0, 1)  # global batch 4b in one micro-batch
    ranks = [batches(b, r, 2) for r in range(2)]  # 2 processes × b × accumulation 2
    seen: list[np.ndarray] = []
    for step in range(n // (4 * b) + 2):  # a little past the end of the first epoch
        parts = [ranks[r](2 * step + m) for m in range(2) for r in range(2)]  # the order of the global stream
        whole = one(step)
        for key in ("input_ids", "labels"):
            assert torch.equal(torch.cat([p[key] for p in parts]), whole[key]), (step, key)
        idx = [batch_indices(2 * step + m, b, n, 0, r, 2) for m in range(2) for r in range(2)]
        assert np.array_equal(np.concatenate(idx), batch_indices(step, 4 * b, n, 0))
        seen += idx
    first_epoch = np.concatenate(seen)[:n]
    assert sorted(first_epoch.tolist()) == list(range(n))  # disjoint within an epoch, together all of it


def test_split_global_batch_keeps_the_global_batch():
    assert split_global_batch(8, 1, 4) == (4, 2)  # 2 processes × 4 → 1 process × 4 × accumulation 2
    assert split_global_batch(8, 2, 8) == (4, 1)
    assert split_global_batch(8, 4, 2) == (2, 1)
    assert split_global_batch(24, 2, 5) == (4, 3)
    with pytest.raises(Exception, match="divide"):
        split_global_batch(8, 3, 8)


# ----------------------------------------------------------------------------------------------------------------
# several processes == one process


def test_ddp_over_two_loopback_nodes_equals_one_process(data, reference, tmp_path):
    """DDP, 2 "nodes" × 1 process × micro-batch 2 × accumulation 2 == 1 process × 8, over a c10d rendezvous."""
    out = tmp_path / "ddp"
    port = free_port()
    args = [*COMMON, "--data", str(data), "--output", str(out), "--max-steps", str(STEPS),
            "--train.batch_size", "2", "--train.grad_accum", "2"]  # fmt: skip
    nodes = [
        [*torchrun("--nnodes", "2", "--nproc_per_node", "1", "--node_rank", str(rank), "--rdzv-backend", "c10d",
                   "--rdzv-endpoint", f"127.0.0.1:{port}", "--rdzv-conf", "join_timeout=60"), *args]
        for rank in range(2)
    ]  # fmt: skip
    logs = launch(nodes, tmp_path)
    text = "".join(logs)
    assert text.count("held-out masked-token accuracy") == 1  # only rank 0 reports
    assert "global batch 8 (2 x 2 accumulation x 2 processes)" in text
    summary = json.loads((out / "summary.json").read_text())
    assert summary["global_batch"] == 8 and summary["processes"] == 2
    assert sorted(train_losses(out)) == list(range(1, STEPS + 1))  # one metrics line per step: rank 0 writes
    assert_same_losses(train_losses(out), train_losses(reference), range(1, STEPS + 1))
    assert_same_losses(val_losses(out), val_losses(reference), range(STEPS, STEPS + 1))
    assert_same_weights(out / "model" / "model.safetensors", reference_checkpoint(reference, STEPS))
    assert (out / "checkpoints" / f"step_{STEPS:08d}" / "model.safetensors").is_file()


def test_fsdp_with_accumulation_equals_one_process_and_resumes_in_one(corpus, data, reference, tmp_path):
    """FSDP2, 2 processes × 2 × accumulation 2 == 1 process × 8; its sharded checkpoint resumes in 1 process
    (micro-batch 2 × accumulation 4) exactly as the uninterrupted run. --input: rank 0 prepares the data."""
    out = tmp_path / "fsdp"
    args = [*COMMON, "--input", str(corpus), *DATA_ARGS, "--output", str(out), "--dist.strategy", "fsdp",
            "--train.batch_size", "2", "--train.grad_accum", "2"]  # fmt: skip
    launch([[*torchrun("--standalone", "--nproc_per_node", "2"), *args, "--max-steps", str(STEPS)]], tmp_path)
    prepared = out / "data"
    assert meta(prepared) == meta(data)  # the same data as the fixture's
    assert_same_losses(train_losses(out), train_losses(reference), range(1, STEPS + 1))
    assert_same_losses(val_losses(out), val_losses(reference), range(STEPS, STEPS + 1))
    assert_same_weights(out / "model" / "model.safetensors", reference_checkpoint(reference, STEPS))
    ckpt = out / "checkpoints" / f"step_{STEPS:08d}"
    manifest = json.loads((ckpt / "manifest.json").read_text())
    assert manifest["format"] == "dcp" and {"__0_0.distcp", "__1_0.distcp"} <= set(manifest["files"])
    assert not (ckpt / "model.safetensors").exists()

    # The same command in one process, --resume, to the reference's end: same global batch, same stream.
    assert main(["pretrain", *COMMON, "--data", str(prepared), "--output", str(out), "--resume",
                 "--max-steps", str(2 * STEPS)]) == 0  # fmt: skip
    assert_same_losses(train_losses(out), train_losses(reference), range(STEPS + 1, 2 * STEPS + 1))
    assert_same_losses(val_losses(out), val_losses(reference), range(2 * STEPS, 2 * STEPS + 1))
    assert_same_weights(out / "model" / "model.safetensors", reference / "model" / "model.safetensors")


def test_one_process_checkpoint_resumes_with_two_fsdp_processes(reference, data, tmp_path):
    """The reference stopped at STEPS (a single-file checkpoint), resumed by 2 FSDP processes × 4: the same."""
    out = tmp_path / "half"
    shutil.copytree(reference, out)
    for name in ("model", f"checkpoints/step_{2 * STEPS:08d}"):
        shutil.rmtree(out / name)
    for name in ("summary.json", "curves.png"):
        (out / name).unlink(missing_ok=True)
    rows = (out / "metrics.jsonl").read_text().splitlines()
    (out / "metrics.jsonl").write_text("".join(r + "\n" for r in rows if json.loads(r)["step"] <= STEPS))
    args = [*COMMON, "--data", str(data), "--output", str(out), "--resume", "--max-steps", str(2 * STEPS),
            "--dist.strategy", "fsdp"]  # fmt: skip
    (log,) = launch([[*torchrun("--standalone", "--nproc_per_node", "2"), *args]], tmp_path)
    assert "micro-batch 4 x accumulation 1 keeps the global batch of 8" in log
    assert_same_losses(train_losses(out), train_losses(reference), range(STEPS + 1, 2 * STEPS + 1))
    assert_same_weights(out / "model" / "model.safetensors", reference / "model" / "model.safetensors")
