"""masklm compare: several run folders side by side, one table and one plot.

    masklm compare runs/a runs/b runs/c --output compare.png

The table has one row per run: its final metrics (summary.json: a pretraining run's last evaluation, a fine-tuning
run's best validation metrics; the last evaluation in metrics.jsonl for a run that has not finished), its budget
used (tokens, training time) and every setting of config.yaml whose value is not the same in all the runs (the
settings they share are left out: they explain no difference). The plot (--output) has the training loss and the
validation metric of every run against tokens seen and against training wall time; a run's validation metric is
its main one (masked-token accuracy for pretraining, the metric that picked the best model for fine-tuning).
Evaluation records carry no clock, so their wall time is interpolated between the training records around them.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from masklm.errors import UserError
from masklm.plots import new_figure, without_replayed

SUMMARY_KEYS = ("tokens", "steps", "train_time_s")  # the budget each run used, beside its metrics
SKIPPED_METRICS = {"perplexity"}  # follows from the loss


@dataclass
class RunRecord:
    name: str
    folder: Path
    settings: dict[str, Any]  # config.yaml flattened to dotted keys
    final: dict[str, float]
    main_metric: str
    rows: list[dict[str, Any]]
    finished: bool


def flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """{"train": {"lr": 1e-3}} → {"train.lr": 1e-3}."""
    out: dict[str, Any] = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(flatten(value, name + "."))
        else:
            out[name] = value
    return out


class DamagedRun(Exception):
    """A run file whose content is not what masklm writes (load_run turns it into a one-line UserError)."""


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _check_numbers(record: dict[str, Any], keys: Iterable[str], what: str) -> None:
    """DamagedRun unless every one of `keys` that `record` holds is a number."""
    for key in keys:
        if key in record and not _number(record[key]):
            raise DamagedRun(f"{what}: {key!r} is {record[key]!r}, not a number")


def read_config(path: Path) -> dict[str, Any]:
    """config.yaml flattened to dotted keys; DamagedRun when it is not a YAML mapping of settings (an empty file
    or an empty mapping included: masklm writes every setting of a run there)."""
    try:
        tree = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, yaml.YAMLError) as e:
        raise DamagedRun(f"{path.name} is not valid YAML ({e.__class__.__name__})") from None
    if tree is None or tree == {}:
        raise DamagedRun(f"{path.name} is empty, it holds none of the run's settings")
    if not isinstance(tree, dict):
        raise DamagedRun(f"{path.name} holds a {type(tree).__name__}, not a mapping of settings")
    return flatten(tree)


def read_records(path: Path) -> list[dict[str, Any]]:
    """metrics.jsonl's records; DamagedRun for a line that is not one. A last line cut short by a kill (no
    newline after it, text that begins like a record) is left out: the run is shown as unfinished."""
    lines = path.read_bytes().split(b"\n")
    last = lines.pop()  # b"" when the file ends in a newline
    rows = []
    for number, raw in enumerate(lines, 1):
        if raw.strip():
            rows.append(_record(raw, f"{path.name} line {number}"))
    if last.strip() and not _cut_short(last):
        rows.append(_record(last, f"{path.name} line {len(lines) + 1}"))
    return rows


def _cut_short(raw: bytes) -> bool:
    """Whether `raw` is a record a kill cut short: ASCII text (json.dumps writes no other) that begins like a
    record and does not parse."""
    if not (raw.isascii() and raw.lstrip().startswith(b"{")):
        return False
    try:
        json.loads(raw)
    except json.JSONDecodeError:
        return True
    return False


def _record(raw: bytes, where: str) -> dict[str, Any]:
    """One metrics.jsonl line: a JSON object whose split is text and whose numbers are numbers (every value of
    an evaluation is a metric)."""
    try:
        record = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise DamagedRun(f"{where} is not a JSON record ({e.__class__.__name__})") from None
    if not isinstance(record, dict):
        raise DamagedRun(f"{where} holds a {type(record).__name__}, not a JSON object")
    if not isinstance(record.get("split", ""), str):
        raise DamagedRun(f"{where}: 'split' is {record['split']!r}, not a name")
    metrics = [k for k in record if k != "split"] if record.get("split") == "val" else ()
    _check_numbers(record, ("step", "tokens", "elapsed_s", "loss", *metrics), where)
    return record


def read_summary(path: Path) -> dict[str, Any] | None:
    """summary.json (None while the run has not finished); DamagedRun when its parts are not of their type."""
    if not path.is_file():
        return None
    try:
        summary = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise DamagedRun(f"{path.name} is not valid JSON ({e.__class__.__name__})") from None
    if not isinstance(summary, dict):
        raise DamagedRun(f"{path.name} holds a {type(summary).__name__}, not a JSON object")
    for key in ("eval", "best", "last_eval"):
        if summary.get(key) is not None and not isinstance(summary[key], dict):
            raise DamagedRun(f"{path.name}: {key!r} is {summary[key]!r}, not a JSON object")
    scores = summary.get("eval") or {}
    # (null: a value that was not finite, NaN or inf, which masklm writes so to keep the file JSON)
    _check_numbers(scores, [k for k, v in scores.items() if v is not None], f"{path.name} eval")
    metric = (summary.get("best") or {}).get("metric")
    if metric is not None and not isinstance(metric, str):
        raise DamagedRun(f"{path.name}: best.metric is {metric!r}, not a metric's name")
    return summary


def load_run(folder: str | Path) -> RunRecord:
    """A pretraining or fine-tuning run folder: config.yaml, metrics.jsonl and (once finished) summary.json."""
    folder = Path(folder)
    config, metrics = folder / "config.yaml", folder / "metrics.jsonl"
    if not (config.is_file() and metrics.is_file()):
        raise UserError(f"{folder} is not a masklm run folder (it needs config.yaml and metrics.jsonl)")
    try:
        settings = read_config(config)
        rows = without_replayed(read_records(metrics))
        summary = read_summary(folder / "summary.json")
        if summary is not None and _older_than(summary, rows):
            # (a run resumed by an earlier masklm, which kept it, and stopped again)
            summary = None
    except DamagedRun as e:
        raise UserError(
            f"{folder}: a damaged run file: {e}; compare only whole runs (a damaged metrics.jsonl line can be "
            "deleted by hand: `--resume` drops such lines too)"
        ) from None
    except OSError as e:
        raise UserError(f"{folder}: cannot read {e.filename} ({e.strerror}); check its permissions") from None
    evals = [r for r in rows if r.get("split") == "val"]
    last_eval = {
        k: v for k, v in (evals[-1] if evals else {}).items() if k not in ("step", "tokens", "split")
    }
    if summary is None:
        final = dict(last_eval)
    elif "best" in summary:  # fine-tuning: the best validation metrics at the top level
        final = {
            k: summary[k] for k in summary.get("last_eval") or {} if isinstance(summary.get(k), (int, float))
        }
    else:
        final = dict(summary.get("eval") or {})
    final = {k: math.nan if v is None else float(v) for k, v in final.items() if k not in SKIPPED_METRICS}
    if summary is not None:
        final.update({k: float(summary[k]) for k in SUMMARY_KEYS if isinstance(summary.get(k), (int, float))})
    elif rows:
        final.update({"tokens": float(rows[-1].get("tokens", 0)), "steps": float(rows[-1].get("step", 0))})
        elapsed = [r["elapsed_s"] for r in rows if isinstance(r.get("elapsed_s"), int | float)]
        if elapsed:
            final["train_time_s"] = float(elapsed[-1])
    # a fine-tuning run's main metric is the one that picks its best model; a pretraining run's, its accuracy
    main = ((summary or {}).get("best") or {}).get("metric")
    if main is None and "run.task" in settings:
        # (finetune imports torch: only for an unfinished fine-tuning run)
        from masklm.finetune import run_main_metric

        main = run_main_metric(folder)
    if main not in last_eval:
        main = next(
            (k for k in ("accuracy", "f1", "pearson", "exact_match", "loss") if k in last_eval), "loss"
        )
    return RunRecord(folder.name, folder, settings, final, main, rows, summary is not None)


def _older_than(summary: dict[str, Any], rows: list[dict[str, Any]]) -> bool:
    """Whether summary.json ends at an earlier step than metrics.jsonl's records: it is from an earlier session of
    a run that was resumed since, and describes the run no more."""
    steps = [r["step"] for r in rows if isinstance(r.get("step"), int | float)]
    return isinstance(summary.get("steps"), int | float) and bool(steps) and summary["steps"] < max(steps)


def differing_settings(runs: list[RunRecord]) -> list[str]:
    """The dotted settings whose values are not all equal (absent counts as a value), in config order."""
    keys = list(dict.fromkeys(k for r in runs for k in r.settings))
    missing = object()
    return [k for k in keys if len({repr(r.settings.get(k, missing)) for r in runs}) > 1]


def _cell(value: Any) -> str:
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        if value.is_integer() and abs(value) < 1e15:
            # steps and tokens exactly (10,000 and 10,004 steps were both "1e+04")
            return str(int(value))
        return f"{value:.4g}" if abs(value) < 1e5 else f"{value:.3e}"
    return "-" if value is None else str(value)


def comparison_table(runs: list[RunRecord]) -> tuple[list[str], list[list[str]]]:
    """(headers, one row per run): run, final metrics (union, first-seen order), then the differing settings."""
    metrics = list(dict.fromkeys(k for r in runs for k in r.final))
    settings = differing_settings(runs)
    headers = ["run", *metrics, *settings]
    rows = []
    for r in runs:
        name = r.name if r.finished else f"{r.name} (unfinished)"
        rows.append(
            [name, *(_cell(r.final.get(k)) for k in metrics), *(_cell(r.settings.get(k)) for k in settings)]
        )
    return headers, rows


def format_table(headers: list[str], rows: list[list[str]]) -> str:
    """A Markdown table, columns padded to their widest cell (readable as plain text too)."""
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(headers)]

    def line(cells: list[str]) -> str:
        return "| " + " | ".join(c.ljust(w) for c, w in zip(cells, widths)) + " |"

    return "\n".join([line(headers), "|" + "|".join("-" * (w + 2) for w in widths) + "|", *map(line, rows)])


def _wall_times(rows: list[dict[str, Any]]) -> list[float]:
    """Each record's training wall time: its own elapsed_s, or interpolated in steps between train records."""
    clock = sorted((r["step"], r["elapsed_s"]) for r in rows if "elapsed_s" in r and "step" in r)
    out = []
    for r in rows:
        if "elapsed_s" in r or not clock:
            out.append(float(r.get("elapsed_s", math.nan)))
            continue
        step = r.get("step", 0)
        before = [c for c in clock if c[0] <= step] or [(0, 0.0)]
        after = [c for c in clock if c[0] >= step] or [before[-1]]
        (s0, t0), (s1, t1) = before[-1], after[0]
        out.append(t0 if s1 == s0 else t0 + (t1 - t0) * (step - s0) / (s1 - s0))
    return out


