"""Faults during training never lose a run: kills, signals, damaged checkpoints, non-finite values, a full disk,
files of the wrong kind.

The runs are the tiny preset on one thread with dropout on, so an exact resume is a real test (the dropout RNG
state must come back too). "Identical" means torch.equal on every tensor of the final model/model.safetensors,
compared with a run that was never interrupted. Kills and SIGTERM hit a real `python -m masklm pretrain` process;
the other faults are injected in-process by monkeypatching one function.
"""

from __future__ import annotations

import errno
import io
import json
import math
import os
import random
import resource
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from helpers import file_snapshot, final_weights, prepare_tiny, read_metrics, write_walk_corpus
from safetensors import SafetensorError
from safetensors.torch import load_file

import masklm.objectives.mlm as mlm_module
import masklm.train.checkpoint as ckpt
import masklm.train.logger as logger_module
from masklm.cli import main
from masklm.compare import load_run
from masklm.errors import UserError
from masklm.train.loop import _StopFlag
from masklm.utils import atomic_write_text

ARGS = [
    "--preset", "tiny", "--train.threads", "1", "--train.eval_every", "0", "--train.log_every", "5",
    "--model.hidden_dropout_prob", "0.1", "--model.attention_probs_dropout_prob", "0.1",
    "--train.checkpoint_every", "2",
]  # fmt: skip
KILL_STEPS = 150  # the subprocess runs: a few seconds of training on one thread
STEPS = 12  # the in-process runs


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("faults")
    return prepare_tiny(write_walk_corpus(root / "corpus", n_docs=40), root / "data")


def train(data: Path, out: Path, *extra: str, steps: int = STEPS) -> int:
    return main(
        ["pretrain", *ARGS, "--data", str(data), "--output", str(out), "--max-steps", str(steps), *extra]
    )


def assert_identical(a: Path, b: Path) -> None:
    wa, wb = final_weights(a), final_weights(b)
    assert wa.keys() == wb.keys()
    different = [k for k in wa if not torch.equal(wa[k], wb[k])]
    assert not different, f"{len(different)} tensors differ, e.g. {different[0]}"


@pytest.fixture(scope="module")
def reference(data) -> Path:
    """The uninterrupted in-process run that the interrupted ones must reproduce."""
    out = data.parent / "reference"
    assert train(data, out) == 0
    return out


@pytest.fixture(scope="module")
def kill_reference(data) -> Path:
    """The uninterrupted run the killed subprocesses must reproduce (in-process: same numbers on CPU)."""
    out = data.parent / "kill_reference"
    assert train(data, out, steps=KILL_STEPS) == 0
    return out


def checkpoints(run: Path) -> list[str]:
    return sorted(p.name for p in (run / "checkpoints").iterdir())


def interrupt_at(monkeypatch, step: int, sig: int = signal.SIGINT) -> None:
    """Send `sig` to this process in the middle of step `step` (in its loss function)."""
    real, calls = mlm_module.mlm_loss, []

    def loss(model, batch):
        calls.append(1)
        if len(calls) == step:
            os.kill(os.getpid(), sig)
        return real(model, batch)

    monkeypatch.setattr(mlm_module, "mlm_loss", loss)


# ----------------------------------------------------------------------------------------------------------------
# SIGKILL at random moments (one inside a checkpoint write), SIGTERM: a real process


class Run:
    """`python -m masklm pretrain ...` in a subprocess, its stderr in a file."""

    def __init__(self, data: Path, out: Path, log: Path, resume: bool) -> None:
        argv = [sys.executable, "-m", "masklm", "pretrain", *ARGS, "--data", str(data), "--output", str(out),
                "--max-steps", str(KILL_STEPS), *(["--resume"] if resume else [])]  # fmt: skip
        self.log = log
        self.stderr = open(log, "w")  # noqa: SIM115 (closed in wait)
        self.proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=self.stderr)

    def wait_for_training(self, timeout: float = 60) -> None:
        """Until the process has built everything and entered fit() (it logs "pretraining ..." just before)."""
        end = time.monotonic() + timeout
        while "pretraining " not in self.log.read_text():
            assert self.proc.poll() is None, self.log.read_text()
            assert time.monotonic() < end, "the run did not start training"
            time.sleep(0.02)

    def kill(self, sig: int = signal.SIGKILL) -> None:
        assert self.proc.poll() is None, "the run ended before it could be killed; raise KILL_STEPS"
        self.proc.send_signal(sig)

    def wait(self, timeout: float = 60) -> int:
        try:
            return self.proc.wait(timeout)
        finally:
            self.stderr.close()


