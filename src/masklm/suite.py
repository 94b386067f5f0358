"""masklm suite: fine-tune one model on a list of tasks, each over a small grid, and report a suite score.

    masklm suite --model runs/demo --suite glue --data-dir glue_data/ --output runs/glue-demo --jobs 2
    masklm suite --model runs/demo --suite my_suite.yaml --data-dir data/ --lrs 1e-4 3e-4 --epochs 3

A suite file (YAML; `glue` is built in: src/masklm/suites/glue.yaml):

    name: my-suite
    grid: {lrs: [3.0e-5, 5.0e-5], epochs: [3], seeds: [0]}   # every task's grid unless it has its own
    settings: {train.batch_size: 32}                          # fine-tuning settings for every task
    tasks:
      - name: CoLA
        type: classification        # | pair-classification | regression | token-classification | qa | multiple-choice
        train: CoLA/train.tsv       # paths relative to --data-dir
        validation: CoLA/dev.tsv
        also: {}                    # more labelled files, scored with the model picked on validation (MNLI-mm)
        header: [source, label, original_label, sentence]   # a file without a header row: its column names
        columns: {text: sentence, label: label}            # (pair-)classification / regression: where things are
        metrics: [mcc]              # what is reported; an `also` file's metric is NAME_metric (mismatched_accuracy)
        select: mcc                 # the validation metric that picks the best run (default: the first metric)
        grid: {lrs: [1.0e-5]}       # this task's own grid (missing keys: the suite's)
        settings: {data.max_length: 64}

For each task and each grid point (learning rate × epochs × seed) a fine-tuning run is made in
OUTPUT/runs/TASK/lrL-epE-seedS, keeping its best epoch by the `select` metric; the run with the best validation
value is the task's result, as the GLUE papers report. A task's score is the mean of its metrics in points
(fractions × 100; QA's exact match and F1 are points already); the suite average the mean of the task scores
(GLUE's definition). Each finished task writes OUTPUT/tasks/TASK.json, so a
suite stopped half-way and run again skips what it finished (and reuses the finished grid runs of the task it was
in). `--jobs N` runs N tasks at a time in separate processes, each with its share of the CPU threads.

Files of the three text types are read (CSV / TSV without quoting, as GLUE ships them / JSONL) and written to
OUTPUT/data/TASK/ as JSONL with the columns text, text_pair, label; the other types take their files as they are,
in their task's format (`masklm finetune --help`), with column settings under `settings`.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import math
import os
import re
import shutil
import signal
import threading
import time
from collections.abc import Sequence
from concurrent.futures import FIRST_EXCEPTION, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import asdict, dataclass, field
from multiprocessing import active_children, get_context
from pathlib import Path
from typing import Any

import yaml

from masklm.errors import UserError
from masklm.tasks.files import read_records, read_text
from masklm.utils import atomic_write_text, log, refuse_path_through_file

BUILT_IN = {"glue": Path(__file__).parent / "suites" / "glue.yaml"}

# suite type → (masklm task, settings it implies, whether its files are read through `columns`)
TYPES: dict[str, tuple[str, dict[str, str], bool]] = {
    "classification": ("classification", {}, True),
    "pair-classification": ("classification", {"data.text_pair_column": "text_pair"}, True),
    "regression": ("classification", {"data.regression": "true"}, True),
    "token-classification": ("token-classification", {}, False),
    "qa": ("qa", {}, False),
    "multiple-choice": ("multiple-choice", {}, False),
}
TASK_KEYS = {
    "name",
    "type",
    "train",
    "validation",
    "also",
    "header",
    "columns",
    "metrics",
    "select",
    "grid",
    "settings",
}
SUITE_KEYS = ("name", "grid", "settings", "tasks")
GRID_KEYS = ("lrs", "epochs", "seeds")
COLUMN_KEYS = {"text", "text_pair", "label"}
# a task's name names its folders (OUTPUT/runs/NAME, OUTPUT/data/NAME, OUTPUT/tasks/NAME.json): one plain component
TASK_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
# written into OUTPUT when a suite starts there: what --output may resume and --overwrite may delete
MARKER = "suite-run.json"
# lrs []: none given, so masklm finetune's default for the model (masklm.finetune.default_lr), set in run_suite
DEFAULT_GRID: dict[str, list[Any]] = {"lrs": [], "epochs": [3.0], "seeds": [0]}


@dataclass
class TaskSpec:
    name: str
    type: str
    train: str
    validation: str
    metrics: list[str]
    select: str
    grid: dict[str, list[Any]]
    settings: dict[str, str] = field(default_factory=dict)
    also: dict[str, str] = field(default_factory=dict)
    header: list[str] | None = None
    columns: dict[str, str] = field(default_factory=dict)


# ----------------------------------------------------------------------------------------------------------------
# The suite file


def _grid(values: Any, base: dict[str, list[Any]], where: str) -> dict[str, list[Any]]:
    """A grid: `base` with the keys `values` gives; each a non-empty list of numbers."""
    values = values or {}
    if not isinstance(values, dict) or set(values) - set(GRID_KEYS):
        raise UserError(f"{where}: grid takes the keys {', '.join(GRID_KEYS)}, not {values!r}")
    out = dict(base)
    for key, items in values.items():
        # YAML reads 1e-3 (no dot) as a string: a string that is a number is that number
        items = [_number(v) for v in (items if isinstance(items, list) else [items])]
        if not items or not all(isinstance(v, int | float) and not isinstance(v, bool) for v in items):
            raise UserError(f"{where}: grid.{key} must be a non-empty list of numbers, not {values[key]!r}")
        out[key] = list(items) if key == "seeds" else [float(v) for v in items]
    check_grid(out, where)  # before a seed is made an int: 0.2 is refused, not truncated to 0
    return {**out, "seeds": [int(v) for v in out["seeds"]]}


def _number(value: Any) -> Any:
    """A string that spells a number as that number (YAML's "1e-3"); anything else as it is."""
    if isinstance(value, str):
        try:
            return float(value) if any(c in value.lower() for c in ".en") else int(value)
        except ValueError:
            return value
    return value


def check_grid(grid: dict[str, list[Any]], where: str) -> None:
    """Learning rates and epochs positive and finite, seeds whole numbers from 0 (a suite file's or --lrs ...)."""
    for key in ("lrs", "epochs"):
        bad = [v for v in grid[key] if not (math.isfinite(v) and v > 0)]
        if bad:
            raise UserError(f"{where}: grid.{key} must hold positive, finite numbers, not {bad[0]:g}")
    bad_seeds = [v for v in grid["seeds"] if not (math.isfinite(v) and v == int(v) and v >= 0)]
    if bad_seeds:
        raise UserError(f"{where}: grid.seeds must hold whole numbers from 0, not {bad_seeds[0]}")


def _settings(values: Any, where: str) -> dict[str, str]:
    if not isinstance(values or {}, dict):
        raise UserError(f"{where}: settings must map dotted names to values ({{train.batch_size: 16}})")
    return {str(k): str(v).lower() if isinstance(v, bool) else str(v) for k, v in (values or {}).items()}


def _mapping(raw: dict[str, Any], key: str, example: str, where: str) -> dict[str, str]:
    """A task's `also` / `columns`: a mapping of names to strings."""
    value = raw.get(key) or {}
    if not isinstance(value, dict):
        raise UserError(f"{where}: {key} must be a mapping ({example}), not {value!r}")
    return {str(k): str(v) for k, v in value.items()}


def _task_spec(raw: Any, n: int, grid: dict[str, list[Any]], where: str) -> TaskSpec:
    if not isinstance(raw, dict):
        raise UserError(f"{where}: task {n} must be a mapping with name, type, train, validation, metrics")
    missing = [k for k in ("name", "type", "train", "validation", "metrics") if not raw.get(k)]
    unknown = sorted(set(raw) - TASK_KEYS)
    if missing or unknown:
        parts = []
        if missing:
            parts.append(f"needs {', '.join(missing)}")
        if unknown:
            parts.append(f"has unknown keys {', '.join(unknown)}")
        what = " and ".join(parts)
        raise UserError(
            f"{where}: task {n} ({raw.get('name', '?')}) {what} (keys: {', '.join(sorted(TASK_KEYS))})"
        )
    name, kind = str(raw["name"]), str(raw["type"])
    if not TASK_NAME.fullmatch(name):
        raise UserError(
            f"{where}: task name {name!r} names its folders under --output: use letters, digits, '.', '_' and "
            "'-' (no '/', no leading '.')"
        )
    where = f"{where}: task {name}"
    if kind not in TYPES:
        raise UserError(f"{where}: unknown type {kind!r}; choose one of {', '.join(TYPES)}")
    if raw.get("columns") and not TYPES[kind][2]:
        raise UserError(f"{where}: a {kind} task reads its own format; set its columns under settings")
    columns = _mapping(raw, "columns", "{text: sentence, label: label}", where)
    if set(columns) - COLUMN_KEYS:
        raise UserError(
            f"{where}: columns has unknown key {sorted(set(columns) - COLUMN_KEYS)[0]!r}; its keys are "
            f"{', '.join(sorted(COLUMN_KEYS))} (each names a column of the task's files)"
        )
    if kind == "pair-classification" and "text_pair" not in columns:
        raise UserError(
            f"{where}: a pair-classification task names its second text: columns: {{text_pair: ...}}"
        )
    metrics = [str(m) for m in (raw["metrics"] if isinstance(raw["metrics"], list) else [raw["metrics"]])]
    also = _mapping(raw, "also", "{mismatched: MNLI/dev_mismatched.tsv}", where)
    header = raw.get("header")
    if header is not None and not isinstance(header, list):
        raise UserError(f"{where}: header must be a list of column names, not {header!r}")
    own = [m for m in metrics if not any(m.startswith(f"{a}_") for a in also)]
    select = str(raw.get("select") or (own or metrics)[0])
    return TaskSpec(
        name=name, type=kind, train=str(raw["train"]), validation=str(raw["validation"]), metrics=metrics,
        select=select, grid=_grid(raw.get("grid"), grid, where), settings=_settings(raw.get("settings"), where),
        also=also, header=[str(h) for h in header] if header else None,
        columns=columns,
    )  # fmt: skip


def load_suite(suite: str) -> tuple[str, list[TaskSpec], dict[str, str]]:
    """(name, tasks, settings for every task) of a built-in suite name or a YAML file."""
    path = BUILT_IN.get(suite, Path(suite))
    if not path.is_file():
        raise UserError(f"--suite {suite}: no such file (built-in suites: {', '.join(BUILT_IN)})")
    try:
        raw = yaml.safe_load(read_text(path))
    except yaml.YAMLError as e:
        raise UserError(f"{path} is not valid YAML ({e.__class__.__name__})") from None
    if not isinstance(raw, dict) or not isinstance(raw.get("tasks"), list) or not raw["tasks"]:
        raise UserError(f"{path}: a suite file needs a `tasks:` list (see `masklm suite --help`)")
    unknown = sorted(str(k) for k in set(raw) - set(SUITE_KEYS))
    if unknown:
        raise UserError(f"{path}: unknown key {unknown[0]!r} (a suite file's keys: {', '.join(SUITE_KEYS)})")
    grid = _grid(raw.get("grid"), DEFAULT_GRID, str(path))
    tasks = [_task_spec(t, n, grid, str(path)) for n, t in enumerate(raw["tasks"], 1)]
    names = [t.name for t in tasks]
    if len(set(names)) != len(names):
        raise UserError(f"{path}: two tasks share a name; task names must be unique")
    return str(raw.get("name") or path.stem), tasks, _settings(raw.get("settings"), str(path))


# ----------------------------------------------------------------------------------------------------------------
# Task files


def _read_rows(path: Path, header: list[str] | None) -> tuple[list[str], list[dict[str, Any]]]:
    """The records of a CSV / TSV / JSONL file; with `header`, a TSV / CSV that has no header row (a first row
    that is the header's names is refused: read as data, it would be one more example, labelled "label")."""
    if header is None:
        columns, records = read_records(path)
        return columns, [rec for _, rec in records]
    text = read_text(path)
    if path.suffix.lower() == ".tsv":
        reader = csv.reader(io.StringIO(text, newline=""), delimiter="\t", quoting=csv.QUOTE_NONE)
    else:
        reader = csv.reader(io.StringIO(text, newline=""))
    rows = []
    for row in reader:
        if not any(cell.strip() for cell in row):
            continue
        if not rows and [cell.strip() for cell in row] == header:
            raise UserError(
                f"{path}:{reader.line_num}: a header row ({', '.join(header)}), but this task's files have none "
                "(the suite's `header` names their columns); remove that line"
            )
        if len(row) != len(header):
            raise UserError(
                f"{path}:{reader.line_num}: has {len(row)} fields, the suite's header has {len(header)}"
            )
        rows.append(dict(zip(header, row)))
    return header, rows


def converted_lines(spec: TaskSpec, path: Path) -> list[str]:
    """A (pair-)classification / regression file's rows as JSONL lines with the keys text[, text_pair], label."""
    columns, rows = _read_rows(path, spec.header)
    wanted = {"text": spec.columns.get("text", "text"), "label": spec.columns.get("label", "label")}
    if "text_pair" in spec.columns:
        wanted["text_pair"] = spec.columns["text_pair"]
    absent = [c for c in wanted.values() if c not in columns]
    if absent:
        raise UserError(
            f"{path}: no column {absent[0]!r} (columns: {', '.join(columns)}); fix the task's columns in the suite"
        )
    return [json.dumps({k: row[c] for k, c in wanted.items()}, ensure_ascii=False) for row in rows]


def convert_file(spec: TaskSpec, path: Path, out: Path) -> Path:
    """A (pair-)classification / regression file written as JSONL with the columns text[, text_pair], label."""
    lines = converted_lines(spec, path)
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out, "\n".join(lines) + "\n")
    return out