def plot_runs(runs: list[RunRecord], out_path: Path) -> Path:
    """2 × 2 panels: training loss and validation metric, against tokens and against wall time."""
    fig, axes = new_figure(2, 2, (12, 8))
    for i, r in enumerate(runs):
        times = _wall_times(r.rows)
        train = [(row, t) for row, t in zip(r.rows, times) if row.get("split") == "train" and "loss" in row]
        val = [
            (row, t) for row, t in zip(r.rows, times) if row.get("split") == "val" and r.main_metric in row
        ]
        for panel, points, key, style, label in (
            (0, train, "loss", "-", r.name),
            (1, val, r.main_metric, "o-", f"{r.name} ({r.main_metric})"),
        ):
            ys = [row[key] for row, _ in points]
            axes[panel][0].plot(
                [row.get("tokens", 0) for row, _ in points], ys, style, color=f"C{i}", label=label
            )
            axes[panel][1].plot([t for _, t in points], ys, style, color=f"C{i}", label=label)
    for row, ylabel in enumerate(("training loss", "validation metric")):
        for col, xlabel in enumerate(("tokens seen", "training wall time (s)")):
            ax = axes[row][col]
            ax.set_xlabel(xlabel)
            ax.set_ylabel(ylabel)
            ax.grid(alpha=0.3)
            ax.legend(fontsize=8)
    fig.tight_layout()
    tmp = out_path.with_name(f".{out_path.name}.tmp.png")
    try:
        fig.savefig(tmp, dpi=110)
        tmp.replace(out_path)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        raise UserError(f"cannot write --output {out_path} ({e.strerror}); choose another --output") from None
    return out_path


