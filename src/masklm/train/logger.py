"""Where a run's numbers go: metric records to sinks while it trains, summary.json and curves.png at its end.

A record is one flat dict: {"step", "tokens", "split": "train" | "val", name: value, ...}, one per log line
(`train.log_every`) and one per evaluation. `MetricsLogger` hands every record to its sinks:

- `JsonlSink`: RUN/metrics.jsonl, one JSON line per record. Always there; curves.png and the tests read it.
- `TensorBoardSink`: RUN/tensorboard/, event files with one scalar `split/name` per value against `step`, when
  `train.log` is "tensorboard" (the optional extra: pip install 'masklm[tensorboard]').

Only rank 0 writes: `open_metrics` gives the other processes a logger without sinks. A resumed run keeps the
records of metrics.jsonl up to the checkpoint it resumed from (the steps after it are trained, and logged, again)
and adds an event file that hides the previous session's events past that checkpoint: both show each step once.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol

from masklm.dist import rank
from masklm.errors import UserError
from masklm.utils import atomic_write_text, finite_json, log

TENSORBOARD_MISSING = (
    "train.log=tensorboard needs the tensorboard package: pip install 'masklm[tensorboard]' "
    "(or leave train.log at jsonl)"
)


class Sink(Protocol):
    """Somewhere records go."""

    def write(self, record: dict[str, Any]) -> None: ...

    def flush(self) -> None: ...

    def close(self) -> None: ...


class JsonlSink:
    """metrics.jsonl: one JSON object per line, appended (each line is complete once written).

    A run that starts in a folder whose metrics.jsonl exists (--resume) first keeps only the records of the
    steps it will not train again (`keep_records_up_to`).
    """

    def __init__(self, path: Path, resumed_at: int | None = None) -> None:
        self.path = path
        keep_records_up_to(path, resumed_at)

    def write(self, record: dict[str, Any]) -> None:
        try:
            with open(self.path, "a", encoding="utf-8") as f:
                f.write(json.dumps(record) + "\n")
        except OSError as e:  # a full disk: say which file (a failed write's error names none)
            raise OSError(e.errno, e.strerror, str(self.path)) from None

    def flush(self) -> None:
        pass  # every write closes the file

    def close(self) -> None:
        pass


def keep_records_up_to(path: Path, step: int | None) -> None:
    """Rewrite metrics.jsonl (when there is one) with the records of steps up to `step`, the checkpoint a resumed
    run continues from (None: it starts from the beginning, so none): the records of later steps, which the run
    writes again, go, and so do a last line a kill or a full disk cut short and any line that is no record (a
    damaged file), said in a note. Nothing is rewritten when every line stays."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        if step is not None:
            log(f"note: {path} is missing; the records of this run start at step {step + 1}")
        return
    lines = data.split(b"\n")
    cut_short = lines.pop()  # b"" when the file ends with a newline, as JsonlSink leaves it
    kept, damaged = [], 0
    for line in lines:
        try:
            record = json.loads(line)
        except ValueError:  # (UnicodeDecodeError too)
            damaged += bool(line.strip())
            continue
        if not isinstance(record, dict) or not isinstance(record.get("step"), int):
            damaged += 1
        elif step is not None and record["step"] <= step:
            kept.append(line)
    if len(kept) == len(lines) and not cut_short:
        return
    atomic_write_text(path, "".join(line.decode("utf-8") + "\n" for line in kept))
    if damaged:
        log(f"note: {path}: {damaged} line(s) that were no JSON record dropped (the file was damaged)")


class TensorBoardSink:
    """TensorBoard event files: `split/name` scalars against the step (the tokens seen are one of them).

    `purge_step` (a resumed run: the first step it trains) hides the events an earlier session wrote from that
    step on, so TensorBoard shows each step once, as metrics.jsonl does.
    """

    def __init__(self, log_dir: Path, purge_step: int | None = None) -> None:
        self.writer = _summary_writer_class()(log_dir=str(log_dir), purge_step=purge_step)

    def write(self, record: dict[str, Any]) -> None:
        split, step = record.get("split", "train"), int(record["step"])
        for name, value in record.items():
            if (
                name not in ("step", "split")
                and isinstance(value, int | float)
                and not isinstance(value, bool)
            ):
                self.writer.add_scalar(f"{split}/{name}", value, step)

    def flush(self) -> None:
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


def _summary_writer_class() -> Any:
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:  # torch's module imports the tensorboard package
        raise UserError(TENSORBOARD_MISSING) from None
    return SummaryWriter


def check_log_kind(kind: str) -> None:
    """Refuse train.log=tensorboard without the tensorboard package: call it before any work."""
    if kind == "tensorboard":
        _summary_writer_class()


class MetricsLogger:
    """Hands each record to every sink."""

    def __init__(self, run_dir: Path, sinks: Sequence[Sink]) -> None:
        self.run_dir = Path(run_dir)
        self.sinks = list(sinks)

    def log(self, record: dict[str, Any]) -> None:
        for sink in self.sinks:
            sink.write(record)

    def flush(self) -> None:
        for sink in self.sinks:
            sink.flush()

    def close(self) -> None:
        for sink in self.sinks:
            sink.close()


def open_metrics(run_dir: Path, kind: str = "jsonl", resumed_at: int | None = None) -> MetricsLogger:
    """The run's logger: metrics.jsonl, plus TensorBoard when `kind` is "tensorboard"; no sinks off rank 0.

    `resumed_at` is the step a resumed run continues from (None for a new run).
    """
    check_log_kind(kind)
    run_dir = Path(run_dir)
    sinks: list[Sink] = []
    if rank() == 0:
        sinks.append(JsonlSink(run_dir / "metrics.jsonl", resumed_at))
        if kind == "tensorboard":
            # TensorBoard forgets the events an earlier session wrote from this step on: all of them for a run that
            # starts from the beginning (a --resume before the first checkpoint; harmless in a new folder)
            purge = 0 if resumed_at is None else resumed_at + 1
            sinks.append(TensorBoardSink(run_dir / "tensorboard", purge_step=purge))
    return MetricsLogger(run_dir, sinks)


def write_run_results(run_dir: Path, summary: dict[str, Any]) -> None:
    """The end of a run (rank 0): summary.json, then curves.png from metrics.jsonl. A failed plot never loses
    the finished run."""
    atomic_write_text(run_dir / "summary.json", json.dumps(finite_json(summary), indent=2) + "\n")
    try:
        from masklm.plots import plot_curves

        # a fine-tuning run's main metric: the one that picked its model
        metric = (summary.get("best") or {}).get("metric")
        plot_curves(run_dir / "metrics.jsonl", run_dir / "curves.png", metric=metric)
    except Exception as e:
        log(f"note: curves.png not written ({type(e).__name__}: {e})")
