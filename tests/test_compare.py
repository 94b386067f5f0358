"""masklm compare: two tiny pretraining runs with different settings (and a fine-tuning run) in one table and plot."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from helpers import cli, keyword_rows, prepare_tiny, write_csv, write_walk_corpus

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py

TINY = ["--preset", "tiny", "--max-steps", 6, "--train.eval_every", 3, "--train.eval_sequences", 8]
TINY += ["--train.threads", 1, "--train.log_every", 2]


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("compare")
    data = prepare_tiny(write_walk_corpus(root / "corpus", 30), root / "data")
    out = {}
    for name, lr in (("slow", "1e-4"), ("fast", "3e-3")):
        out[name] = root / name
        assert cli("pretrain", *TINY, "--data", data, "--output", out[name], "--train.lr", lr) == 0
    words = ["alpha", "bravo", "charlie", "delta"]
    write_csv(root / "train.csv", keyword_rows(24, 1, words))
    write_csv(root / "val.csv", keyword_rows(12, 2, words))
    out["clf"] = root / "clf"
    rc = cli(
        "finetune", "--task", "classification", "--model", out["fast"], "--train", root / "train.csv",
        "--validation", root / "val.csv", "--output", out["clf"], "--train.epochs", 1, "--train.batch_size", 8,
        "--train.threads", 1,
    )  # fmt: skip
    assert rc == 0
    return out


def table(capsys, *argv: object) -> dict:
    assert cli("compare", *argv, "--json") == 0
    return json.loads(capsys.readouterr().out)


def test_table_has_final_metrics_and_only_the_differing_settings(runs, capsys):
    out = table(capsys, runs["slow"], runs["fast"])
    headers, rows = out["headers"], out["rows"]
    assert headers[0] == "run" and [r[0] for r in rows] == ["slow", "fast"]
    assert "train.lr" in headers and "model.hidden_size" not in headers and "train.max_steps" not in headers
    col = {h: i for i, h in enumerate(headers)}
    for row, name in zip(rows, ("slow", "fast")):
        summary = json.loads((runs[name] / "summary.json").read_text())
        assert float(row[col["accuracy"]]) == pytest.approx(summary["eval"]["accuracy"], rel=1e-3)
        assert float(row[col["tokens"]]) == summary["tokens"]
    assert [float(r[col["train.lr"]]) for r in rows] == [1e-4, 3e-3]


def test_pretraining_and_finetuning_runs_with_a_plot(runs, capsys, tmp_path):
    plot = tmp_path / "cmp.png"
    out = table(capsys, runs["slow"], runs["clf"], "--output", plot)
    assert out["plot"] == str(plot) and plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    summary = json.loads((runs["clf"] / "summary.json").read_text())
    col = {h: i for i, h in enumerate(out["headers"])}
    assert float(out["rows"][1][col["mcc"]]) == pytest.approx(summary["mcc"], abs=1e-3)
    assert out["rows"][1][col["accuracy"]] != "-" and "run.task" in col  # only the fine-tuning run has a task
    # an existing plot is kept unless --overwrite
    before = plot.read_bytes()
    assert cli("compare", runs["slow"], runs["fast"], "--output", plot) == 2
    assert plot.read_bytes() == before
    assert cli("compare", runs["slow"], runs["fast"], "--output", plot, "--overwrite") == 0


def test_an_unfinished_run_shows_its_last_evaluation(runs, capsys, tmp_path):
    partial = tmp_path / "partial"
    shutil.copytree(runs["fast"], partial)
    (partial / "summary.json").unlink()
    out = table(capsys, runs["fast"], partial)
    assert out["rows"][1][0] == "partial (unfinished)"
    assert out["rows"][0][1:3] == out["rows"][1][1:3]  # same last evaluation, now read from metrics.jsonl
    col = {h: i for i, h in enumerate(out["headers"])}
    records = [json.loads(line) for line in (partial / "metrics.jsonl").read_text().splitlines()]
    last, timed = records[-1], [r for r in records if "elapsed_s" in r][-1]
    # the budget used so far, from the last records; steps and tokens written out exactly
    assert float(out["rows"][1][col["train_time_s"]]) == pytest.approx(timed["elapsed_s"], rel=1e-3)
    assert out["rows"][1][col["steps"]] == "6" and out["rows"][1][col["tokens"]] == str(last["tokens"])


def test_a_folder_that_is_not_a_run_is_refused(runs, tmp_path, capsys):
    assert cli("compare", runs["fast"], tmp_path) == 2
    assert "not a masklm run folder" in capsys.readouterr().err
    # the same run twice (under two spellings) was two identical rows
    assert cli("compare", runs["fast"], Path(runs["fast"]) / ".") == 2
    assert "is given twice; give each run once" in capsys.readouterr().err


DAMAGE = [  # (file, bytes appended, or written in place of the file when replace)
    ("config.yaml", b"[1, 2]\n", True),
    ("config.yaml", b"\xff\xfe: 1\n", True),
    ("config.yaml", b"", True),  # empty: no settings to compare
    ("config.yaml", b"# settings\n{}\n", True),
    ("metrics.jsonl", b"{not json\n", False),
    ("metrics.jsonl", bytes(range(128, 256)) * 2, False),  # random bytes, not UTF-8
    ("metrics.jsonl", b'{"step": "x", "split": "val", "loss": "abc"}\n', False),
    ("metrics.jsonl", b'{"step": 7, "split": "val", "accuracy": [1]}', False),  # whole, though no newline
    ("metrics.jsonl", b'{"step": 7, "split": 3}\n', False),
    ("metrics.jsonl", b"[1, 2]\n", False),
    ("metrics.jsonl", b'{"step": 7, "spl\n{"step": 8}\n', False),  # a cut line that is not the last
    ("summary.json", b"[1]\n", True),
    ("summary.json", b'{"a": "\xe9"}', True),
    ("summary.json", b'{"best": "x", "last_eval": 5}', True),
    ("summary.json", b'{"eval": {"loss": "low"}}', True),
    ("summary.json", b'{"best": {"metric": 3}, "last_eval": {}}', True),
]


@pytest.mark.parametrize("name, data, replace", DAMAGE, ids=[f"{d[0]}-{i}" for i, d in enumerate(DAMAGE)])
def test_a_damaged_run_file_is_refused_in_one_line(runs, tmp_path, capsys, name, data, replace):
    damaged = tmp_path / "damaged"
    shutil.copytree(runs["fast"], damaged)
    with open(damaged / name, "wb" if replace else "ab") as f:
        f.write(data)
    plot = tmp_path / "cmp.png"
    assert cli("compare", runs["slow"], damaged, "--output", plot) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "damaged run file" in err and name in err, err
    assert len(err.strip().splitlines()) == 1 and not plot.exists()


def test_a_run_killed_while_writing_its_last_record_is_unfinished(runs, capsys, tmp_path):
    killed = tmp_path / "killed"
    shutil.copytree(runs["fast"], killed)
    (killed / "summary.json").unlink()
    with open(killed / "metrics.jsonl", "ab") as f:
        f.write(b'{"step": 7, "tokens": 1792, "split": "tr')  # no newline: the kill came mid-write
    out = table(capsys, runs["fast"], killed, "--output", tmp_path / "cmp.png")
    assert out["rows"][1][0] == "killed (unfinished)"
    assert out["rows"][0][1:3] == out["rows"][1][1:3]


def test_an_output_that_is_a_folder_is_refused_and_nothing_is_left(runs, tmp_path, capsys):
    folder = tmp_path / "dir.png"
    folder.mkdir()
    assert cli("compare", runs["slow"], "--output", folder, "--overwrite") == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "folder" in err and len(err.strip().splitlines()) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dir.png"] and not any(folder.iterdir())


def test_plots_leave_matplotlibs_backend_alone(tmp_path):
    """curves.png was drawn through pyplot after `matplotlib.use("Agg")`: a notebook that pretrained from Python lost
    its inline backend. Figures are drawn without pyplot now."""
    import json

    import matplotlib

    from masklm.plots import plot_curves

    rows = [{"step": s, "tokens": 100 * s, "split": "train", "loss": 5.0 - s / 10} for s in range(1, 5)] + [
        {"step": 4, "tokens": 400, "split": "val", "loss": 4.7, "accuracy": 0.2}
    ]
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    before = matplotlib.get_backend()
    matplotlib.use("pdf")
    try:
        out = plot_curves(tmp_path / "metrics.jsonl", tmp_path / "curves.png")
        assert matplotlib.get_backend() == "pdf"
        assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    finally:
        matplotlib.use(before)


def test_a_summary_older_than_the_records_is_an_unfinished_run(runs, capsys, tmp_path):
    """A run resumed after it finished and stopped again holds the first session's summary.json (a session of this
    masklm deletes it when it resumes; one of an earlier version did not): its records run past the summary's step,
    so it is unfinished, with its last evaluation, not the summary's."""
    resumed = tmp_path / "resumed"
    shutil.copytree(runs["fast"], resumed)
    summary = json.loads((resumed / "summary.json").read_text())
    last = [json.loads(line) for line in (resumed / "metrics.jsonl").read_text().splitlines()][-1]
    later = {
        "step": summary["steps"] + 3,
        "tokens": last["tokens"] + 1,
        "split": "val",
        "loss": 9.0,
        "accuracy": 0.01,
    }
    with open(resumed / "metrics.jsonl", "a") as f:
        f.write(json.dumps(later) + "\n")
    out = table(capsys, resumed)
    col = {h: i for i, h in enumerate(out["headers"])}
    assert out["rows"][0][0] == "resumed (unfinished)"
    assert float(out["rows"][0][col["accuracy"]]) == 0.01