def test_sigkill_anywhere_then_resume_is_exact(data, kill_reference, tmp_path):
    """SIGKILL at seeded random moments (a random step, then a random fraction of a step) and once inside a
    checkpoint write; --resume after each; the final weights are those of the uninterrupted run."""
    rng = random.Random(1234)
    out = tmp_path / "run"
    ckpt_dir = out / "checkpoints"

    def half_written() -> set[str]:
        return {n for n in os.listdir(ckpt_dir) if n.startswith(".tmp_step_")} if ckpt_dir.is_dir() else set()

    def newest_step() -> int:
        steps = (
            [int(n[5:]) for n in os.listdir(ckpt_dir) if n.startswith("step_")] if ckpt_dir.is_dir() else []
        )
        return max(steps, default=0)

    inside_write = kills = 0
    plan = [("random", rng.randrange(10, 40)), ("checkpoint-write", 0), ("random", rng.randrange(60, 90)),
            ("random", rng.randrange(110, 130))]  # fmt: skip
    while plan:
        what, step = plan.pop(0)
        stale = half_written()  # left by an earlier kill; the run deletes one when it writes that step again
        run = Run(data, out, tmp_path / f"log{kills}.txt", resume=kills > 0)
        run.wait_for_training()
        if what == "random":  # a checkpoint at or after `step` is written: wait a random part of a step more
            while newest_step() < step:
                assert run.proc.poll() is None, "the run ended before it could be killed"
                time.sleep(0.002)
            time.sleep(rng.uniform(0.0, 0.03))
        else:  # the moment a new .tmp_step_* folder appears: the process is writing a checkpoint
            while not half_written() - stale:
                assert run.proc.poll() is None, "the run ended before it could be killed"
        run.kill()
        assert run.wait() == -signal.SIGKILL
        kills += 1
        if what == "checkpoint-write":
            if half_written() - stale:
                inside_write += 1  # killed before the rename: a half-written checkpoint is left behind
            elif kills < 8:
                plan.insert(0, (what, step))  # the write finished between our look and the kill: try again
        latest = ckpt.latest_checkpoint(ckpt_dir)
        assert latest is not None and ckpt.is_valid(latest)
    assert inside_write >= 1 and kills >= 4

    final = Run(data, out, tmp_path / "final.txt", resume=True)
    assert final.wait(timeout=120) == 0, (tmp_path / "final.txt").read_text()
    assert "resumed from" in (tmp_path / "final.txt").read_text()
    assert_identical(out, kill_reference)
    # the half-written and half-deleted checkpoints the kills left behind are gone; keep_last (2) remain
    assert sorted(os.listdir(ckpt_dir)) == [f"step_{KILL_STEPS - 2:08d}", f"step_{KILL_STEPS:08d}"]


def test_sigterm_stops_within_the_step_and_resumes_exactly(data, kill_reference, tmp_path):
    out = tmp_path / "run"
    run = Run(data, out, tmp_path / "log.txt", resume=False)
    run.wait_for_training()
    time.sleep(0.5)
    start = time.monotonic()
    run.kill(signal.SIGTERM)
    assert run.wait(timeout=30) == 0
    took = time.monotonic() - start
    log = (tmp_path / "log.txt").read_text()
    assert took < 5, f"took {took:.1f} s to stop"  # one step and a checkpoint, plus the interpreter's exit
    assert "received SIGTERM" in log and "Continue with the same command plus --resume" in log
    assert not (out / "summary.json").exists() and not (out / "model").exists()
    latest = ckpt.latest_checkpoint(out / "checkpoints")
    assert latest is not None and ckpt.is_valid(latest)
    stopped_at = int(latest.name.split("_")[1])
    assert 0 < stopped_at < KILL_STEPS
    assert f"stopped at step {stopped_at}" in log

    assert train(data, out, "--resume", steps=KILL_STEPS) == 0
    assert_identical(out, kill_reference)