def given_files(spec: TaskSpec, data_dir: Path) -> dict[str, Path]:
    """split → the task's file under --data-dir; a missing one is a UserError."""
    given = {
        "train": spec.train,
        "validation": spec.validation,
        **{f"also_{k}": v for k, v in spec.also.items()},
    }
    paths = {split: data_dir / rel for split, rel in given.items()}
    for split, path in paths.items():
        if not path.is_file():
            raise UserError(
                f"task {spec.name}: {split} file {path} does not exist (paths are relative to --data-dir)"
            )
    return paths


def task_files(spec: TaskSpec, data_dir: Path, out_dir: Path) -> dict[str, Path]:
    """split → the file fine-tuning reads (converted into OUTPUT/data/TASK/ for the text types)."""
    paths = given_files(spec, data_dir)
    if not TYPES[spec.type][2]:
        return paths
    return {
        split: convert_file(spec, p, out_dir / "data" / spec.name / f"{split}.jsonl")
        for split, p in paths.items()
    }


# ----------------------------------------------------------------------------------------------------------------
# One task: its grid, the best run, its metrics


@dataclass(frozen=True)
class SuiteRun:
    """What every task of one `masklm suite` call shares."""

    model: str
    data_dir: str
    out_dir: str
    overrides: dict[str, str]  # the fine-tuning settings given on the command line
    init: str = "pretrained"