def test_an_unfinished_fine_tuning_run_plots_the_metric_that_picks_its_best_model(runs, tmp_path):
    """Without summary.json, the main metric comes from config.yaml's train.metric_for_best ("auto": the task's),
    not from the first known name among the records (accuracy)."""
    from masklm.compare import load_run

    partial = tmp_path / "partial"
    shutil.copytree(runs["clf"], partial)
    (partial / "summary.json").unlink()
    assert load_run(partial).main_metric == "accuracy"  # "auto" for classification
    config = (partial / "config.yaml").read_text()
    assert "metric_for_best: auto" in config
    (partial / "config.yaml").write_text(config.replace("metric_for_best: auto", "metric_for_best: macro_f1"))
    assert load_run(partial).main_metric == "macro_f1"


def test_curves_show_the_metric_that_picked_the_best_model(tmp_path, monkeypatch):
    """curves.png of a fine-tuning run draws the metric its best model was chosen by (NER: entity F1), not the
    first known name among the records (token accuracy)."""
    from masklm import plots
    from masklm.train.logger import write_run_results

    figures = []
    new_figure = plots.new_figure

    def kept(*args):
        figures.append(new_figure(*args))
        return figures[-1]

    monkeypatch.setattr(plots, "new_figure", kept)
    records = [
        {"step": 2, "tokens": 64, "split": "train", "loss": 1.0},
        {"step": 2, "tokens": 64, "split": "val", "loss": 0.9, "accuracy": 0.8, "f1": 0.3},
    ]
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    write_run_results(tmp_path, {"best": {"metric": "f1", "value": 0.3}})
    plots.plot_curves(tmp_path / "metrics.jsonl", tmp_path / "default.png")
    assert [axes[0][1].get_ylabel() for _, axes in figures] == ["validation f1", "validation accuracy"]


def test_a_run_whose_last_evaluation_was_not_finite_is_shown_not_refused(runs, capsys, tmp_path):
    """summary.json writes a NaN or inf metric as null (to stay JSON): compare shows it as nan, not as a damaged
    run."""
    diverged = tmp_path / "diverged"
    shutil.copytree(runs["fast"], diverged)
    summary = json.loads((diverged / "summary.json").read_text())
    summary["eval"]["loss"] = None
    (diverged / "summary.json").write_text(json.dumps(summary))
    out = table(capsys, diverged)
    col = {h: i for i, h in enumerate(out["headers"])}
    assert out["rows"][0][0] == "diverged" and out["rows"][0][col["loss"]] == "nan"