def test_sigint_in_process_then_resume_is_exact(data, reference, tmp_path, monkeypatch, capsys):
    out = tmp_path / "run"
    interrupt_at(monkeypatch, 5)
    assert train(data, out) == 0  # SIGINT in step 5: the step is finished and saved
    err = capsys.readouterr().err
    assert "received SIGINT" in err and "stopped at step 5" in err and "--resume" in err
    assert checkpoints(out) == ["step_00000004", "step_00000005"]
    monkeypatch.undo()
    assert train(data, out, "--resume") == 0
    assert_identical(out, reference)


def test_a_signal_at_a_checkpoint_step_writes_that_checkpoint_once(
    data, reference, tmp_path, monkeypatch, capsys
):
    """A stop in a step that checkpoints anyway wrote the same checkpoint a second time, deleting the first before
    the second took its place (with keep_last 1, a window with no checkpoint at all)."""
    out = tmp_path / "run"
    interrupt_at(monkeypatch, 4)  # train.checkpoint_every 2
    written = []
    real = ckpt.save
    monkeypatch.setattr(ckpt, "save", lambda root, step, *a: written.append(step) or real(root, step, *a))
    assert train(data, out, "--train.keep_last", "1") == 0
    assert "stopped at step 4" in capsys.readouterr().err
    assert written == [2, 4] and checkpoints(out) == ["step_00000004"]
    monkeypatch.undo()
    assert train(data, out, "--resume") == 0
    assert_identical(out, reference)


def test_a_checkpoint_written_again_replaces_the_old_one_by_renames(tmp_path, monkeypatch):
    """Writing a step whose checkpoint exists moves the old one aside and deletes it after the new one is in
    place: no large delete while neither is there."""
    final, tmp = tmp_path / "step_00000004", tmp_path / ".tmp_step_00000004"
    for folder, text in ((final, "old"), (tmp, "new")):
        folder.mkdir()
        (folder / "f").write_text(text)
    seen = []
    real = shutil.rmtree
    monkeypatch.setattr(
        shutil, "rmtree", lambda p, **k: seen.append((Path(p).name, final.is_dir())) or real(p, **k)
    )
    ckpt._move_into_place(tmp, final)
    assert (final / "f").read_text() == "new" and sorted(p.name for p in tmp_path.iterdir()) == [final.name]
    assert ("." + "old_step_00000004", True) in seen  # deleted once the new one was in place
    assert ckpt.step_of(tmp_path / ".old_step_00000004") == 4  # what a kill leaves is pruned like .tmp_


def test_a_signal_in_the_last_step_finishes_the_run(data, reference, tmp_path, monkeypatch, capsys):
    """A stop in the last step ends the run as its budget does, closing evaluation included: stopped there, the
    run was done without it, and resuming it found nothing left to do (metrics.jsonl and summary.json kept an
    older evaluation for good)."""
    out = tmp_path / "run"
    interrupt_at(monkeypatch, STEPS)
    assert train(data, out) == 0
    err = capsys.readouterr().err
    assert "received SIGINT" in err and "stopped at step" not in err
    assert (out / "summary.json").exists() and (out / "model" / "model.safetensors").exists()
    assert_identical(out, reference)

    def records(run: Path) -> list[tuple]:
        return [(r["step"], r["split"], r.get("loss")) for r in read_metrics(run)]

    assert records(out) == records(reference) and records(out)[-1][:2] == (STEPS, "val")