def grid_points(grid: dict[str, list[Any]]) -> list[dict[str, Any]]:
    return [
        {"lr": lr, "epochs": ep, "seed": s}
        for lr in grid["lrs"]
        for ep in grid["epochs"]
        for s in grid["seeds"]
    ]


def _point_name(point: dict[str, Any]) -> str:
    return f"lr{point['lr']:g}-ep{point['epochs']:g}-seed{point['seed']}"


def task_settings(spec: TaskSpec, run: SuiteRun, base_settings: dict[str, str]) -> dict[str, str]:
    """The fine-tuning settings of a task's runs: the suite's, its type's, the task's, the command line's (and,
    per point, the grid's). The CPU threads a process gets (from --jobs) are not among them: they change the
    speed, not the result."""
    # a second text named in `columns` is read, whatever the type: STS-B is a regression on sentence pairs
    pair = {"data.text_pair_column": "text_pair"} if "text_pair" in spec.columns else {}
    return {**base_settings, **TYPES[spec.type][1], **pair, **spec.settings, **run.overrides}


def _identity(spec: TaskSpec, run: SuiteRun, settings: dict[str, str]) -> dict[str, Any]:
    """What a task's result depends on: a saved result is reused only when all of it is the same."""
    model = str(Path(run.model).resolve()) if Path(run.model).exists() else run.model
    return {"task": asdict(spec), "model": model, "init": run.init, "settings": settings}


