"""fit(): the optimisation loop shared by pretraining and fine-tuning, as a short loop over a Trainer's phases.

- step: one optimizer step = `grad_accum` micro-batches (forward under autocast → loss, weighted by the items it
  averages over → backward), then clip, agree across processes, optimizer step (or skip) and learning-rate schedule;
- log: every `train.log_every` steps a "train" record (mean loss since the last one, lr, grad norm, tokens/s) to
  the run's MetricsLogger (metrics.jsonl; TensorBoard with train.log=tensorboard, see train/logger.py);
- evaluate: every `train.eval_every` steps, at the epoch ends asked for, and at the end: a "val" record;
- checkpoint: every `train.checkpoint_every` steps, at the end and when a SIGTERM / SIGINT asks to stop.
Around them: a step / token / wall-clock budget and batches built in a background thread.

Everything random is a function of the step number (batches and masks are built by `make_batch(micro_step)`) or
lives in the saved RNG state (dropout), so a resumed run continues exactly where it stopped without replaying data.
The model passed in may already be wrapped (DDP, FSDP, torch.compile); `fit` never wraps it itself.

With several processes (see masklm.dist) every process runs this loop on its own share of each batch. They agree
once per step on what must be the same everywhere: the gradient norm (global under FSDP), whether the step is
skipped (a non-finite value on any process), whether to stop (a signal on any process) and, under a time
budget, the elapsed time (the slowest process's), so they never diverge.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import math
import queue
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from tqdm import tqdm

from masklm import dist
from masklm.config import TrainConfig
from masklm.errors import UserError
from masklm.train import checkpoint as ckpt
from masklm.train.logger import MetricsLogger, open_metrics
from masklm.train.optim import lr_factor, set_lr
from masklm.utils import log, native_bf16

Batch = dict[str, torch.Tensor]


@dataclass
class Budget:
    """When training ends. Exactly one of steps / minutes drives the schedule (steps when known)."""

    steps: int | None = None
    minutes: float | None = None

    def progress(self, step: int, elapsed_s: float, setup_s: float = 0.0) -> float:
        """Where the schedule is: steps done of the step budget, else the share of the minutes spent training.
        `setup_s`, the seconds a time budget spent before the first step (pretraining's word-embedding init),
        counts against the budget but not in the schedule, which spans the time left for steps: a set-up as long
        as the warmup would otherwise leave no warmup."""
        if self.steps is not None:
            return step / self.steps
        assert self.minutes is not None
        return (elapsed_s - setup_s) / max(60.0 * self.minutes - setup_s, 1e-9)

    def done(self, step: int, elapsed_s: float) -> bool:
        if self.steps is not None and step >= self.steps:
            return True
        return self.minutes is not None and elapsed_s >= 60.0 * self.minutes

    def describe(self) -> str:
        """ "1000 steps", "9 minutes", or "1000 steps or 9 minutes, whichever comes first"."""
        parts = []
        if self.steps is not None:
            parts.append(f"{self.steps} steps")
        if self.minutes is not None:
            parts.append(f"{self.minutes:g} minutes")
        return " or ".join(parts) + (", whichever comes first" if len(parts) == 2 else "")


@dataclass
class FitResult:
    step: int = 0
    tokens: int = 0
    elapsed_s: float = 0.0
    setup_s: float = 0.0  # of elapsed_s, spent before the first step (Budget.progress)
    skipped_steps: int = 0
    stopped_by_signal: bool = False
    last_eval: dict[str, float] = field(default_factory=dict)
    history: list[dict[str, Any]] = field(default_factory=list)


class _StopFlag:
    """SIGTERM / SIGINT → finish this step, checkpoint, exit. A second signal exits at once."""

    def __init__(self) -> None:
        self.requested = False
        self._old: dict[int, Any] = {}

    def __enter__(self) -> _StopFlag:
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGTERM, signal.SIGINT):
                self._old[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        if self.requested:
            raise SystemExit(128 + signum)
        self.requested = True
        log(
            f"\nreceived {signal.Signals(signum).name}: finishing this step and saving a checkpoint "
            "(send it again to exit at once)"
        )

    def __exit__(self, *exc: Any) -> None:
        for sig, old in self._old.items():
            signal.signal(sig, old)


class _Prefetcher:
    """Builds upcoming batches in a background thread (tokens → masks) while the model trains."""

    def __init__(self, make_batch: Callable[[int], Batch], start: int, depth: int = 3) -> None:
        self._make = make_batch
        self._queue: queue.Queue = queue.Queue(maxsize=depth)
        self._next = start
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        i = self._next
        while not self._stop.is_set():
            try:
                item: Any = (i, self._make(i))
            except BaseException as e:  # hand the error to the training thread
                item = (i, e)
            while not self._stop.is_set():
                try:
                    self._queue.put(item, timeout=0.1)
                    break
                except queue.Full:
                    continue
            i += 1

    def get(self) -> Batch:
        i, item = self._queue.get()
        if isinstance(item, BaseException):
            raise item
        return item

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)


def autocast_context(device: torch.device, precision: str) -> contextlib.AbstractContextManager:
    if precision == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    if precision == "fp16":
        return torch.autocast(device.type, dtype=torch.float16)
    return contextlib.nullcontext()


def resolve_precision(precision: str, device: torch.device) -> str:
    if precision != "auto":
        if precision == "fp16" and device.type == "cpu":
            raise UserError("train.precision=fp16 needs a GPU; use bf16 or fp32 on CPU")
        if precision == "bf16" and device.type == "cpu" and not native_bf16(device):
            _note_emulated_bf16()
        return precision
    # bf16 autocast where the hardware multiplies bf16 natively (2x per CPU step here, docs/profile.md);
    # the master weights, the optimizer and the loss stay float32.
    return "bf16" if native_bf16(device) else "fp32"


@functools.cache
def _note_emulated_bf16() -> None:
    """Once per process: bf16 asked for on a CPU that only emulates it (a `small` step took 35 s, not 0.8 s)."""
    log(
        "note: this CPU has no native bf16 (AVX512-BF16 or AMX), so bf16 is emulated and many times slower than "
        "fp32; use --train.precision auto (fp32 here) or fp32"
    )


def rng_state() -> dict[str, Any]:
    state: dict[str, Any] = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        try:
            torch.cuda.set_rng_state_all(state["cuda"])
        except (RuntimeError, ValueError, IndexError) as e:
            # (another number of GPUs than the run saved): dropout draws differ from the uninterrupted run's
            log(
                f"note: the GPUs' random states of the checkpoint could not be restored ({e}); the run goes on, "
                "but its dropout is not the uninterrupted run's"
            )


@dataclass
class StepOutcome:
    """What one optimizer step hands to the log phase and the loop."""

    lr: float
    loss: torch.Tensor  # the step's loss on this process (its micro-batches' weighted losses summed)
    grad_norm: torch.Tensor
    finite: bool  # False: skipped (a non-finite loss or gradient on some process)
    stop: bool  # a stop signal reached some process: checkpoint and return after this step


@dataclass
class _LogWindow:
    """What the next "train" record averages: the loss of the finite steps since the last record, and the
    tokens and time since then (for tokens/s). The loss part is saved in checkpoints."""

    loss_sum: torch.Tensor
    n_loss: int = 0
    tokens: int = 0
    start: float = 0.0


class Trainer:
    """The phases of fit over one run's state (`result`, the log window): `step`, `log_train`, `evaluate`,
    `save` (the checkpoint hook) and `stop`. See fit for the arguments."""

    def __init__(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        cfg: TrainConfig,
        device: torch.device,
        *,
        run_dir: Path,
        tokens_per_step: int,
        loss_fn: Callable[[nn.Module, Batch], torch.Tensor],
        loss_items: Callable[[Batch], int | tuple[int, ...]] | None = None,
        reduce: Callable[[torch.Tensor], torch.Tensor] | None = None,
        no_sync: Callable[[], contextlib.AbstractContextManager] | None = None,
        evaluate: Callable[[nn.Module], dict[str, float]] | None = None,
        on_eval: Callable[[dict[str, float], int], None] | None = None,
        extra_state: dict[str, Any] | None = None,
        log_extra: Callable[[int], dict[str, Any]] | None = None,
    ) -> None:
        self.model, self.optimizer, self.cfg, self.device = model, optimizer, cfg, device
        self.precision = resolve_precision(cfg.precision, device)
        self.run_dir, self.ckpt_dir = Path(run_dir), Path(run_dir) / "checkpoints"
        self.tokens_per_step = tokens_per_step
        self.loss_fn, self.loss_items, self.reduce = loss_fn, loss_items, reduce
        self.no_sync = dist.no_sync(model) if no_sync is None else no_sync
        self._evaluate, self._on_eval = evaluate, on_eval
        self.extra_state = extra_state or {}
        self.log_extra = log_extra
        self.result = FitResult()
        self.window = _LogWindow(torch.zeros((), device=device))
        self.metrics = MetricsLogger(self.run_dir, [])
        self.saved_step: int | None = None  # the step of the last checkpoint this process wrote

    # -- start and state ------------------------------------------------------------------------------------

    def start(self, resume_from: Path | None) -> None:
        """Restore a resumed run from its checkpoint (or give each process of a new one its own dropout
        stream), then open the run's metrics sinks."""
        if resume_from is None:
            if dist.world_size() > 1:
                torch.manual_seed(_process_seed(self.cfg.seed, dist.rank(), 0))
        else:
            self._restore(resume_from)
        kind = getattr(self.cfg, "log", "jsonl")
        self.metrics = open_metrics(self.run_dir, kind, None if resume_from is None else self.result.step)

    def _restore(self, path: Path) -> None:
        state = ckpt.load_checkpoint(path, unwrap(self.model), self.optimizer)  # every process
        try:
            self._restore_state(state)
        except (KeyError, TypeError, ValueError, IndexError, RuntimeError) as e:
            # trainer.pt matches its manifest but lacks what this version writes (other code wrote it)
            raise UserError(
                f"checkpoint {path} cannot be read (trainer.pt: {type(e).__name__} {' '.join(str(e).split())[:80]}); "
                "delete it to use an older one"
            ) from None
        log(f"resumed from {path} at step {self.result.step} ({self.result.tokens:,} tokens)")

    def _restore_state(self, state: dict[str, Any]) -> None:
        """The step, tokens, time, logging window and random states a checkpoint's trainer.pt holds."""
        res = self.result
        res.step, res.tokens = int(state["step"]), int(state["tokens"])
        res.elapsed_s, res.skipped_steps = float(state["elapsed_s"]), int(state.get("skipped_steps", 0))
        res.setup_s = float(state.get("setup_s", 0.0))
        res.last_eval = dict(state.get("last_eval", {}))
        loss_sum, n_loss = state.get("log_window", [0.0, 0])
        self.window = _LogWindow(torch.full((), loss_sum, device=self.device), int(n_loss))
        by_rank = state.get("rng_by_rank")
        if by_rank is not None and len(by_rank) == dist.world_size():
            set_rng_state(by_rank[dist.rank()])
        else:
            set_rng_state(state["rng"])
            if dist.world_size() > 1:  # another number of processes: fresh per-process streams
                torch.manual_seed(_process_seed(self.cfg.seed, dist.rank(), res.step))

    def state(self) -> dict[str, Any]:
        """The trainer state a checkpoint saves (every process calls it: the RNG states are gathered)."""
        res, loss_sum = self.result, self.window.loss_sum
        return {
            "step": res.step,
            "tokens": res.tokens,
            "elapsed_s": res.elapsed_s,
            "setup_s": res.setup_s,
            "skipped_steps": res.skipped_steps,
            "last_eval": {k: float(v) for k, v in res.last_eval.items()},
            "rng": rng_state(),
            **({"rng_by_rank": dist.all_gather_object(rng_state())} if dist.world_size() > 1 else {}),
            # the window's loss is averaged over processes like a log line's
            "log_window": [
                float(self.reduce(loss_sum) if self.reduce is not None else loss_sum),
                self.window.n_loss,
            ],
            **self.extra_state,
        }

    def close(self) -> None:
        self.metrics.close()

    # -- the step ---------------------------------------------------------------------------------------------

    def step(self, next_batch: Callable[[], Batch], budget: Budget, stop: _StopFlag) -> StepOutcome:
        """One optimizer step over the next `grad_accum` micro-batches; counts its steps, tokens and time."""
        t0 = time.perf_counter()
        res = self.result
        # the rate at where this step starts (transformers' convention): the last step of a decaying schedule
        # still moves the weights, and the schedule reaches its floor when the budget ends
        lr = self.cfg.lr * lr_factor(
            budget.progress(res.step, res.elapsed_s, res.setup_s), self.cfg, budget.steps, res.step
        )
        set_lr(self.optimizer, lr)
        step_loss = self._backward([next_batch() for _ in range(self.cfg.grad_accum)])
        grad_norm = dist.clip_grad_norm_(self.model, self.cfg.clip_norm)  # the global norm, on every process
        finite, stop_now = self._agree(step_loss, grad_norm, stop.requested)
        if finite:
            self.optimizer.step()
        else:
            self._skip()
        self.optimizer.zero_grad(set_to_none=True)
        res.step += 1
        res.tokens += self.tokens_per_step
        res.elapsed_s += time.perf_counter() - t0
        if budget.minutes is not None:  # the slowest clock, so every process stops at the same step
            res.elapsed_s = float(
                dist.all_reduce_max(torch.tensor(res.elapsed_s, dtype=torch.float64, device=self.device))
            )
        self.window.tokens += self.tokens_per_step
        if finite:
            self.window.loss_sum += step_loss
            self.window.n_loss += 1
        return StepOutcome(lr, step_loss, grad_norm, finite, stop_now)

    def _backward(self, micro_batches: list[Batch]) -> torch.Tensor:
        """Forward and backward over the micro-batches, gradients synchronised on the last one only; returns
        the step's loss (the weighted sum of the micro-batches' mean losses)."""
        accum = len(micro_batches)
        step_loss = torch.zeros((), device=self.device)
        weights = _loss_weights(micro_batches, self.loss_items, self.reduce, self.device)
        for micro, cpu_batch in enumerate(micro_batches):
            batch = {k: v.to(self.device, non_blocking=True) for k, v in cpu_batch.items()}
            last = micro == accum - 1
            with contextlib.nullcontext() if (self.no_sync is None or last) else self.no_sync():
                with autocast_context(self.device, self.precision):
                    loss = self.loss_fn(self.model, batch)
                    if loss.dim() == 0:
                        loss = loss / accum if weights is None else loss * weights[micro]
                    else:  # a loss in parts, each weighted by its own items
                        w = 1 / accum if weights is None else torch.tensor(weights[micro], device=loss.device)
                        loss = (loss * w).sum()
                loss.backward()
            step_loss += loss.detach()
        return step_loss

    def _agree(
        self, step_loss: torch.Tensor, grad_norm: torch.Tensor, stop_requested: bool
    ) -> tuple[bool, bool]:
        """(finite, stop) on every process, in one small all-reduce: skip if any process saw a non-finite
        value, stop if any was signalled, so every process takes the same branch."""
        flags = torch.tensor(
            [float(not (torch.isfinite(step_loss) and torch.isfinite(grad_norm))), float(stop_requested)],
            dtype=torch.float64,
            device=self.device,
        )
        skip, stop = dist.all_reduce_max(flags).tolist()
        return skip == 0.0, stop > 0.0

    def _skip(self) -> None:
        """A non-finite step: counted and skipped, or (train.nonfinite=stop) the end of the run."""
        res = self.result
        res.skipped_steps += 1
        if self.cfg.nonfinite == "stop":
            self.optimizer.zero_grad(set_to_none=True)
            raise UserError(
                f"loss or gradients became non-finite at step {res.step + 1}; {self._last_good()}. Lower "
                "train.lr or use train.precision=fp32"
            )
        if not self._weights_finite():
            # an earlier step's finite but huge update: skipping later steps cannot undo it, and the run would
            # save a model of NaN and exit 0
            self.optimizer.zero_grad(set_to_none=True)
            raise UserError(
                f"the weights are non-finite at step {res.step + 1} (an earlier update was too large); "
                f"{self._last_good()}. Lower train.lr"
            )
        log(f"step {res.step + 1}: non-finite loss or gradients, step skipped ({res.skipped_steps} so far)")

    def _weights_finite(self) -> bool:
        """Whether every parameter is finite, on every process (a sharded parameter: its local shard)."""
        local = all(
            bool(torch.isfinite(p.to_local() if hasattr(p, "to_local") else p).all())
            for p in self.model.parameters()
        )
        flag = torch.tensor([float(not local)], dtype=torch.float64, device=self.device)
        return float(dist.all_reduce_max(flag).item()) == 0.0

    def _last_good(self) -> str:
        """Where a stopped run can go on from: its newest checkpoint, or (none yet) the beginning."""
        if ckpt.valid_checkpoints(self.ckpt_dir, verify=False):
            return f"the last good checkpoint is in {self.ckpt_dir} (--resume continues from it)"
        return "no checkpoint was written yet (a rerun starts from the beginning)"

    # -- log, evaluate, checkpoint, stop ----------------------------------------------------------------------

    def _record(self, record: dict[str, Any]) -> None:
        self.result.history.append(record)
        self.metrics.log(record)

    def log_train(self, outcome: StepOutcome) -> dict[str, Any]:
        """The "train" record of the steps since the last one; starts the next window."""
        w, res = self.window, self.result
        mean_loss = w.loss_sum / max(1, w.n_loss)
        if self.reduce is not None:
            mean_loss = self.reduce(mean_loss)
        now = time.perf_counter()
        tokens_per_s = w.tokens / max(1e-9, now - w.start)
        record = {
            "step": res.step,
            "tokens": res.tokens,
            "split": "train",
            "loss": float(mean_loss),
            "lr": outcome.lr,
            "grad_norm": float(outcome.grad_norm),
            "tokens_per_s": tokens_per_s,
            "elapsed_s": res.elapsed_s,
            **(self.log_extra(res.step) if self.log_extra is not None else {}),
        }
        # no loss where every step of the window was skipped (not 0.0), and no NaN (not JSON) for a skipped
        # step's gradient norm
        if w.n_loss == 0:
            del record["loss"]
        if not math.isfinite(record["grad_norm"]):
            del record["grad_norm"]
        self._record(record)
        w.loss_sum.zero_()
        w.n_loss, w.tokens, w.start = 0, 0, now
        return record

    def evaluate(self) -> None:
        """The evaluation hook: evaluate (eval mode, no gradients, the training precision), record, tell on_eval."""
        if self._evaluate is None:
            return
        began = time.perf_counter()
        self.model.eval()
        with torch.no_grad(), autocast_context(self.device, self.precision):
            metrics = self._evaluate(self.model)
        self.model.train()
        # the next log line's tokens/s counts training time only
        self.window.start += time.perf_counter() - began
        res = self.result
        res.last_eval = metrics
        self._record({"step": res.step, "tokens": res.tokens, "split": "val", **metrics})
        log("  eval @ step {}: {}".format(res.step, ", ".join(f"{k} {v:.4g}" for k, v in metrics.items())))
        if self._on_eval is not None:
            self._on_eval(metrics, res.step)

    def save(self) -> None:
        """The checkpoint hook (every process: rank 0 alone writes, or all write their shards under FSDP); a step
        already saved (a stop signal at a checkpoint step) is not written again."""
        if self.saved_step == self.result.step:
            return
        began = time.perf_counter()
        ckpt.save(
            self.ckpt_dir,
            self.result.step,
            unwrap(self.model),
            self.optimizer,
            self.state(),
            self.cfg.keep_last,
        )
        self.metrics.flush()  # what a checkpoint holds is in the event files too
        self.saved_step = self.result.step
        self.window.start += time.perf_counter() - began  # (as after an evaluation)

    def stop(self) -> None:
        """A stop signal: checkpoint this step and say how to continue."""
        self.result.stopped_by_signal = True
        self.save()
        log(
            f"stopped at step {self.result.step}; checkpoint saved. Continue with the same command plus --resume"
        )


def fit(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    cfg: TrainConfig,
    *,
    run_dir: Path,
    budget: Budget,
    make_batch: Callable[[int], Batch],
    loss_fn: Callable[[nn.Module, Batch], torch.Tensor],
    evaluate: Callable[[nn.Module], dict[str, float]] | None,
    tokens_per_step: int,
    device: torch.device,
    resume_from: Path | None = None,
    eval_epoch_steps: int | None = None,
    on_eval: Callable[[dict[str, float], int], None] | None = None,
    reduce: Callable[[torch.Tensor], torch.Tensor] | None = None,
    no_sync: Callable[[], contextlib.AbstractContextManager] | None = None,
    loss_items: Callable[[Batch], int | tuple[int, ...]] | None = None,
    extra_state: dict[str, Any] | None = None,
    log_extra: Callable[[int], dict[str, Any]] | None = None,
    spent_s: float = 0.0,
) -> FitResult:
    """Train `model` until the budget is spent (or a stop signal); returns where it ended.

    make_batch(micro_step) returns CPU tensors; loss_fn(model, batch) returns the mean loss of that micro-batch.
    tokens_per_step counts the training tokens of one optimizer step (all processes), for tokens/s and budgets.
    eval_epoch_steps (a whole number of epochs, in steps), when given, evaluates at those epoch ends as well;
    on_eval(metrics, step) is told every evaluation. resume_from is a checkpoint to continue from.
    reduce averages a scalar tensor across processes (distributed runs); no_sync() skips gradient synchronisation
    on the micro-batches before the last (by default masklm.dist.no_sync(model): DDP's or FSDP2's).
    loss_items(batch), when given, counts what loss_fn averages over (e.g. masked tokens): each micro-batch's
    loss is then weighted by its share of the items of the whole step on all processes, so the step's loss is
    the mean over all of them and any split of the global batch into processes × micro-batches × accumulation
    trains the same. Without it each micro-batch's mean loss weighs 1 / grad_accum. A loss in parts (loss_fn
    returns a 1-D tensor, e.g. ELECTRA's generator and discriminator losses, means over masked and over real
    tokens) pairs with loss_items returning one count per part: each part is weighted by its own share and the
    step's loss is their sum.
    extra_state is saved with every checkpoint's trainer state (e.g. the global batch). log_extra(step), when
    given, adds its fields to every "train" record (e.g. the tokens each data source supplied so far).
    spent_s: seconds a new run spent before its first step that count as training time, in a minutes budget and
    in tokens/s (pretraining's word-embedding init); a resumed run has them in its checkpoint's elapsed time.
    """
    trainer = Trainer(
        model, optimizer, cfg, device, run_dir=run_dir, tokens_per_step=tokens_per_step, loss_fn=loss_fn,
        loss_items=loss_items, reduce=reduce, no_sync=no_sync, evaluate=evaluate, on_eval=on_eval,
        extra_state=extra_state, log_extra=log_extra,
    )  # fmt: skip
    trainer.start(resume_from)
    res = trainer.result
    if resume_from is None:
        res.elapsed_s = res.setup_s = spent_s
        _note_long_warmup(cfg, budget)
    elif budget.done(res.step, res.elapsed_s):
        # a finished run resumed with its own budget: nothing to train, and its last evaluation (in the
        # checkpoint and in metrics.jsonl) stands rather than being recorded again
        log(f"--resume: the run has reached its budget ({budget.describe()}); give a larger one to train on")
        trainer.close()
        return res
    model.train()
    prefetch = _Prefetcher(make_batch, start=res.step * cfg.grad_accum)
    bar = _progress_bar(budget, res.step)
    trainer.window.start = time.perf_counter()  # tokens/s counts from here
    try:
        with _StopFlag() as stop:
            while not budget.done(res.step, res.elapsed_s):
                outcome = trainer.step(prefetch.get, budget, stop)
                at_end = budget.done(res.step, res.elapsed_s)
                if res.step % cfg.log_every == 0 or at_end:
                    record = trainer.log_train(outcome)
                    bar.set_postfix(
                        loss=f"{record['loss']:.3f}" if "loss" in record else "-",
                        tok_s=f"{record['tokens_per_s']:,.0f}",
                        refresh=False,
                    )
                bar.update(1)
                if not at_end and _due(res.step, cfg.eval_every, eval_epoch_steps):
                    trainer.evaluate()
                if not at_end and _due(res.step, cfg.checkpoint_every):
                    trainer.save()
                # a stop at the last step finishes the run instead: stopped there, the run would be done without
                # its closing evaluation (and fine-tuning without choosing among its last evaluations), for good
                if outcome.stop and not at_end:
                    trainer.stop()
                    return res
            trainer.evaluate()
            trainer.save()
    finally:
        prefetch.close()
        bar.close()
        trainer.close()
    return res


def _note_long_warmup(cfg: TrainConfig, budget: Budget) -> None:
    """A note when a step budget ends before its warmup does: the rate never reaches train.lr (with --max-steps 1
    the only step ran at rate 0 and changed no weight), and nothing said so."""
    if not budget.steps or cfg.warmup <= 0:
        return
    warm = cfg.warmup if cfg.warmup >= 1 else cfg.warmup * budget.steps
    if warm >= budget.steps - 1:
        log(
            f"note: the warmup ({warm:g} steps) lasts the whole budget ({budget.steps} steps), so the learning rate "
            "never reaches train.lr (the first step runs at 0); give a shorter --train.warmup, or 0"
        )


def _due(step: int, *every: int | None) -> bool:
    """Whether `step` is a multiple of any of the given intervals (None or 0: never)."""
    return any(n and step % n == 0 for n in every)


def _progress_bar(budget: Budget, start: int) -> tqdm:
    return tqdm(
        total=budget.steps,
        initial=start,
        disable=dist.rank() != 0,
        unit="step",
        dynamic_ncols=True,
        desc="train",
        bar_format=None if budget.steps else "{desc}: {n} steps [{elapsed}{postfix}]",
    )


def _process_seed(seed: int, process: int, step: int) -> int:
    """The RNG seed (dropout) of one process of a multi-process run, from the run's seed."""
    digest = hashlib.blake2b(f"process:{seed}:{process}:{step}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & ((1 << 63) - 1)


def _loss_weights(
    micro_batches: list[Batch],
    loss_items: Callable[[Batch], int | tuple[int, ...]] | None,
    reduce: Callable[[torch.Tensor], torch.Tensor] | None,
    device: torch.device,
) -> list[Any] | None:
    """Each micro-batch's share of the items of the whole step on all processes (None: 1 / grad_accum each);
    for a loss in parts (loss_items returns a tuple), a list of shares, one per part.

    Data-parallel gradients are averaged over processes, so a share is count / (total / world size), which is
    count / mean(per-process total).
    """
    if loss_items is None:
        return None
    items = [loss_items(b) for b in micro_batches]
    if not isinstance(items[0], tuple):
        counts = [float(c) for c in items]  # type: ignore[arg-type]
        total = torch.tensor(sum(counts), dtype=torch.float64, device=device)
        mean_total = float(reduce(total)) if reduce is not None else float(total)
        return [c / max(mean_total, 1e-12) for c in counts]
    parts = torch.tensor(items, dtype=torch.float64)  # (micro-batches, parts)
    totals = parts.sum(0).to(device)
    mean_totals = (reduce(totals) if reduce is not None else totals).cpu().clamp(min=1e-12)
    return (parts / mean_totals).tolist()


def unwrap(model: nn.Module) -> nn.Module:
    """The plain module under DDP / torch.compile wrappers."""
    while True:
        if hasattr(model, "_orig_mod"):
            model = model._orig_mod
        elif hasattr(model, "module") and isinstance(model.module, nn.Module):
            model = model.module
        else:
            return model


def perplexity(loss: float) -> float:
    return math.exp(min(loss, 50.0))