def test_a_run_folder_that_lost_its_settings_or_records(data, tmp_path, monkeypatch, capsys):
    """Resuming: checkpoints without config.yaml are refused (the command's settings would continue another run);
    a missing metrics.jsonl gets a note; a truncated config.yaml says how to fix it."""
    out = tmp_path / "run"
    interrupt_at(monkeypatch, 5)
    assert train(data, out) == 0
    monkeypatch.undo()
    config = (out / "config.yaml").read_text()
    (out / "config.yaml").unlink()
    before = file_snapshot(out)
    capsys.readouterr()
    assert train(data, out, "--resume") == 2
    assert "has checkpoints but no config.yaml (its settings)" in capsys.readouterr().err
    assert file_snapshot(out) == before
    (out / "config.yaml").write_text(config[: len(config) // 2] + "\n  - [")
    assert train(data, out, "--resume") == 2
    assert "put its config.yaml back" in capsys.readouterr().err
    (out / "config.yaml").write_text(config)
    (out / "metrics.jsonl").unlink()
    assert train(data, out, "--resume") == 0
    assert "metrics.jsonl is missing; the records of this run start at step 6" in capsys.readouterr().err
    # a run killed before its first checkpoint, resumed: it starts over, and records the command it started with
    fresh = tmp_path / "fresh"
    fresh.mkdir()
    (fresh / "config.yaml").write_text(config)
    assert train(data, fresh, "--resume") == 0
    assert "--resume" in (fresh / "command.txt").read_text()


def test_second_signal_exits_at_once():
    with _StopFlag() as stop:
        os.kill(os.getpid(), signal.SIGTERM)
        assert stop.requested
        with pytest.raises(SystemExit) as exit_info:
            os.kill(os.getpid(), signal.SIGINT)
    assert exit_info.value.code == 128 + signal.SIGINT


# ----------------------------------------------------------------------------------------------------------------
# Damaged checkpoints


def truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


DAMAGE = {
    "truncated weights": lambda c: truncate(c / "model.safetensors"),
    "no manifest": lambda c: (c / "manifest.json").unlink(),
    "garbled trainer state": lambda c: (c / "trainer.pt").write_bytes(b"not a checkpoint"),
    "manifest of a list": lambda c: (c / "manifest.json").write_text(
        json.dumps({"files": ckpt.CHECKPOINT_FILES})
    ),
}


@pytest.mark.parametrize("damage", list(DAMAGE))
def test_damaged_newest_checkpoint_is_skipped(data, reference, tmp_path, monkeypatch, capsys, damage):
    out = tmp_path / "run"
    interrupt_at(monkeypatch, 7)
    assert train(data, out) == 0
    assert checkpoints(out) == ["step_00000006", "step_00000007"]
    DAMAGE[damage](out / "checkpoints" / "step_00000007")
    monkeypatch.undo()
    capsys.readouterr()
    assert train(data, out, "--resume") == 0
    err = capsys.readouterr().err
    assert "skipped 1 incomplete or damaged checkpoint(s); resuming from step_00000006" in err
    assert_identical(out, reference)


def test_keep_last_one_never_deletes_the_checkpoint_just_written(data, tmp_path, monkeypatch, capsys):
    """With train.keep_last 1, a damaged newer checkpoint (from before the resume) must not count as the one to
    keep: the checkpoint just written stays."""
    out = tmp_path / "run"
    interrupt_at(monkeypatch, 7)
    assert train(data, out, "--train.keep_last", "1") == 0
    assert checkpoints(out) == ["step_00000007"]
    truncate(out / "checkpoints" / "step_00000007" / "model.safetensors")
    interrupt_at(monkeypatch, 3)  # the resumed run starts over (nothing valid) and is stopped at step 3
    capsys.readouterr()
    assert train(data, out, "--resume") == 0
    assert "skipped 1 incomplete or damaged checkpoint(s)" in capsys.readouterr().err
    latest = ckpt.latest_checkpoint(out / "checkpoints")
    assert latest is not None and latest.name == "step_00000003"


# ----------------------------------------------------------------------------------------------------------------
# Non-finite loss


def nan_at(monkeypatch, steps: set[int]) -> None:
    real, calls = mlm_module.mlm_loss, []

    def loss(model, batch):
        calls.append(1)
        value = real(model, batch)
        return value * math.nan if len(calls) in steps else value

    monkeypatch.setattr(mlm_module, "mlm_loss", loss)


def all_finite(path: Path) -> bool:
    if path.suffix == ".safetensors":
        tensors = list(load_file(str(path)).values())
    else:
        tensors, todo = [], [torch.load(path, weights_only=True)]
        while todo:
            x = todo.pop()
            if isinstance(x, dict):
                todo += x.values()
            elif isinstance(x, list | tuple):
                todo += x
            elif isinstance(x, torch.Tensor) and x.is_floating_point():
                tensors.append(x)
    return all(bool(torch.isfinite(t).all()) for t in tensors)


def test_nonfinite_skip_counts_steps_and_keeps_nan_out(data, tmp_path, monkeypatch, capsys):
    out = tmp_path / "run"
    nan_at(monkeypatch, {3, 4, 9})
    assert train(data, out, "--train.keep_last", "10") == 0
    assert "non-finite loss or gradients, step skipped" in capsys.readouterr().err
    summary = json.loads((out / "summary.json").read_text())
    assert summary["skipped_steps"] == 3 and summary["steps"] == STEPS
    files = [out / "model" / "model.safetensors"]
    for c in (out / "checkpoints").iterdir():
        files += [c / "model.safetensors", c / "optimizer.pt"]
    assert len(files) == 1 + 2 * STEPS // 2
    assert all(all_finite(f) for f in files)
    train_losses = [r["loss"] for r in read_metrics(out)]
    assert all(math.isfinite(x) for x in train_losses)


def test_nonfinite_stop_exits_2_and_keeps_the_last_good_checkpoint(data, tmp_path, monkeypatch, capsys):
    out = tmp_path / "run"
    nan_at(monkeypatch, {5})
    capsys.readouterr()
    assert train(data, out, "--train.nonfinite", "stop") == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("error: loss or gradients became non-finite at step 5")
    assert sum("error:" in line for line in err) == 1
    assert checkpoints(out) == ["step_00000002", "step_00000004"]
    assert all(ckpt.is_valid(c) for c in (out / "checkpoints").iterdir())
    assert all_finite(out / "checkpoints" / "step_00000004" / "model.safetensors")
    assert not (out / "model").exists()
    # the fix the message suggests: resume from the last good checkpoint with a lower learning rate
    monkeypatch.undo()
    assert (
        main(["pretrain", *ARGS, "--data", str(data), "--output", str(out), "--resume", "--train.lr", "1e-4"])
        == 0
    )
    summary = json.loads((out / "summary.json").read_text())
    assert summary["steps"] == STEPS  # the saved budget holds when the command gives none
    assert yaml.safe_load((out / "config.yaml").read_text())["train"]["lr"] == 1e-4
    assert all_finite(out / "model" / "model.safetensors")


def test_huge_learning_rate_is_caught(data, tmp_path, capsys):
    """A real overflow, not an injected NaN: lr 1e30 blows the weights up after the first step."""
    out = tmp_path / "run"
    assert train(data, out, "--train.lr", "1e30", "--train.nonfinite", "stop", steps=4) == 2
    assert "non-finite" in capsys.readouterr().err.strip().splitlines()[-1]
    assert train(data, tmp_path / "skip", "--train.lr", "1e30", steps=4) == 0
    assert json.loads((tmp_path / "skip" / "summary.json").read_text())["skipped_steps"] >= 2


# ----------------------------------------------------------------------------------------------------------------
# A full disk


def enospc(*args, **kwargs):
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(args[1]))


def safetensors_enospc(*args, **kwargs):  # what safetensors really raises on a full disk
    raise SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")


FULL_DISK = {  # where the disk fills up: (module, function, replacement)
    "checkpoint weights": ("masklm.model.base", "save_file", safetensors_enospc),
    "checkpoint optimizer state": ("masklm.train.checkpoint", "_torch_save", enospc),
    "final model": ("masklm.train.pretrain", "save_model", enospc),
}


@pytest.mark.parametrize("where", list(FULL_DISK))
def test_full_disk_is_one_line_and_the_run_resumes(data, reference, tmp_path, monkeypatch, capsys, where):
    out = tmp_path / "run"
    module, name, fail = FULL_DISK[where]
    real = getattr(sys.modules[module], name)

    def flaky(*args, **kwargs):  # the disk is full from the checkpoint of step 10 on / for the final model
        if where == "final model" or ".tmp_step_00000010" in str(args[1]):
            return fail(*args, **kwargs)
        return real(*args, **kwargs)

    monkeypatch.setattr(sys.modules[module], name, flaky)
    capsys.readouterr()
    assert train(data, out) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("error: ") and sum("error:" in line for line in err) == 1, err
    assert "No space left on device" in err[-1] and "Traceback" not in "\n".join(err)
    assert not list((out / "checkpoints").glob(".tmp_step_*"))  # no half-written checkpoint left behind
    latest = ckpt.latest_checkpoint(out / "checkpoints")
    assert latest is not None and ckpt.is_valid(latest)
    assert latest.name == ("step_00000012" if where == "final model" else "step_00000008")
    monkeypatch.undo()  # space freed
    assert train(data, out, "--resume") == 0
    assert_identical(out, reference)


def test_full_disk_in_the_middle_of_a_metrics_line_then_resume(
    data, reference, tmp_path, monkeypatch, capsys
):
    """The disk fills up while a metrics.jsonl line is written: the error names the file, and the resumed run
    cuts the partial line off instead of fusing its first record with it (which compare and curves.png refuse)."""
    out = tmp_path / "run"

    class FillsUp(io.TextIOWrapper):  # the line of step 10 gets half-way to the disk
        def write(self, text):
            if text.startswith('{"step": 10,'):
                super().write(text[:40])
                self.flush()
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            return super().write(text)

    def open_filling_up(path, mode="r", encoding=None):
        return FillsUp(open(path, "ab"), encoding=encoding) if mode == "a" else open(path, mode)

    monkeypatch.setattr(logger_module, "open", open_filling_up, raising=False)
    assert train(data, out) == 2
    error = last_error(capsys)
    assert "No space left on device" in error and str(out / "metrics.jsonl") in error
    monkeypatch.undo()  # space freed
    assert train(data, out, "--resume") == 0
    lines = (out / "metrics.jsonl").read_text().splitlines()
    assert all(isinstance(json.loads(line), dict) for line in lines)
    assert load_run(out).rows[-1]["step"] == STEPS
    assert (out / "curves.png").is_file()
    assert_identical(out, reference)


def test_a_file_too_large_for_the_disk_is_named(tmp_path, capsys):
    """A write that fails for lack of space names no file; atomic writes (config.yaml, summary.json, a model's
    config.json) say which, rather than '(unknown file)'."""
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (1000, hard))  # fails a write as a full disk does
    try:
        with pytest.raises(OSError) as failed:
            atomic_write_text(tmp_path / "summary.json", "x" * 5000)
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
    assert failed.value.errno == errno.EFBIG and failed.value.filename == str(tmp_path / "summary.json")
    assert list(tmp_path.iterdir()) == []  # no temporary file left behind