def point_settings(spec: TaskSpec, settings: dict[str, str], point: dict[str, Any]) -> dict[str, str]:
    """The fine-tuning settings (dotted keys) of one grid point."""
    values = {**settings, "train.lr": str(point["lr"]), "train.epochs": str(point["epochs"])}
    return values | {"train.seed": str(point["seed"]), "train.metric_for_best": spec.select}


def point_config(spec: TaskSpec, settings: dict[str, str], point: dict[str, Any]) -> Any:
    """The fine-tuning config of one grid point (a FinetuneConfig, validated)."""
    from masklm.config import build_config

    values = point_settings(spec, settings, point)
    return build_config(
        values, source=f"task {spec.name}'s settings (the suite file's or the command line's)"
    )


# label sets that bring out every metric a task may report (f1 for two classes, entity F1 for BIO tags)
_LABEL_GUESSES: tuple[list[str] | None, ...] = (None, ["0", "1"], ["B-X", "I-X", "O"])


def check_task(spec: TaskSpec, run: SuiteRun, base_settings: dict[str, str]) -> None:
    """What can be wrong with a task before it fine-tunes: its files (read, not written), its settings at every
    grid point, and the names of its metrics (`select` and those reported)."""
    import dataclasses

    from masklm.tasks import get_task

    paths = given_files(spec, Path(run.data_dir))
    settings = task_settings(spec, run, base_settings)
    if TYPES[spec.type][2]:
        labels = {
            split: [json.loads(line)["label"] for line in converted_lines(spec, path)]
            for split, path in paths.items()
        }
        _check_labels(spec, paths, labels, settings.get("data.regression", "false").lower() == "true")
    cfg = None
    for point in grid_points(spec.grid):
        cfg = point_config(spec, settings, point)
    assert cfg is not None  # a grid has at least one point
    task = get_task(TYPES[spec.type][0])
    data = dataclasses.replace(cfg.data, version_2=True) if cfg.data.version_2 is None else cfg.data
    known = {m for labels in _LABEL_GUESSES for m in task.metric_names(data, labels)}
    own = {m: m for m in known} | {f"{a}_{m}": m for a in spec.also for m in known}
    for name, pool, what in (*((m, own, "metrics") for m in spec.metrics), (spec.select, known, "select")):
        if name not in pool:
            raise UserError(
                f"task {spec.name}: {what} names {name!r}, not a metric of a {spec.type} task "
                f"({', '.join(sorted(known))}; an `also` file's as NAME_metric)"
            )