def compare(
    folders: list[str | Path] | str | Path, output: str | Path | None = None, overwrite: bool = False
) -> dict[str, Any]:
    """Load the runs, build the table, write the plot when `output` is given; returns {"headers", "rows", "plot"}.

    Everything is checked before the plot is written; an existing output file is kept unless `overwrite`. One
    run may be given as a single path."""
    if isinstance(folders, str | Path):
        folders = [folders]
    if output is not None:
        out = Path(output)
        if out.suffix.lower() != ".png":
            raise UserError(f"--output {out} must end in .png")
        if out.is_dir():
            raise UserError(f"--output {out} is a folder; give the path of a .png file")
        if out.exists() and not overwrite:
            raise UserError(
                f"{out} already exists; pass --overwrite to replace it, or choose another --output"
            )
        if not out.parent.is_dir():
            raise UserError(f"the folder of --output {out} does not exist; create it first")
    resolved = [Path(f).resolve() for f in folders]
    twice = next((f for i, f in enumerate(folders) if resolved[i] in resolved[:i]), None)
    if twice is not None:
        raise UserError(f"{twice} is given twice; give each run once")
    runs = [load_run(f) for f in folders]
    names = [r.name for r in runs]
    for r in runs:
        if names.count(r.name) > 1:
            r.name = str(r.folder)
    headers, rows = comparison_table(runs)
    plot = str(plot_runs(runs, Path(output))) if output is not None else None
    return {"headers": headers, "rows": rows, "plot": plot}