WRONG_KIND = {  # a run folder where a file stands in place of a folder masklm writes, or the reverse
    "checkpoints is a file": lambda run: (run / "checkpoints").write_text("x"),
    "metrics.jsonl is a folder": lambda run: (run / "metrics.jsonl").mkdir(),
}


@pytest.mark.parametrize("kind", list(WRONG_KIND))
def test_a_file_or_folder_of_the_wrong_kind_in_a_run_is_one_line(data, tmp_path, capsys, kind):
    out = tmp_path / "run"
    out.mkdir()
    (out / "config.yaml").write_text(yaml.safe_dump({"model": {}}))  # a run killed before anything else
    WRONG_KIND[kind](out)
    capsys.readouterr()
    assert train(data, out, "--resume") == 2
    error = last_error(capsys)
    name = kind.split()[0]
    assert str(out / name) in error and "move it away" in error


# ----------------------------------------------------------------------------------------------------------------
# Loading files of the wrong kind


def last_error(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert err and err[-1].startswith("error: ") and sum("error:" in line for line in err) == 1, err
    return err[-1]


def test_wrong_kind_of_weights_file_is_refused(reference, tmp_path, capsys):
    model = tmp_path / "model"
    shutil.copytree(reference / "model", model)
    torch.save({"w": torch.zeros(2)}, model / "model.safetensors")  # a pickle under the safetensors name
    assert main(["fill-mask", str(model), "alpha [MASK]"]) == 2
    assert "model.safetensors is not a valid safetensors file" in last_error(capsys)


class Payload:
    """Unpickling this creates a folder: a stand-in for any code a malicious pickle could run."""

    def __init__(self, path: Path) -> None:
        self.path = str(path)

    def __reduce__(self):
        return (os.makedirs, (self.path,))


def test_checkpoint_with_code_in_it_is_refused_not_run(data, reference, tmp_path, capsys):
    """optimizer.pt is loaded with weights_only=True: a pickle that would run code is refused (even with a manifest
    that matches it)."""
    out = tmp_path / "run"
    shutil.copytree(reference, out)
    shutil.rmtree(out / "model")
    (out / "summary.json").unlink()
    newest = out / "checkpoints" / f"step_{STEPS:08d}"
    torch.save({"state": Payload(tmp_path / "pwned")}, newest / "optimizer.pt")
    manifest = json.loads((newest / "manifest.json").read_text())
    manifest["files"]["optimizer.pt"] = ckpt._sha256(newest / "optimizer.pt")
    (newest / "manifest.json").write_text(json.dumps(manifest))
    assert train(data, out, "--resume") == 2
    assert "cannot be read (UnpicklingError)" in last_error(capsys)
    assert not (tmp_path / "pwned").exists()


def test_a_trainer_state_missing_what_this_version_writes_is_refused(data, reference, tmp_path, capsys):
    """A trainer.pt that unpickles but lacks a key (or holds a value of another type), its manifest matching it:
    the documented one-line refusal, not a KeyError traceback."""
    for name, damage in (("missing", lambda s: s.pop("rng")), ("wrong type", lambda s: s.update(step="x"))):
        out = tmp_path / name
        shutil.copytree(reference, out)
        shutil.rmtree(out / "model")
        (out / "summary.json").unlink()
        newest = out / "checkpoints" / f"step_{STEPS:08d}"
        state = torch.load(newest / "trainer.pt", weights_only=True)
        damage(state)
        torch.save(state, newest / "trainer.pt")
        manifest = json.loads((newest / "manifest.json").read_text())
        manifest["files"]["trainer.pt"] = ckpt._sha256(newest / "trainer.pt")
        (newest / "manifest.json").write_text(json.dumps(manifest))
        assert train(data, out, "--resume") == 2
        error = last_error(capsys)
        assert "cannot be read (trainer.pt:" in error and "delete it to use an older one" in error, error


def test_checkpoint_of_another_architecture_is_refused(data, reference, tmp_path, capsys):
    """A run folder whose checkpoints come from a wider model: the message names the tensor and both shapes."""
    wide = tmp_path / "wide"
    assert train(data, wide, "--model.hidden_size", "64", "--model.num_attention_heads", "4", steps=2) == 0
    out = tmp_path / "run"
    shutil.copytree(reference, out)
    shutil.rmtree(out / "checkpoints")
    shutil.copytree(wide / "checkpoints", out / "checkpoints")
    capsys.readouterr()
    assert train(data, out, "--resume") == 2
    line = last_error(capsys)
    assert "another architecture" in line and "in the checkpoint" in line and "in the model" in line
    # and asking for another width on the command line is refused before anything is read
    assert train(data, out, "--resume", "--model.hidden_size", "64") == 2
    assert "model.hidden_size=64 differs from the run's 32" in last_error(capsys)


def test_tokenizer_that_does_not_match_the_model_is_refused(reference, tmp_path, capsys):
    """Same vocabulary size, two tokens swapped: config.json's tokenizer hash catches what the size cannot."""
    model = tmp_path / "model"
    shutil.copytree(reference / "model", model)
    spec = json.loads((model / "tokenizer.json").read_text())
    vocab = spec["model"]["vocab"]
    vocab["alpha"], vocab["bravo"] = vocab["bravo"], vocab["alpha"]
    (model / "tokenizer.json").write_text(json.dumps(spec))
    assert main(["fill-mask", str(model), "alpha [MASK]"]) == 2
    assert "is not the tokenizer the model was saved with" in last_error(capsys)


def test_a_checkpoint_folder_that_cannot_be_made_gets_the_checkpoint_line(tmp_path, monkeypatch):
    """RUN/checkpoints read-only (its temporary folder cannot be made): the documented "could not write
    checkpoint ..., the previous checkpoint is intact", as for a write that fails inside it."""
    model = torch.nn.Linear(2, 2)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    make = Path.mkdir

    def read_only(self: Path, *args, **kwargs) -> None:
        if self.name.startswith(".tmp_step_"):
            raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(self))
        make(self, *args, **kwargs)

    monkeypatch.setattr(Path, "mkdir", read_only)
    # the first checkpoint: there is no previous one to speak of
    with pytest.raises(
        UserError, match="could not write checkpoint .*step_00000003 .*no checkpoint was written before"
    ):
        ckpt.save_checkpoint(tmp_path / "checkpoints", 3, model, optimizer, {"step": 3}, keep_last=2)
    monkeypatch.undo()
    ckpt.save_checkpoint(tmp_path / "checkpoints", 3, model, optimizer, {"step": 3}, keep_last=2)
    monkeypatch.setattr(Path, "mkdir", read_only)
    with pytest.raises(
        UserError, match="could not write checkpoint .*step_00000006 .*previous checkpoint is intact"
    ):
        ckpt.save_checkpoint(tmp_path / "checkpoints", 6, model, optimizer, {"step": 6}, keep_last=2)