def _check_labels(
    spec: TaskSpec, paths: dict[str, Path], labels: dict[str, list[str]], regression: bool
) -> None:
    """The labels of a text task's files, before anything trains (these mistakes would otherwise surface only
    once the tasks before it had trained): scores that are numbers for a regression, validation labels among the
    training labels, and `f1` (class 1's) asked of two classes only."""
    from masklm.tasks.encoding import build_label_map, match_label

    if regression:
        for split, values in labels.items():
            bad = next((v for v in values if not _finite(v)), None)
            if bad is not None:
                raise UserError(
                    f"task {spec.name}: {paths[split]}: score {bad!r} is not a number; a regression needs one"
                )
        return
    known = build_label_map(v for v in labels["train"] if v not in (None, ""))
    for split, values in labels.items():
        unknown = next(
            (v for v in values if v not in (None, "") and match_label(str(v), known) is None), None
        )
        if unknown is not None:
            raise UserError(
                f"task {spec.name}: {paths[split]}: label {unknown!r} is not among the training labels "
                f"({', '.join(known[:12])}); fix the label or add examples of it to the training file"
            )
    if "f1" in (*spec.metrics, spec.select) and len(known) != 2:
        raise UserError(
            f"task {spec.name}: metric f1 is class 1's F1 of two classes, and the training file has {len(known)}; "
            "use macro_f1 (or accuracy, mcc)"
        )


def _finite(value: Any) -> bool:
    try:
        return math.isfinite(float(value))
    except (TypeError, ValueError):
        return False


def check_model(model: str) -> None:
    """--model loaded once (its config, tokenizer and weights, as every grid run loads them), so that a folder
    that is no model (or a damaged one) is refused before anything is written; the model is then let go."""
    from masklm.model.io import load_model
    from masklm.tasks import all_tasks

    all_tasks()  # task modules may define heads of their own: importing them registers those heads
    load_model(model)


def _read_json_object(path: Path) -> dict[str, Any] | None:
    """A grid run's summary.json or a task's result, or None when it is missing or damaged (a crash while it
    was written): that run or task is then done again."""
    try:
        summary = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None
    return summary if isinstance(summary, dict) else None


def _resumable(out: Path, values: dict[str, str], run: SuiteRun) -> bool:
    """Whether an unfinished grid run (stopped by a signal, or killed) can go on from its newest checkpoint: it
    has one, and it was started from the same model with settings `--resume` accepts (masklm.train.run's rule);
    otherwise it starts over."""
    from masklm.finetune import saved_config
    from masklm.train.checkpoint import is_valid
    from masklm.train.run import check_resume_settings, read_saved_config

    try:
        started = (read_saved_config(out) or {}).get("run") or {}
        same_model = Path(str(started.get("model"))).resolve() == Path(run.model).resolve()
        if not same_model or started.get("init", "pretrained") != run.init:
            return False
        check_resume_settings(out, values, saved_config)
    except UserError:  # other settings, or a damaged config.yaml
        return False
    return any(is_valid(p) for p in (out / "checkpoints").glob("step_*"))


class SuiteStopped(Exception):
    """A stop signal (SIGTERM, Ctrl-C) ended a grid run: the suite stops; the same command continues it."""


def _fit_point(
    spec: TaskSpec, run: SuiteRun, files: dict[str, Path], settings: dict[str, str], point: dict
) -> dict:
    """One grid point's fine-tuning run (a finished one is read back, a stopped one resumed); its summary."""
    from masklm.finetune import finetune

    out = Path(run.out_dir) / "runs" / spec.name / _point_name(point)
    summary = _read_json_object(out / "summary.json")
    if summary is not None and isinstance(summary.get("best"), dict):
        log(f"[{spec.name}] {out.name}: finished before, reused")
        return summary
    values = point_settings(spec, settings, point)
    resume = _resumable(out, values, run)
    log(f"[{spec.name}] {'resuming' if resume else 'fine-tuning'} {out.name}")
    summary = finetune(
        point_config(spec, settings, point), TYPES[spec.type][0], run.model, files["train"], files["validation"],
        out, resume=resume, overwrite=not resume, command=f"masklm suite ({spec.name}, {out.name})",
        resume_changes=values if resume else None, init=run.init,
    )  # fmt: skip
    if summary.get("stopped"):
        raise SuiteStopped(f"{spec.name}, {out.name}")
    return summary


