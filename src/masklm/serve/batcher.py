"""Dynamic batching: concurrent requests for one model share forward passes.

    batcher = Batcher(served.forward, executor, max_batch=32, max_wait_ms=2, max_queue=256)
    asyncio.create_task(batcher.run())          # one worker per model, for the server's lifetime
    answer = await batcher.submit(work)         # from a request handler; QueueFull when max_queue are pending

A request becomes one `Work`: its features (model inputs, several for a long QA context), the key of each
(features of different keys never share a batch: fill-mask and predict, or multiple-choice questions with
different numbers of endings), their lengths, and `finish`, which turns the request's outputs into its JSON
answer. The worker takes the first waiting work, then whatever else is waiting, then waits up to `max_wait_ms`
for more until `max_batch` features are gathered; while a batch is computed, new requests wait, so under load
batches fill by themselves and a lone request waits at most `max_wait_ms`. The gathered features are sorted by
key and length and cut into batches of similar lengths (`length_buckets`), so little of a batch is padding. The
forward passes and `finish` run on the executor's thread, off the event loop, which keeps answering.

The number of requests a model holds (waiting or being computed) is bounded by `max_queue`: beyond it `submit`
raises QueueFull at once (the server answers 503 with Retry-After) instead of letting memory grow.
"""

from __future__ import annotations

import asyncio
import collections
from collections.abc import Callable, Hashable, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass
from typing import Any

Forward = Callable[[Hashable, list[Any]], list[Any]]
"""(key, features of that key) → one output per feature, in order."""


class QueueFull(Exception):
    """The model already holds `max_queue` requests; try again shortly."""


@dataclass
class Work:
    """One request: its features with their batch keys and lengths, and how to answer from their outputs."""

    features: list[Any]
    keys: list[Hashable]
    lengths: list[int]
    finish: Callable[[list[Any]], Any]


def length_buckets(keys: Sequence[Hashable], lengths: Sequence[int], max_batch: int) -> list[list[int]]:
    """Indexes of features grouped into batches: one key per batch, at most `max_batch` features, sorted by
    length, and a new batch whenever a length is over twice the batch's shortest (a bucket)."""
    order = sorted(range(len(keys)), key=lambda i: (repr(keys[i]), lengths[i]))
    batches: list[list[int]] = []
    for i in order:
        current = batches[-1] if batches else None
        if (
            current is None
            or keys[current[0]] != keys[i]
            or len(current) >= max_batch
            or lengths[i] > 2 * lengths[current[0]]
        ):
            batches.append([i])
        else:
            current.append(i)
    return batches


class Batcher:
    """The queue and the worker of one model (see the module docstring)."""

    def __init__(
        self, forward: Forward, executor: Executor, max_batch: int, max_wait_ms: float, max_queue: int
    ) -> None:
        self.forward = forward
        self.executor = executor
        self.max_batch, self.max_wait_s, self.max_queue = max_batch, max_wait_ms / 1000, max_queue
        self.waiting: collections.deque[tuple[Work, asyncio.Future]] = collections.deque()
        self.pending = 0  # requests submitted and not yet answered
        self.arrived = asyncio.Event()

    async def submit(self, work: Work) -> Any:
        """The answer to one request, computed in a batch with whatever else is waiting; QueueFull when full."""
        if self.pending >= self.max_queue:
            raise QueueFull
        future: asyncio.Future = asyncio.get_running_loop().create_future()
        self.pending += 1
        self.waiting.append((work, future))
        self.arrived.set()
        try:
            return await future
        finally:
            self.pending -= 1

    async def run(self) -> None:
        """The worker: gather, compute on the executor, answer; forever (cancelled when the server stops)."""
        loop = asyncio.get_running_loop()
        while True:
            taken = await self._gather()
            try:
                results = await loop.run_in_executor(self.executor, self._compute, [w for w, _ in taken])
            except Exception as e:  # a bug outside the forward passes: fail these requests, keep the worker
                results = [e] * len(taken)
            for (_, future), result in zip(taken, results):
                if future.done():  # the client went away
                    continue
                if isinstance(result, BaseException):
                    future.set_exception(result)
                else:
                    future.set_result(result)

    async def _gather(self) -> list[tuple[Work, asyncio.Future]]:
        """The next works to compute: at least one, up to `max_batch` features, waiting `max_wait_ms` at most."""
        while not self.waiting:
            self.arrived.clear()
            await self.arrived.wait()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.max_wait_s
        while sum(len(w.features) for w, _ in self.waiting) < self.max_batch:
            left = deadline - loop.time()
            if left <= 0:
                break
            self.arrived.clear()
            try:
                await asyncio.wait_for(self.arrived.wait(), left)
            except TimeoutError:
                break
        taken, count = [], 0
        while self.waiting and (not taken or count + len(self.waiting[0][0].features) <= self.max_batch):
            work, future = self.waiting.popleft()
            if not future.done():  # skip requests whose client went away while they waited
                taken.append((work, future))
                count += len(work.features)
        return taken

    def _compute(self, works: list[Work]) -> list[Any]:
        """On the executor's thread: every work's answer (or the exception that stopped it)."""
        entries = [(w, f) for w, work in enumerate(works) for f in range(len(work.features))]
        outputs: list[list[Any]] = [[None] * len(work.features) for work in works]
        failed: dict[int, BaseException] = {}
        keys = [works[w].keys[f] for w, f in entries]
        lengths = [works[w].lengths[f] for w, f in entries]
        for batch in length_buckets(keys, lengths, self.max_batch):
            chosen = [entries[i] for i in batch]
            try:
                results = self.forward(keys[batch[0]], [works[w].features[f] for w, f in chosen])
            except Exception as e:  # a bug or an out-of-memory: these requests fail, the server keeps serving
                failed.update((w, e) for w, _ in chosen)
                continue
            for (w, f), result in zip(chosen, results):
                outputs[w][f] = result
        answers: list[Any] = []
        for w, work in enumerate(works):
            if w in failed:
                answers.append(failed[w])
                continue
            try:
                answers.append(work.finish(outputs[w]))
            except Exception as e:
                answers.append(e)
        return answers