@pytest.mark.parametrize("unreadable", ["checkpoints", "manifest.json"])
def test_a_checkpoint_this_user_cannot_read_is_not_taken_for_damage(
    data, reference, tmp_path, monkeypatch, capsys, unreadable
):
    """A checkpoints folder (or a checkpoint's file) this user may not read was taken for "no complete
    checkpoint": the resume started over and cut metrics.jsonl back to its first steps for good. It is one line
    now, and nothing changes. (Injected: root, which runs the tests, reads any file.)"""
    out = tmp_path / "run"
    shutil.copytree(reference, out)
    before = file_snapshot(out)
    real_iterdir, real_read_text = Path.iterdir, Path.read_text

    def iterdir(self):
        if unreadable == "checkpoints" and self.name == "checkpoints":
            raise PermissionError(13, "Permission denied", str(self))
        return real_iterdir(self)

    def read_text(self, *args, **kwargs):
        if self.name == unreadable:
            raise PermissionError(13, "Permission denied", str(self))
        return real_read_text(self, *args, **kwargs)

    monkeypatch.setattr(Path, "iterdir", iterdir)
    monkeypatch.setattr(Path, "read_text", read_text)
    capsys.readouterr()
    assert train(data, out, "--resume", steps=STEPS + 4) == 2
    assert "permission denied): give this user read access" in last_error(capsys)
    monkeypatch.undo()
    assert file_snapshot(out) == before


def test_skipping_cannot_undo_weights_blown_up_by_a_finite_step(data, tmp_path, monkeypatch, capsys):
    """lr 1e38 without warmup: step 1's gradients are finite and its update makes the weights infinite; every
    later step was skipped and the run saved a model of NaN with exit 0. It stops now, and says where it can go
    on from (here: no checkpoint yet). A window of skipped steps logged loss 0.0 and grad_norm NaN (not JSON):
    it logs neither."""
    out = tmp_path / "run"
    assert train(data, out, "--train.lr", "1e38", "--train.warmup", "0", steps=6) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert "the weights are non-finite at step 2" in err and "no checkpoint was written yet" in err, err
    assert not (out / "model").exists()
    nan_at(monkeypatch, {1, 2, 3, 4, 5})
    assert train(data, tmp_path / "skipped", steps=10) == 0
    records = [
        json.loads(line, parse_constant=lambda c: pytest.fail(f"{c} in metrics.jsonl"))
        for line in (tmp_path / "skipped" / "metrics.jsonl").read_text().splitlines()
    ]
    first, second = [r for r in records if r["split"] == "train"]
    assert "loss" not in first and "grad_norm" not in first and second["loss"] > 0