def run_task(
    spec: TaskSpec, run: SuiteRun, base_settings: dict[str, str], threads: int | None
) -> dict[str, Any]:
    """Fine-tune every grid point, keep the best by validation `select`, score the `also` files with it; the
    result is written to OUTPUT/tasks/NAME.json and returned."""
    from masklm.finetune import evaluate_model
    from masklm.tasks import get_task

    start = time.perf_counter()
    task = TYPES[spec.type][0]
    settings = task_settings(spec, run, base_settings)
    files = task_files(spec, Path(run.data_dir), Path(run.out_dir))
    fit_settings = {"train.threads": str(threads), **settings} if threads else settings
    points = []
    for point in grid_points(spec.grid):
        if _STOP.is_set():  # a worker of a stopping suite, between grid runs
            raise SuiteStopped(f"{spec.name}, before {_point_name(point)}")
        summary = _fit_point(spec, run, files, fit_settings, point)
        points.append(
            {**point, "value": summary["best"]["value"], "run": _point_name(point), "summary": summary}
        )
    lower = spec.select in get_task(task).lower_is_better
    best = (min if lower else max)(points, key=lambda p: p["value"])
    summary = best["summary"]
    metrics = {
        k: summary[k] for k in summary["last_eval"] if k in summary
    }  # the best epoch's validation metrics
    best_model = Path(run.out_dir) / "runs" / spec.name / best["run"] / "model"
    for name in spec.also:
        scored = evaluate_model(best_model, files[f"also_{name}"], {})
        metrics.update({f"{name}_{k}": v for k, v in scored.items()})
    absent = [m for m in spec.metrics if m not in metrics]
    if absent:
        raise UserError(
            f"task {spec.name}: no metric {absent[0]!r} among {', '.join(sorted(metrics))}; fix its metrics"
        )
    reported = {m: float(metrics[m]) for m in spec.metrics}
    # QA's exact match and F1 are 0-100 already, also as an `also` file's NAME_metric; the rest are fractions
    on_100 = get_task(task).points_metrics
    on_100 = on_100 | {f"{name}_{m}" for name in spec.also for m in on_100}
    in_points = {m: v if m in on_100 else 100 * v for m, v in reported.items()}
    result = {
        "task": spec.name,
        "type": spec.type,
        "metrics": reported,
        "points": in_points,
        "score": sum(in_points.values()) / len(in_points),
        "best": {k: best[k] for k in ("lr", "epochs", "seed", "run")},
        "select": spec.select,
        "grid": [{k: p[k] for k in ("lr", "epochs", "seed", "value", "run")} for p in points],
        "wall_s": round(time.perf_counter() - start, 1),
        "identity": _identity(spec, run, settings),
    }
    _result_path(run, spec).parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(_result_path(run, spec), json.dumps(result, indent=2) + "\n")
    return result


def _result_path(run: SuiteRun, spec: TaskSpec) -> Path:
    return Path(run.out_dir) / "tasks" / f"{spec.name}.json"


def finished_result(spec: TaskSpec, run: SuiteRun, base_settings: dict[str, str]) -> dict[str, Any] | None:
    """The saved result of a task finished by an earlier call of the same suite, or None; a result of another
    model, task definition or settings is refused rather than mixed in."""
    path = _result_path(run, spec)
    if not path.is_file():
        return None
    result = _read_json_object(path)  # damaged (a crash while it was written): the task is done again
    if result is None:
        log(f"[{spec.name}] {path} is damaged: the task runs again (its finished grid runs are reused)")
        return None
    settings = task_settings(spec, run, base_settings)
    if result.get("identity") != _identity(spec, run, settings):
        raise UserError(
            f"{run.out_dir} holds a result for {spec.name} from another model, task definition or settings; "
            "choose another --output (or delete that folder to start over)"
        )
    return result


# ----------------------------------------------------------------------------------------------------------------
# The suite: tasks in order or in parallel, resume, the report


# With --jobs, the suite's process is the one a stop reaches: the workers run in their own process group (a
# Ctrl-C at the terminal reaches the suite alone), and the suite passes one SIGTERM to each, which stops its grid
# run at a checkpoint (`fit`) or, between grid runs, before the next (`_STOP`). A worker whose suite is gone (killed
# with -9) stops the same way and exits, rather than training on as an orphan.
_STOP = threading.Event()  # in a worker: a stop arrived outside a fine-tuning run
_BUSY = threading.Event()  # in a worker: a task is running


def _worker_start() -> None:
    """ProcessPoolExecutor's initializer: the worker's own process group, its stop handler, the parent watch."""
    os.setpgrp()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda signum, frame: _STOP.set())
    threading.Thread(target=_watch_parent, args=(os.getppid(),), daemon=True).start()


def _watch_parent(parent: int) -> None:
    """In a worker: once the suite's process is gone, stop the task at a checkpoint, then exit."""
    while os.getppid() == parent:
        time.sleep(0.5)
    if _BUSY.is_set():
        os.kill(os.getpid(), signal.SIGTERM)
        while _BUSY.is_set():
            time.sleep(0.2)
    os._exit(0)


def _run_task_in_process(spec: TaskSpec, run: SuiteRun, base_settings: dict[str, str], threads: int) -> dict:
    """run_task in a worker process (spawned: a fresh interpreter, torch initialised there)."""
    import torch

    _BUSY.set()
    try:
        if _STOP.is_set():  # the suite is stopping: start nothing new
            raise SuiteStopped(f"{spec.name}, before it started")
        torch.set_num_threads(threads)
        return run_task(spec, run, base_settings, threads)
    except SuiteStopped:
        # the stop may have reached the fine-tuning run's own handler, not _worker_start's: the tasks this worker
        # has queued (the pool hands them over before they start, past cancelling) must not start either
        _STOP.set()
        raise
    finally:
        _BUSY.clear()


