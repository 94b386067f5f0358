"""Fine-tuning tasks, one module per task, found by name.

    from masklm.tasks import TASK_NAMES, get_task
    task = get_task("token-classification")      # a masklm.tasks.base.Task
    examples = task.read(path, settings, labelled=True)

Each task module defines a `Task` subclass (see masklm.tasks.base for what a task provides). A task is
registered by one line in `_TASKS` below: its name and where its class lives. Modules are imported only when a
task is asked for, so `TASK_NAMES` (the command line's --task choices) is available without importing torch.
"""

from __future__ import annotations

import functools
import importlib
from typing import TYPE_CHECKING

from masklm.errors import UserError

if TYPE_CHECKING:
    from masklm.tasks.base import Task

_TASKS: dict[str, str] = {
    "classification": "masklm.tasks.classification:ClassificationTask",
    "token-classification": "masklm.tasks.token_classification:TokenClassificationTask",
    "qa": "masklm.tasks.qa:QuestionAnsweringTask",
    "multiple-choice": "masklm.tasks.multiple_choice:MultipleChoiceTask",
    "prompt-classification": "masklm.tasks.prompt_classification:PromptClassificationTask",
}

TASK_NAMES: tuple[str, ...] = tuple(_TASKS)
"""What `masklm finetune --task` takes."""


@functools.cache
def get_task(name: str) -> Task:
    """The task called `name`; a UserError listing the task names for an unknown one."""
    if name not in _TASKS:
        raise UserError(f"unknown task {name!r}; choose one of {', '.join(TASK_NAMES)}")
    module, _, cls = _TASKS[name].partition(":")
    task = getattr(importlib.import_module(module), cls)()
    assert task.name == name, f"{_TASKS[name]} is registered as {name!r} but calls itself {task.name!r}"
    return task


def all_tasks() -> tuple[Task, ...]:
    """Every registered task, its module imported (which registers any model head the module defines)."""
    return tuple(get_task(name) for name in TASK_NAMES)


def task_of_architecture(architecture: str) -> Task | None:
    """The task whose head is `architecture` (for models saved without a task name), or None."""
    return next(
        (task for task in all_tasks() if task.architecture == architecture and task.claims_architecture), None
    )


def output_formats() -> tuple[str, ...]:
    """Every file type some task's predictions can be written as (.jsonl, .csv, ...), in a stable order."""
    return tuple(dict.fromkeys(fmt for task in all_tasks() for fmt in task.output_formats))
