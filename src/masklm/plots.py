"""curves.png: training loss, validation loss and masked-token accuracy against tokens seen."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def read_metrics(path: str | Path) -> list[dict]:
    rows = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            line = line.strip()
            if line:
                rows.append(json.loads(line))
    return rows


def without_replayed(rows: list[dict]) -> list[dict]:
    """The records of a run as an uninterrupted run writes them: where a resumed run trained steps again (a
    metrics.jsonl of an earlier masklm, which kept the first session's records of them), the later records of
    each split win, so curves do not run back."""
    kept: list[dict] = []
    first_later: dict[str | None, float] = {}  # the first step of each split among the later records
    for row in reversed(rows):
        split, step = row.get("split"), row.get("step")
        if not isinstance(step, int | float):
            kept.append(row)
        elif step < first_later.get(split, float("inf")):
            kept.append(row)
            first_later[split] = step
    return kept[::-1]


def new_figure(rows: int, cols: int, figsize: tuple[float, float]) -> tuple[Any, Any]:
    """(figure, axes grid) drawn without pyplot: no backend is chosen or changed (a notebook's inline plots, a
    user's `matplotlib.use`, stay as they were), and nothing is kept open after the figure is saved."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=figsize)
    return fig, fig.subplots(rows, cols, squeeze=False)


def plot_curves(
    metrics_path: str | Path, out_path: str | Path, x: str = "tokens", metric: str | None = None
) -> Path:
    """Loss (training and validation) against `x`, and beside it the validation `metric` (a fine-tuning run's: the
    one that picks its best model; by default accuracy, else F1, else exact match, where the records have one)."""
    rows = without_replayed(read_metrics(metrics_path))
    train = [r for r in rows if r.get("split") == "train" and "loss" in r]
    val = [r for r in rows if r.get("split") == "val"]
    candidates = ((metric,) if metric and metric != "loss" else ()) + ("accuracy", "f1", "exact_match")
    acc_key = next((k for k in candidates if val and k in val[-1]), None)
    # ELECTRA: the train loss is generator + weight x discriminator, the validation loss and accuracy the
    # generator's; the discriminator's accuracy is drawn beside them
    electra = bool(val) and "discriminator_accuracy" in val[-1]
    fig, axes = new_figure(1, 2 if acc_key else 1, (11 if acc_key else 6, 4))
    ax = axes[0][0]
    train_label = "train loss (generator + weight x discriminator)" if electra else "train loss"
    ax.plot([r[x] for r in train], [r["loss"] for r in train], label=train_label, lw=1)
    if val and "loss" in val[0]:
        val_label = "validation generator loss" if electra else "validation loss"
        ax.plot([r[x] for r in val], [r["loss"] for r in val], "o-", label=val_label)
    ax.set_xlabel(x)
    ax.set_ylabel("loss")
    ax.grid(alpha=0.3)
    ax.legend()
    if acc_key:
        ax2 = axes[0][1]
        ax2.plot([r[x] for r in val], [r[acc_key] for r in val], "o-", color="C2")
        ax2.set_xlabel(x)
        ax2.set_ylabel(f"validation {acc_key}")
        if electra:
            ax2.lines[0].set_label("generator (masked tokens)")
            ax2.plot(
                [r[x] for r in val if "discriminator_accuracy" in r],
                [r["discriminator_accuracy"] for r in val if "discriminator_accuracy" in r],
                "s-",
                color="C3",
                label="discriminator (every real token)",
            )
            ax2.legend()
        ax2.grid(alpha=0.3)
    fig.tight_layout()
    out = Path(out_path)
    tmp = out.with_name(f".{out.name}.tmp.png")
    fig.savefig(tmp, dpi=110)
    tmp.replace(out)
    return out
