"""masklm suite: the nine GLUE layouts as distributed (tiny files written here), grid selection, the average, resume."""

from __future__ import annotations

import contextlib
import json
import os
import random
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from helpers import cli, tiny_model_config

from masklm.data.tokenizer import train_tokenizer
from masklm.errors import UserError
from masklm.model.heads import MaskedLM
from masklm.model.io import ModelInfo, save_model

pytestmark = pytest.mark.usefixtures("one_thread", "no_curves")  # one_thread: tests/conftest.py

WORDS = "the a film movie plot actor was is very quite good great bad awful dull fun".split()
FAST = ["--lrs", "1e-3", "--epochs", "1", "--train.batch_size", "8", "--train.threads", "1"]
GLUE_TASKS = ["CoLA", "SST-2", "MRPC", "QQP", "STS-B", "MNLI", "QNLI", "RTE", "WNLI"]


def sentence(rng: random.Random) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 7)))


def tsv(path: Path, header: list[str] | None, rows: list[list[object]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = (["\t".join(header)] if header else []) + ["\t".join(str(c) for c in row) for row in rows]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


def write_glue(root: Path, n: int = 16, seed: int = 0) -> Path:
    """The nine GLUE task folders with train and dev files in the official column layouts (GLUE's download)."""
    rng = random.Random(seed)
    s = lambda: sentence(rng)  # noqa: E731
    nli = ["entailment", "neutral", "contradiction"]
    for split, count in (("train", n), ("dev", n // 2)):
        f = f"{split}.tsv"
        tsv(
            root / "CoLA" / f,
            None,
            [["gj04", b, "" if b else "*", s()] for b in (rng.randint(0, 1) for _ in range(count))],
        )
        tsv(root / "SST-2" / f, ["sentence", "label"], [[s(), rng.randint(0, 1)] for _ in range(count)])
        tsv(
            root / "MRPC" / f,
            ["Quality", "#1 ID", "#2 ID", "#1 String", "#2 String"],
            [[rng.randint(0, 1), 100 + i, 200 + i, s(), s()] for i in range(count)],
        )
        tsv(
            root / "QQP" / f,
            ["id", "qid1", "qid2", "question1", "question2", "is_duplicate"],
            [[i, 2 * i, 2 * i + 1, s() + " ?", s() + " ?", rng.randint(0, 1)] for i in range(count)],
        )
        tsv(
            root / "STS-B" / f,
            [
                "index",
                "genre",
                "filename",
                "year",
                "old_index",
                "source1",
                "source2",
                "sentence1",
                "sentence2",
                "score",
            ],
            [
                [
                    i,
                    "main-captions",
                    "MSRvid",
                    "2012test",
                    i,
                    "none",
                    "none",
                    s(),
                    s(),
                    f"{rng.uniform(0, 5):.3f}",
                ]
                for i in range(count)
            ],
        )
        tsv(
            root / "QNLI" / f,
            ["index", "question", "sentence", "label"],
            [[i, s() + " ?", s(), rng.choice(["entailment", "not_entailment"])] for i in range(count)],
        )
        for task in ("RTE", "WNLI"):
            labels = ["entailment", "not_entailment"] if task == "RTE" else [0, 1]
            tsv(
                root / task / f,
                ["index", "sentence1", "sentence2", "label"],
                [[i, s(), s(), rng.choice(labels)] for i in range(count)],
            )
    parses = ["sentence1_binary_parse", "sentence2_binary_parse", "sentence1_parse", "sentence2_parse"]
    head = ["index", "promptID", "pairID", "genre", *parses, "sentence1", "sentence2"]
    tsv(
        root / "MNLI" / "train.tsv",
        [*head, "label1", "gold_label"],
        [
            [i, i, f"{i}e", "fiction", "( x )", "( y )", "(ROOT x)", "(ROOT y)", s(), s(), lab, lab]
            for i, lab in enumerate(rng.choice(nli) for _ in range(n))
        ],
    )
    for name in ("dev_matched", "dev_mismatched"):
        tsv(
            root / "MNLI" / f"{name}.tsv",
            [*head, "label1", "label2", "label3", "label4", "label5", "gold_label"],
            [
                [i, i, f"{i}n", "slate", "( x )", "( y )", "(ROOT x)", "(ROOT y)", s(), s(), *[lab] * 5, lab]
                for i, lab in enumerate(rng.choice(nli) for _ in range(n // 2))
            ],
        )
    return root  # fmt: skip


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> Path:
    rng = random.Random(5)
    tok = train_tokenizer([sentence(rng) for _ in range(200)], vocab_size=80)
    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("suite") / "model"
    save_model(MaskedLM(tiny_model_config(tok.get_vocab_size())), folder, tok, ModelInfo("MaskedLM"))
    return folder


@pytest.fixture(scope="module")
def no_curves():
    """Fine-tuning runs made in this process skip curves.png: drawing it costs more than a tiny run's training,
    and no test here reads it (tests/test_finetune.py checks the plot)."""
    import masklm.plots

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(masklm.plots, "plot_curves", lambda metrics, out, x="tokens": Path(out))
        yield


def suite_json(out: Path) -> dict:
    return json.loads((out / "suite.json").read_text())


def test_glue_layout_all_nine_tasks(model, tmp_path, capsys):
    """In this process (--jobs 1); the grid test below runs its tasks in worker processes."""
    data = write_glue(tmp_path / "glue")
    out = tmp_path / "out"
    argv = ["--suite", "glue", "--data-dir", data, "--output", out, *FAST]
    assert cli("suite", "--model", model, *argv) == 0
    report = suite_json(out)
    assert list(report["tasks"]) == GLUE_TASKS
    metrics = {name: list(t["metrics"]) for name, t in report["tasks"].items()}
    assert metrics["CoLA"] == ["mcc"] and metrics["STS-B"] == ["pearson", "spearman"]
    assert metrics["MRPC"] == metrics["QQP"] == ["f1", "accuracy"]
    assert metrics["MNLI"] == ["accuracy", "mismatched_accuracy"] and metrics["WNLI"] == ["accuracy"]
    for name, t in report["tasks"].items():
        summary = json.loads((out / "runs" / name / t["best"]["run"] / "summary.json").read_text())
        own = [m for m in t["metrics"] if not m.startswith("mismatched_")]
        assert all(t["metrics"][m] == pytest.approx(summary[m]) for m in own), name
        assert summary["validation_examples"] == 8 and summary["train_examples"] == 16, name
        assert t["score"] == pytest.approx(100 * sum(t["metrics"].values()) / len(t["metrics"]))
    assert report["average"] == pytest.approx(sum(t["score"] for t in report["tasks"].values()) / 9)
    assert json.loads((out / "runs" / "MNLI" / report["tasks"]["MNLI"]["best"]["run"] / "summary.json").read_text())["labels"] == [
        "contradiction", "entailment", "neutral"
    ]  # fmt: skip
    assert "**average**" in (out / "suite.md").read_text() and "| CoLA | mcc" in capsys.readouterr().out
    # MNLI's mismatched accuracy is the best model's on dev_mismatched.tsv (evaluated here as `masklm evaluate`
    # does), not on dev_matched.tsv, whose accuracy differs
    from masklm.finetune import evaluate_model

    mnli = report["tasks"]["MNLI"]
    best = out / "runs" / "MNLI" / mnli["best"]["run"] / "model"
    scored = {
        name: evaluate_model(best, nli_jsonl(data / "MNLI" / f"{name}.tsv", tmp_path))
        for name in ("dev_matched", "dev_mismatched")
    }
    # (were they equal, scoring the wrong file would pass unseen)
    assert scored["dev_matched"]["accuracy"] != scored["dev_mismatched"]["accuracy"]
    assert mnli["metrics"]["accuracy"] == pytest.approx(scored["dev_matched"]["accuracy"])
    assert mnli["metrics"]["mismatched_accuracy"] == pytest.approx(scored["dev_mismatched"]["accuracy"])


def nli_jsonl(tsv_path: Path, folder: Path) -> Path:
    """An MNLI dev file as JSONL with the keys text, text_pair, label (sentence1, sentence2, gold_label)."""
    lines = tsv_path.read_text(encoding="utf-8").splitlines()
    head = lines[0].split("\t")
    rows = [dict(zip(head, line.split("\t"))) for line in lines[1:] if line]
    out = folder / f"{tsv_path.stem}.jsonl"
    keys = {"text": "sentence1", "text_pair": "sentence2", "label": "gold_label"}
    out.write_text("".join(json.dumps({k: r[c] for k, c in keys.items()}) + "\n" for r in rows))
    return out


SMALL_SUITE = """
name: small
grid: {lrs: [1.0e-5, 3.0e-3], epochs: [2], seeds: [0]}
tasks:
  - {name: sst, type: classification, train: SST-2/train.tsv, validation: SST-2/dev.tsv,
     columns: {text: sentence, label: label}, metrics: [accuracy, mcc], select: accuracy}
  - {name: sts, type: regression, train: STS-B/train.tsv, validation: STS-B/dev.tsv,
     columns: {text: sentence1, text_pair: sentence2, label: score}, metrics: [pearson], grid: {lrs: [3.0e-3]}}
"""


def test_grid_selection_average_and_resume_in_two_processes(model, tmp_path, capsys):
    data = write_glue(tmp_path / "glue", n=24, seed=1)
    suite = tmp_path / "small.yaml"
    suite.write_text(SMALL_SUITE)
    out = tmp_path / "out"
    argv = ["suite", "--model", model, "--suite", suite, "--data-dir", data, "--output", out]
    assert cli(*argv, "--train.batch_size", 8, "--train.threads", 1, "--jobs", 2) == 0
    assert (out / "runs" / "sst" / "lr1e-05-ep2-seed0" / "curves.png").is_file()  # made by a worker process
    report = suite_json(out)
    sst = report["tasks"]["sst"]
    values = {}
    for point in sst["grid"]:  # the best run is the one with the highest validation accuracy
        values[point["run"]] = json.loads((out / "runs" / "sst" / point["run"] / "summary.json").read_text())[
            "accuracy"
        ]
        assert point["value"] == pytest.approx(values[point["run"]])
    assert len(values) == 2 and sst["best"]["run"] == max(values, key=values.get)
    assert [p["lr"] for p in report["tasks"]["sts"]["grid"]] == [3e-3]
    assert report["average"] == pytest.approx((sst["score"] + report["tasks"]["sts"]["score"]) / 2)

    # a suite stopped during its second task: sts has no result and one of its runs never finished
    (out / "tasks" / "sts.json").unlink()
    (out / "runs" / "sts" / "lr0.003-ep2-seed0" / "summary.json").unlink()
    sst_result = (out / "tasks" / "sst.json").read_bytes()
    capsys.readouterr()
    assert cli(*argv, "--train.batch_size", 8, "--train.threads", 1) == 0
    err = capsys.readouterr().err
    assert "[sst] finished before" in err and "[sst] fine-tuning" not in err
    assert "[sts] resuming" in err  # its checkpoints are there: the run goes on from the newest
    assert (out / "tasks" / "sst.json").read_bytes() == sst_result
    assert suite_json(out)["tasks"]["sst"] == report["tasks"]["sst"]
    # other settings would mix results: refused
    assert cli(*argv, "--train.batch_size", 4) == 2
    assert "another model, task definition or settings" in capsys.readouterr().err


def test_a_grid_without_rates_takes_the_models_default(model, tmp_path):
    """No lrs in the suite, the task or --lrs: masklm finetune's default rate for the model (a tiny encoder: 3e-4);
    a task's own rates are kept."""
    data = write_glue(tmp_path / "glue", n=16, seed=2)
    suite = tmp_path / "norates.yaml"
    suite.write_text(SMALL_SUITE.replace("lrs: [1.0e-5, 3.0e-3], ", ""))
    out = tmp_path / "out"
    argv = ["suite", "--model", model, "--suite", suite, "--data-dir", data, "--output", out, "--epochs", 1]
    assert cli(*argv, "--train.batch_size", 8, "--train.threads", 1) == 0
    grids = {name: [p["lr"] for p in task["grid"]] for name, task in suite_json(out)["tasks"].items()}
    assert grids == {"sst": [3e-4], "sts": [3e-3]}
    assert (out / "runs" / "sst" / "lr0.0003-ep1-seed0" / "summary.json").is_file()


def test_model_hidden_size_reads_config_only(model, tmp_path):
    """The width for the default rate comes from config.json alone (masklm or Hugging Face layout); a folder
    that is neither gets load_model's one-line error."""
    from masklm.errors import UserError
    from masklm.model.io import load_model, model_hidden_size

    assert model_hidden_size(model) == load_model(model)[0].cfg.hidden_size
    hf = tmp_path / "hf"
    hf.mkdir()
    (hf / "config.json").write_text(json.dumps({"model_type": "bert", "hidden_size": 384}))
    assert model_hidden_size(hf) == 384  # no weights in the folder: they were never read
    other = tmp_path / "other"
    other.mkdir()
    (other / "config.json").write_text(json.dumps({"model_type": "gpt2", "n_embd": 768}))
    with pytest.raises(UserError, match="neither a masklm model nor a Hugging Face BERT config"):
        model_hidden_size(other)


def squad_jsonl(path: Path, n: int, rng: random.Random) -> None:
    """n SQuAD questions (flat .jsonl): the answer is a word of the context."""
    rows = []
    for i in range(n):
        context = sentence(rng) + " " + sentence(rng)
        word = rng.choice(context.split())
        start = context.index(word)
        answers = {"text": [word], "answer_start": [start]}
        rows.append({"id": f"q{i}", "question": f"where is {word}", "context": context, "answers": answers})
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")


def test_qa_metrics_count_as_points_not_fractions(model, tmp_path):
    """SQuAD's exact match and F1 are 0-100 already: the task's score is their mean (not x 100), an `also`
    file's QA metrics too, while a fraction (accuracy) of another task is still x 100."""
    rng = random.Random(3)
    data = write_glue(tmp_path / "glue", n=16, seed=2)
    for name, n in (("train", 16), ("dev", 8), ("other", 8)):
        squad_jsonl(data / f"qa_{name}.jsonl", n, rng)
    suite = tmp_path / "qa.yaml"
    suite.write_text(
        "tasks:\n"
        "  - {name: qa, type: qa, train: qa_train.jsonl, validation: qa_dev.jsonl, also: {other: qa_other.jsonl},\n"
        "     metrics: [exact_match, f1, other_f1], select: f1, settings: {data.max_length: 32}}\n"
        "  - {name: sst, type: classification, train: SST-2/train.tsv, validation: SST-2/dev.tsv,\n"
        "     columns: {text: sentence, label: label}, metrics: [accuracy]}\n"
    )
    out = tmp_path / "out"
    assert cli("suite", "--model", model, "--suite", suite, "--data-dir", data, "--output", out, *FAST) == 0
    report = suite_json(out)
    qa, sst = report["tasks"]["qa"], report["tasks"]["sst"]
    assert qa["points"] == qa["metrics"] and 0 <= qa["metrics"]["f1"] <= 100
    assert qa["score"] == pytest.approx(sum(qa["metrics"].values()) / 3)
    assert sst["points"] == {"accuracy": pytest.approx(100 * sst["metrics"]["accuracy"])}
    assert report["average"] == pytest.approx((qa["score"] + sst["score"]) / 2)
    row = next(line for line in (out / "suite.md").read_text().splitlines() if line.startswith("| qa |"))
    assert f"f1 {qa['metrics']['f1']:.1f}" in row and f"| {qa['score']:.1f} |" in row


@pytest.mark.parametrize(
    "text, message",
    [
        ("tasks: []", "needs a `tasks:` list"),
        ("tasks: [{name: a, type: ranking, train: x, validation: y, metrics: [accuracy]}]", "unknown type"),
        ("tasks: [{name: a, type: qa, train: x, validation: y}]", "needs metrics"),
        (
            "tasks: [{name: a, type: classification, train: x.tsv, validation: y.tsv, metrics: [accuracy]}]",
            "does not exist",
        ),
        (
            "gird: {lrs: [1.0e-3]}\ntasks: [{name: a, type: qa, train: x, validation: y, metrics: [f1]}]",
            "'gird'",
        ),
        ("tasks: [{name: ../../a, type: qa, train: x, validation: y, metrics: [f1]}]", "names its folders"),
        ("tasks: [{name: a, type: qa, train: x, validation: y, metrics: [f1], also: [z]}]", "also must be"),
        (
            "tasks: [{name: a, type: classification, train: x, validation: y, metrics: [f1], columns: [text]}]",
            "columns must be",
        ),
        (
            "grid: {epochs: [0]}\ntasks: [{name: a, type: qa, train: x, validation: y, metrics: [f1]}]",
            "grid.epochs",
        ),
        (
            "grid: {lrs: [.inf]}\ntasks: [{name: a, type: qa, train: x, validation: y, metrics: [f1]}]",
            "grid.lrs",
        ),
        (  # not truncated to seed 0 (two points named seed0, one of them "reused")
            "grid: {lrs: [1.0e-3], epochs: [1], seeds: [0.2, 0.7]}\n"
            "tasks: [{name: a, type: qa, train: x, validation: y, metrics: [f1]}]",
            "grid.seeds must hold whole numbers from 0, not 0.2",
        ),
        (
            "tasks: [{name: a, type: qa, train: x, validation: y, metrics: [f1], grid: {seeds: [.inf]}}]",
            "grid.seeds must hold whole numbers from 0, not inf",
        ),
        (
            "tasks: [{name: a, type: qa, train: x, validation: y, metrics: [f1], grid: {epochs: [.nan]}}]",
            "grid.epochs must hold positive, finite numbers",
        ),
    ],
)
def test_bad_suite_files_are_one_line(model, tmp_path, capsys, text, message):
    suite = tmp_path / "bad.yaml"
    suite.write_text(text)
    assert (
        cli("suite", "--model", model, "--suite", suite, "--data-dir", tmp_path, "--output", tmp_path / "o")
        == 2
    )
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1
    assert not (tmp_path / "o").exists()


def two_task_suite(tmp_path: Path, second: str) -> tuple[Path, Path]:
    """A suite whose first task is fine and whose second has `second` in it (YAML flow keys); its data."""
    data = write_glue(tmp_path / "glue", n=16, seed=3)
    suite = tmp_path / "two.yaml"
    suite.write_text(
        "grid: {lrs: [3.0e-3], epochs: [1], seeds: [0]}\ntasks:\n"
        "  - {name: sst, type: classification, train: SST-2/train.tsv, validation: SST-2/dev.tsv,\n"
        "     columns: {text: sentence, label: label}, metrics: [accuracy]}\n"
        "  - {name: sst2, type: classification, train: SST-2/train.tsv, validation: SST-2/dev.tsv,\n"
        f"     columns: {{text: sentence, label: label}}, {second}}}\n"
    )
    return suite, data


@pytest.mark.parametrize(
    "second, message",
    [
        ("metrics: [accuracy, pearson]", "metrics names 'pearson', not a metric of a classification task"),
        ("metrics: [accuracy], select: acuracy", "select names 'acuracy'"),
        (
            "metrics: [accuracy], settings: {train.batchsize: 8}",
            "unknown config key 'train.batchsize' in task sst2",
        ),
        ("metrics: [accuracy], settings: {train.batch_size: 0}", "train.batch_size must be positive"),
        ("metrics: [accuracy], columns: {text: sentence, label: lable}", "no column 'lable'"),
    ],
)
def test_every_task_is_checked_before_any_fine_tunes(model, tmp_path, capsys, second, message):
    """A mistake in the second task is found before the first one trains, and nothing is written."""
    suite, data = two_task_suite(tmp_path, second)
    out = tmp_path / "out"
    assert cli("suite", "--model", model, "--suite", suite, "--data-dir", data, "--output", out) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1, err
    assert not out.exists()


def test_a_model_that_cannot_load_is_refused_before_anything_is_written(model, tmp_path, capsys):
    """--model is loaded (config, tokenizer, weights) before the suite writes suite-run.json or its data."""
    import shutil

    suite, data = two_task_suite(tmp_path, "metrics: [accuracy]")
    notmodel = tmp_path / "notmodel"
    notmodel.mkdir()
    (notmodel / "notes.txt").write_text("x")
    corrupt = tmp_path / "corrupt"
    shutil.copytree(model, corrupt)
    (corrupt / "model.safetensors").write_bytes(b"\x00" * 64)
    for bad, message in (
        (notmodel, "holds no config.json"),
        (tmp_path / "nope", "does not exist"),
        (corrupt, ""),
    ):
        out = tmp_path / f"o_{bad.name}"
        argv = ["suite", "--model", bad, "--suite", suite, "--data-dir", data, "--output", out, *FAST]
        assert cli(*argv) == 2
        err = capsys.readouterr().err
        assert err.startswith("error: ") and message in err and err.count("\n") == 1, err
        assert "fine-tuning" not in err and not out.exists()


def test_a_header_row_in_a_headerless_layout_is_refused(model, tmp_path, capsys):
    """CoLA ships without a header row (the suite names its columns): a file that has one is refused, not read as
    one more example whose label is "label"."""
    data = write_glue(tmp_path / "glue", n=16, seed=4)
    cola = data / "CoLA" / "train.tsv"
    cola.write_text("source\tlabel\toriginal_label\tsentence\n" + cola.read_text())
    out = tmp_path / "out"
    assert cli("suite", "--model", model, "--suite", "glue", "--data-dir", data, "--output", out, *FAST) == 2
    err = capsys.readouterr().err
    assert f"{cola}:1: a header row" in err and "remove that line" in err and err.count("\n") == 1, err
    assert not out.exists()


def tree(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_output_must_be_new_empty_or_a_suites_own(model, tmp_path, capsys):
    suite, data = two_task_suite(tmp_path, "metrics: [accuracy]")
    mine = tmp_path / "mine"
    (mine / "data" / "sst").mkdir(parents=True)
    (mine / "data" / "sst" / "train.jsonl").write_text("my own file\n")
    (mine / "suite.md").write_text("my notes\n")
    before = tree(mine)
    argv = ["suite", "--model", model, "--suite", suite, "--data-dir", data, *FAST]
    for extra in ([], ["--overwrite"]):
        assert cli(*argv, "--output", mine, *extra) == 2
        assert "not a masklm suite folder" in capsys.readouterr().err
        assert tree(mine) == before
    empty = tmp_path / "empty"
    empty.mkdir()
    assert cli(*argv, "--output", empty) == 0
    assert (empty / "suite-run.json").is_file() and (empty / "tasks" / "sst2.json").is_file()
    (empty / "stray.txt").write_text("x")
    kept = tree(empty)
    assert cli(*argv, "--output", empty, "--overwrite", "--train.batch_size", 0) == 2  # nothing deleted
    assert tree(empty) == kept
    assert cli(*argv, "--output", empty, "--overwrite") == 0  # a suite's folder: deleted and done again
    assert not (empty / "stray.txt").exists() and (empty / "tasks" / "sst2.json").is_file()
    assert "fine-tuning" in capsys.readouterr().err


def test_a_stopped_suite_resumes_its_stopped_run(model, tmp_path, capsys, monkeypatch):
    """SIGTERM during a grid run: that run checkpoints, the suite exits 0 saying how to go on; the same command
    resumes the run from its checkpoint and finishes the suite."""
    import os
    import signal

    import masklm.finetune as ft

    suite, data = two_task_suite(tmp_path, "metrics: [accuracy]")
    out = tmp_path / "out"
    # --model as a relative path: the grid run records it absolute, and must still be found the same model
    monkeypatch.chdir(Path(model).parent)
    argv = ["suite", "--model", Path(model).name, "--suite", suite, "--data-dir", data, "--output", out]
    argv += ["--train.batch_size", 4, "--train.threads", 1, "--train.checkpoint_every", 2, "--epochs", 2]
    real, calls = ft.training_loss, []

    def stopping(*args):
        inner = real(*args)

        def loss(m, batch):
            calls.append(1)
            if len(calls) == 11:  # step 3 of the second task's run (8 steps each)
                os.kill(os.getpid(), signal.SIGTERM)
            return inner(m, batch)

        return loss

    monkeypatch.setattr(ft, "training_loss", stopping)
    assert cli(*argv) == 0
    err = capsys.readouterr().err
    assert "the suite stopped in sst2" in err and "run the same masklm suite command again" in err
    assert (out / "tasks" / "sst.json").is_file() and not (out / "tasks" / "sst2.json").exists()
    monkeypatch.setattr(ft, "training_loss", real)
    assert cli(*argv) == 0
    err = capsys.readouterr().err
    assert "[sst] finished before" in err and "[sst2] resuming" in err and "resumed from" in err
    assert suite_json(out)["tasks"].keys() == {"sst", "sst2"}


def children_of(pid: int) -> set[int]:
    """The processes whose parent is `pid` (from /proc)."""
    found = set()
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            found.add(int(stat.parent.name))
    return found


def gone(pids: set[int], seconds: float) -> bool:
    """Whether every process in `pids` has ended within `seconds`."""
    import time

    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if not any(Path(f"/proc/{p}").exists() and "Z" not in Path(f"/proc/{p}/stat").read_text().split()[2:3]
                   for p in pids):  # fmt: skip
            return True
        time.sleep(0.2)
    return False


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads /proc")
@pytest.mark.parametrize("how", ["SIGTERM", "SIGKILL", "worker killed"])
def test_a_stopped_parallel_suite_leaves_no_worker_behind(model, tmp_path, how):
    """--jobs 2: SIGTERM to the suite stopped it without a word and left its workers training as orphans (a
    rerun was refused: "in use"); a kill -9 left them too. Now the suite passes the stop on (each worker
    checkpoints, the suite says how to continue, exit 0), and a worker whose suite is gone stops and exits. A
    worker killed (say by the out-of-memory killer) gave a BrokenProcessPool traceback: one line now, exit 2."""
    import signal
    import subprocess
    import sys

    data = write_glue(tmp_path / "glue", n=24, seed=1)
    suite = tmp_path / "small.yaml"
    suite.write_text(SMALL_SUITE.replace("epochs: [2]", "epochs: [400]"))
    argv = [sys.executable, "-m", "masklm", "suite", "--model", str(model), "--suite", str(suite), "--data-dir",
            str(data), "--output", str(tmp_path / "out"), "--jobs", "2", "--train.batch_size", "8"]  # fmt: skip
    proc = subprocess.Popen(argv, stderr=subprocess.PIPE, text=True)
    lines = []
    while sum("fine-tuning" in line and "] " in line for line in lines) < 2:  # both workers training
        line = proc.stderr.readline()
        assert line, "".join(lines)
        lines.append(line)
    workers = children_of(proc.pid)
    if how == "worker killed":
        spawned = [w for w in workers if b"spawn_main" in Path(f"/proc/{w}/cmdline").read_bytes()]
        os.kill(spawned[0], signal.SIGKILL)  # a worker, not multiprocessing's resource tracker
    else:
        proc.send_signal(getattr(signal, how))
    try:  # (workers left running would hold stderr open: a bounded wait, not a read to the end)
        err = proc.communicate(timeout=120)[1]
    except subprocess.TimeoutExpired:
        proc.kill()
        for pid in workers:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        pytest.fail(f"the suite or its workers {workers} were still running 120 s after {how}")
    assert proc.returncode == {"SIGTERM": 0, "SIGKILL": -signal.SIGKILL, "worker killed": 2}[how], err
    if how == "SIGTERM":
        assert "the suite stopped in" in err and "run the same masklm suite command again" in err, err
    if how == "worker killed":
        assert "error: a suite worker process died" in err and "Traceback" not in err, err
    assert gone(workers, 60), f"workers {workers} still running"


def test_a_worker_stopped_inside_a_run_starts_no_queued_task(monkeypatch):
    """--jobs: the stop reached a worker's fine-tuning run (its own signal handler), not the worker's, so the
    tasks the pool had already handed to that worker (past cancelling) started and ran all their grid points
    after the stop. A stopped task now marks the worker as stopping."""
    from masklm import suite as suite_mod

    def stopped(*args):
        raise suite_mod.SuiteStopped("a, lr1e-3")

    monkeypatch.setattr(suite_mod, "run_task", stopped)
    monkeypatch.setattr(suite_mod, "_STOP", suite_mod.threading.Event())
    with pytest.raises(suite_mod.SuiteStopped, match="a, lr1e-3"):
        suite_mod._run_task_in_process(SimpleNamespace(name="a"), None, {}, 1)
    monkeypatch.setattr(suite_mod, "run_task", lambda *a: pytest.fail("a queued task started after the stop"))
    with pytest.raises(suite_mod.SuiteStopped, match="b, before it started"):
        suite_mod._run_task_in_process(SimpleNamespace(name="b"), None, {}, 1)


def test_a_second_text_named_in_columns_is_read_whatever_the_type(tmp_path):
    """GLUE's STS-B (type regression) was fine-tuned on sentence1 alone: only pair-classification read the
    second text. A `columns: {text_pair: ...}` is read by any type; an unknown key in `columns` (a typo such as
    txt_pair, which trained on one text) is refused with the suite's checks."""
    from masklm.suite import load_suite, task_settings

    _, tasks, base = load_suite("glue")
    settings = {t.name: task_settings(t, SimpleNamespace(overrides={}), base) for t in tasks}
    assert (
        settings["STS-B"]["data.text_pair_column"] == "text_pair"
        and settings["STS-B"]["data.regression"] == "true"
    )
    assert all(
        settings[n].get("data.text_pair_column") == "text_pair" for n in ("MRPC", "QQP", "MNLI", "RTE")
    )
    assert "data.text_pair_column" not in settings["SST-2"]
    bad = tmp_path / "s.yaml"
    task = "{name: t, type: pair-classification, train: a.tsv, validation: b.tsv, metrics: [accuracy], "
    bad.write_text("tasks:\n  - " + task + "columns: {text: s1, txt_pair: s2, label: y}}\n")
    with pytest.raises(UserError, match="columns has unknown key 'txt_pair'"):
        load_suite(str(bad))
    bad.write_text("tasks:\n  - " + task + "columns: {text: s1, label: y}}\n")
    with pytest.raises(UserError, match="a pair-classification task names its second text"):
        load_suite(str(bad))


def test_a_folder_of_another_suite_is_not_written_into(tmp_path):
    """A second suite run into another suite's folder was taken: its report replaced the first suite's while
    the marker still named the first. Refused, unless --overwrite (which replaces the folder)."""
    from masklm.suite import MARKER, check_output

    out = tmp_path / "out"
    out.mkdir()
    (out / MARKER).write_text(json.dumps({"format": "masklm-suite", "suite": "res"}) + "\n")
    check_output(out, overwrite=False, name="res")  # the same suite: its finished tasks are kept
    with pytest.raises(UserError, match="holds the runs of suite 'res', not 'glue'; choose another --output"):
        check_output(out, overwrite=False, name="glue")
    check_output(out, overwrite=True, name="glue")


def test_suite_file_slips_are_named(tmp_path):
    """YAML reads `lrs: [1e-3]` (no dot) as a string, which was refused as "not a list of numbers"; a task key
    misspelt (`metric:`) was reported only as the missing `metrics`."""
    from masklm.suite import load_suite

    path = tmp_path / "s.yaml"
    task = "{name: t, type: classification, train: a.csv, validation: b.csv"
    path.write_text(
        f"grid: {{lrs: [1e-3], epochs: [2], seeds: [0]}}\ntasks:\n  - {task}, metrics: [accuracy]}}\n"
    )
    _, (spec,), _ = load_suite(str(path))
    assert spec.grid["lrs"] == [0.001]
    path.write_text(f"tasks:\n  - {task}, metric: [accuracy]}}\n")
    with pytest.raises(UserError, match="needs metrics and has unknown keys metric"):
        load_suite(str(path))


@pytest.mark.parametrize(
    "kind, train_labels, dev_labels, metrics, message",
    [
        (
            "classification",
            "01",
            "02",
            "accuracy",
            "dev.tsv: label '2' is not among the training labels (0, 1)",
        ),
        ("regression", "01", "0x", "pearson", "dev.tsv: score 'x' is not a number"),
        (
            "classification",
            "012",
            "012",
            "f1",
            "metric f1 is class 1's F1 of two classes, and the training file has 3",
        ),
    ],
)
def test_a_later_tasks_labels_are_checked_before_any_fine_tunes(
    model, tmp_path, capsys, kind, train_labels, dev_labels, metrics, message
):
    """A validation label the training file lacks, a score that is no number, f1 asked of three classes: each
    surfaced only once the tasks before it had trained (and named the converted file, not the user's)."""
    suite, data = two_task_suite(tmp_path, "metrics: [accuracy]")
    for name, labels in (("train", train_labels), ("dev", dev_labels)):
        rows = [f"a sentence number {i}\t{label}" for i, label in enumerate(labels * 4)]
        (data / "X").mkdir(exist_ok=True)
        (data / "X" / f"{name}.tsv").write_text("sentence\tlabel\n" + "\n".join(rows) + "\n")
    with open(suite, "a") as f:
        f.write(f"  - {{name: x, type: {kind}, train: X/train.tsv, validation: X/dev.tsv,\n"
                f"     columns: {{text: sentence, label: label}}, metrics: [{metrics}]}}\n")  # fmt: skip
    out = tmp_path / "out"
    assert cli("suite", "--model", model, "--suite", suite, "--data-dir", data, "--output", out) == 2
    err = capsys.readouterr().err
    assert message in err and "task x: " in err and err.count("\n") == 1, err
    assert not out.exists()


def _sleep_through_sigterm() -> None:
    import signal
    import time

    signal.signal(signal.SIGTERM, signal.SIG_IGN)  # as a worker does, stopping its run at a checkpoint
    time.sleep(60)


def test_workers_left_by_a_broken_pool_are_ended():
    """A dead worker breaks the pool, whose other workers stop their runs on SIGTERM and then wait for work the
    pool never sends, while the pool waits for them: the suite hung (seen in CI). They get a grace period, then
    SIGKILL."""
    from multiprocessing import get_context

    from masklm.suite import _end_survivors

    child = get_context("spawn").Process(target=_sleep_through_sigterm)
    child.start()
    started = time.monotonic()
    _end_survivors(1.0)
    child.join(10)
    assert not child.is_alive() and time.monotonic() - started < 10