def run_tasks(
    todo: Sequence[TaskSpec], run: SuiteRun, base_settings: dict[str, str], jobs: int
) -> dict[str, dict[str, Any]]:
    """Run the unfinished tasks: one after another, or `jobs` at a time in worker processes."""
    if jobs <= 1 or len(todo) <= 1:
        return {spec.name: run_task(spec, run, base_settings, None) for spec in todo}
    threads = max(1, (os.cpu_count() or 1) // min(jobs, len(todo)))
    pool = ProcessPoolExecutor(
        min(jobs, len(todo)), mp_context=get_context("spawn"), initializer=_worker_start
    )
    futures = {
        spec.name: pool.submit(_run_task_in_process, spec, run, base_settings, threads) for spec in todo
    }
    stopping = threading.Event()

    def stop_workers() -> None:
        stopping.set()
        for child in active_children():  # a second stop: the workers exit at once
            # (a worker that has just died, killed say, is no longer there to be told)
            with contextlib.suppress(ProcessLookupError):
                os.kill(child.pid, signal.SIGTERM)

    def on_signal(signum: int, frame: Any) -> None:
        if not stopping.is_set():
            log(
                f"\nreceived {signal.Signals(signum).name}: the suite's workers stop at their next checkpoint"
            )
        stop_workers()

    main_thread = threading.current_thread() is threading.main_thread()
    signals = (signal.SIGTERM, signal.SIGINT) if main_thread else ()
    handlers = {sig: signal.signal(sig, on_signal) for sig in signals}
    try:
        pending = set(futures.values())
        while pending:
            done, pending = wait(pending, timeout=0.5, return_when=FIRST_EXCEPTION)
            if any(not f.cancelled() and f.exception() is not None for f in done) and not stopping.is_set():
                stop_workers()  # a task failed: the others stop at a checkpoint, and the failure is reported
            if stopping.is_set():  # the tasks not started yet never start
                pending = {f for f in pending if not f.cancel()}
        return _task_results(futures)
    except BrokenProcessPool:
        _end_survivors(SURVIVOR_GRACE_S)
        raise UserError(
            "a suite worker process died (killed, or out of memory?); run the same masklm suite command again to "
            "continue: finished tasks and grid runs are kept"
        ) from None
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
        for sig, handler in handlers.items():
            signal.signal(sig, handler)


# A broken pool (a worker died) stops its other workers with SIGTERM, which stops their runs at a checkpoint; they
# then wait for work that never comes while the pool waits for them to exit. After this long they are ended.
SURVIVOR_GRACE_S = 20.0


def _end_survivors(grace_s: float) -> None:
    """The workers left by a broken pool: time to checkpoint, then SIGKILL (else the suite would hang)."""
    deadline = time.monotonic() + grace_s
    while active_children() and time.monotonic() < deadline:
        time.sleep(0.5)
    for child in active_children():
        with contextlib.suppress(ProcessLookupError):
            os.kill(child.pid, signal.SIGKILL)


def _task_results(futures: dict[str, Future]) -> dict[str, dict[str, Any]]:
    """Each task's result; else the first failure that is not a stop, else the first stop (a task cancelled
    before it started is one)."""
    errors = [f.exception() for f in futures.values() if not f.cancelled() and f.exception() is not None]
    failure = next((e for e in errors if not isinstance(e, SuiteStopped)), None) or next(iter(errors), None)
    if failure is not None:
        raise failure
    cancelled = [name for name, f in futures.items() if f.cancelled()]
    if cancelled:
        raise SuiteStopped(f"{cancelled[0]}, before it started")
    return {name: future.result() for name, future in futures.items()}


def report_markdown(report: dict[str, Any]) -> str:
    """suite.md: one row per task (metrics in points, score, the best grid point, wall time), then the average."""
    lines = [
        f"# {report['suite']}: {report['model']}"
        + (" (random init)" if report.get("init") == "random" else ""),
        "",
        "| task | metrics | score | best lr | epochs | seed | grid runs | wall s |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for name, r in report["tasks"].items():
        points = r.get("points") or {k: 100 * v for k, v in r["metrics"].items()}  # (results of 0.1.0 runs)
        metrics = " / ".join(f"{k} {v:.1f}" for k, v in points.items())
        b = r["best"]
        lines.append(
            f"| {name} | {metrics} | {r['score']:.1f} | {b['lr']:g} | {b['epochs']:g} | {b['seed']} | "
            f"{len(r['grid'])} | {r['wall_s']:.0f} |"
        )
    lines.append(f"| **average** |  | **{report['average']:.1f}** |  |  |  |  | {report['wall_s']:.0f} |")
    return "\n".join(lines) + "\n"


def run_suite(
    suite: str,
    model: str,
    data_dir: str,
    output: str,
    overrides: dict[str, str] | None = None,
    jobs: int = 1,
    grid: dict[str, list[Any]] | None = None,
    init: str = "pretrained",
    overwrite: bool = False,
) -> dict[str, Any]:
    """Run (or finish) a suite; write OUTPUT/suite.json and suite.md; return the report.

    `grid` ({"lrs": [...], ...}) replaces the keys it has in every task's grid (the command line's --lrs etc.).
    OUTPUT may be new, empty, or a suite's earlier output (which it continues; `overwrite` starts it over).
    Everything that can be checked (the suite, every task's files, settings and metrics, the model) is checked
    before anything is written. A stop signal raises SuiteStopped once the grid run it stopped is checkpointed."""
    name, specs, base_settings = load_suite(suite)
    if grid:
        check_grid({**DEFAULT_GRID, "lrs": [1.0], **grid}, "the command line")
        specs = [TaskSpec(**{**asdict(s), "grid": {**s.grid, **grid}}) for s in specs]
    if any(not s.grid["lrs"] for s in specs):  # no rate in the suite, the task or --lrs: the model's default
        from masklm.finetune import default_lr
        from masklm.model.io import model_hidden_size

        lr = default_lr(model_hidden_size(model))
        specs = [
            s if s.grid["lrs"] else TaskSpec(**{**asdict(s), "grid": {**s.grid, "lrs": [lr]}}) for s in specs
        ]
    if not Path(data_dir).is_dir():
        raise UserError(f"--data-dir {data_dir} is not a folder")
    if jobs < 1:
        raise UserError(f"--jobs must be at least 1, not {jobs}")
    run = SuiteRun(model, str(data_dir), str(output), {k: str(v) for k, v in (overrides or {}).items()}, init)
    out = Path(output)
    check_output(out, overwrite, name)
    done = {}
    if not overwrite:
        done = {s.name: r for s in specs if (r := finished_result(s, run, base_settings)) is not None}
    for task_name in done:
        log(f"[{task_name}] finished before: result read from {out / 'tasks'}")
    for s in specs:  # every task's mistakes are found before any fine-tuning starts (or anything is written)
        if s.name not in done:
            check_task(s, run, base_settings)
    if any(s.name not in done for s in specs):
        check_model(model)
    if overwrite and out.exists():  # only once everything is known to be right
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)
    if not (out / MARKER).is_file():
        atomic_write_text(out / MARKER, json.dumps({"format": "masklm-suite", "suite": name}) + "\n")
    start = time.perf_counter()
    done |= run_tasks([s for s in specs if s.name not in done], run, base_settings, jobs)
    tasks = {s.name: {k: v for k, v in done[s.name].items() if k != "identity"} for s in specs}
    report = {
        "suite": name,
        "model": model,
        "init": init,
        "tasks": tasks,
        "average": sum(t["score"] for t in tasks.values()) / len(tasks),
        "wall_s": round(sum(t["wall_s"] for t in tasks.values()), 1),
        "wall_s_this_call": round(time.perf_counter() - start, 1),
    }
    atomic_write_text(out / "suite.json", json.dumps(report, indent=2) + "\n")
    atomic_write_text(out / "suite.md", report_markdown(report))
    return report


def check_output(out: Path, overwrite: bool, name: str | None = None) -> None:
    """--output: new, an empty folder, or one a suite wrote (it holds MARKER); anything else is refused, so a
    suite never writes into (or deletes) a folder of the user's. A folder of another suite (`name`: this one's)
    is refused without --overwrite: its report would be replaced by this suite's."""
    refuse_path_through_file(out)
    if not out.exists():
        return
    if not out.is_dir():
        raise UserError(f"--output {out} is a file; give a folder for the suite's runs and results")
    if (out / MARKER).is_file():
        other = (_read_json_object(out / MARKER) or {}).get("suite")
        if name is not None and other is not None and other != name and not overwrite:
            raise UserError(
                f"--output {out} holds the runs of suite {other!r}, not {name!r}; choose another --output (or "
                "--overwrite to replace them)"
            )
        return
    if not any(out.iterdir()):
        return
    legacy = (out / "tasks").is_dir() and any(
        "identity" in (_read_json_object(p) or {}) for p in (out / "tasks").glob("*.json")
    )  # a suite folder written before MARKER existed
    if not legacy:
        what = "--overwrite refuses to delete" if overwrite else "--output"
        raise UserError(
            f"{what} {out}: it is not empty and not a masklm suite folder (no {MARKER}); choose another --output"
        )


def cmd_suite(args: Any, overrides: dict[str, Any]) -> int:
    """The `masklm suite` handler."""
    grid = {k: v for k, v in (("lrs", args.lrs), ("epochs", args.epochs), ("seeds", args.seeds)) if v}
    output = args.output or f"runs/suite-{Path(args.suite).stem}"
    try:
        report = run_suite(
            args.suite,
            args.model,
            args.data_dir,
            output,
            overrides,
            args.jobs,
            grid,
            args.init,
            args.overwrite,
        )
    except SuiteStopped as stopped:
        log(
            f"the suite stopped in {stopped}; run the same masklm suite command again to continue (the suite "
            "takes no --resume: it resumes the stopped run from its checkpoint itself, and keeps finished tasks and "
            "grid runs)"
        )
        return 0
    print(report_markdown(report), end="")
    print(f"wrote {Path(output) / 'suite.json'} and {Path(output) / 'suite.md'}")
    return 0
