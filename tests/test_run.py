"""The run skeleton (masklm.train.run) and the metrics logger (masklm.train.logger): TensorBoard event files hold
the logged scalars, metrics.jsonl's records are unchanged, a missing tensorboard package is one line before any
work, one resume rule for pretraining and fine-tuning, one run-folder check, one rank."""

from __future__ import annotations

import json
import re
import shutil
import sys
from pathlib import Path

import pytest
import yaml
from helpers import cli, file_snapshot, prepare_tiny, read_metrics, write_walk_corpus

from masklm.config import Config, FinetuneConfig, apply_dict
from masklm.errors import UserError
from masklm.train.logger import JsonlSink, MetricsLogger
from masklm.train.run import RESUME_FREE, check_resume_settings, check_run_dir, resume_config

TINY = ["--preset", "tiny", "--train.log_every", "2", "--train.eval_every", "4", "--train.eval_sequences", "8"]  # fmt: skip
TRAIN_KEYS = ["step", "tokens", "split", "loss", "lr", "grad_norm", "tokens_per_s", "elapsed_s"]
VAL_KEYS = ["step", "tokens", "split", "loss", "accuracy", "perplexity"]


@pytest.fixture(scope="module")
def prepared(tmp_path_factory, one_thread) -> Path:
    root = tmp_path_factory.mktemp("prep")
    return prepare_tiny(write_walk_corpus(root / "corpus", n_docs=30), root / "data")


def pretrain(data: Path, out: Path, *extra: object) -> int:
    return cli("pretrain", *TINY, "--data", data, "--output", out, "--max-steps", 8, *extra)


def scalars(run: Path) -> dict[str, list[tuple[int, float]]]:
    """Every scalar of the run's TensorBoard folder as read by TensorBoard itself: tag → [(step, value)]."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run / "tensorboard"))
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def test_tensorboard_sink_holds_the_logged_scalars(prepared, tmp_path):
    out = tmp_path / "run"
    assert pretrain(prepared, out, "--train.log", "tensorboard") == 0
    rows, got = read_metrics(out), scalars(out)
    for split, keys in (("train", TRAIN_KEYS), ("val", VAL_KEYS)):
        records = [r for r in rows if r["split"] == split]
        for name in keys[3:] + ["tokens"]:
            tag = f"{split}/{name}"
            assert [step for step, _ in got[tag]] == [r["step"] for r in records], tag
            assert [value for _, value in got[tag]] == pytest.approx([r[name] for r in records], rel=1e-6)
    assert {tag.split("/")[0] for tag in got} == {"train", "val"}


def test_jsonl_records_are_unchanged(prepared, tmp_path):
    out = tmp_path / "run"
    assert pretrain(prepared, out) == 0
    rows = read_metrics(out)
    assert not (out / "tensorboard").exists()  # train.log=jsonl (the default): metrics.jsonl only
    train, val = [r for r in rows if r["split"] == "train"], [r for r in rows if r["split"] == "val"]
    assert [r["step"] for r in train] == [2, 4, 6, 8] and all(list(r) == TRAIN_KEYS for r in train)
    assert [r["step"] for r in val] == [4, 8] and all(list(r) == VAL_KEYS for r in val)
    assert [r["tokens"] for r in train] == [r["step"] * 8 * 32 for r in train]  # tiny preset: 8 rows of 32
    assert json.loads((out / "summary.json").read_text())["eval"] == {k: val[-1][k] for k in VAL_KEYS[3:]}
    # the sink itself: one json.dumps line per record, appended
    path = tmp_path / "m.jsonl"
    logger = MetricsLogger(tmp_path, [JsonlSink(path)])
    for record in train[:2]:
        logger.log(record)
    logger.close()
    assert path.read_text() == "".join(json.dumps(r) + "\n" for r in train[:2])


def test_tokens_per_s_counts_training_time_only(prepared, tmp_path, monkeypatch):
    """The log line after an evaluation or a checkpoint counted their seconds as training time (a quarter of the
    throughput of the lines around it); summary.json and elapsed_s never did."""
    import time

    import masklm.train.checkpoint as ckpt
    import masklm.train.pretrain as pretrain_module

    def slow(real):
        def wrapper(*a, **k):
            time.sleep(0.5)
            return real(*a, **k)

        return wrapper

    monkeypatch.setattr(pretrain_module, "evaluate", slow(pretrain_module.evaluate))
    monkeypatch.setattr(ckpt, "save", slow(ckpt.save))
    out = tmp_path / "run"
    assert pretrain(prepared, out, "--train.checkpoint_every", 4) == 0
    train = [r for r in read_metrics(out) if r["split"] == "train"]
    # 2 steps of 256 tokens each between lines: half a second more would cap a line at 1,024 tokens/s
    assert [r["step"] for r in train] == [2, 4, 6, 8] and min(r["tokens_per_s"] for r in train) > 2000, train


def test_resumed_run_shows_each_step_once_in_tensorboard(prepared, tmp_path):
    """A run resumed from an older checkpoint redoes the steps after it: metrics.jsonl keeps the first session's
    records up to that checkpoint only, and TensorBoard hides the first session's events from that step on."""
    out = tmp_path / "run"
    args = ["--train.log", "tensorboard", "--train.checkpoint_every", "4"]
    assert pretrain(prepared, out, *args) == 0
    shutil.rmtree(out / "checkpoints" / "step_00000008")  # as if killed before the final checkpoint
    assert pretrain(prepared, out, *args, "--resume") == 0
    assert [r["step"] for r in read_metrics(out) if r["split"] == "train"] == [2, 4, 6, 8]
    got = scalars(out)
    assert [step for step, _ in got["train/loss"]] == [2, 4, 6, 8]
    assert [step for step, _ in got["val/loss"]] == [4, 8]
    assert len(list((out / "tensorboard").iterdir())) == 2  # one event file per session


def test_a_resume_without_a_checkpoint_shows_each_step_once_in_tensorboard(prepared, tmp_path):
    """A run killed before its first checkpoint and run again with --resume starts from the beginning: TensorBoard
    forgets the first session's events, as metrics.jsonl drops its records."""
    out = tmp_path / "run"
    args = ["--train.log", "tensorboard", "--train.checkpoint_every", "0"]
    assert pretrain(prepared, out, *args) == 0
    shutil.rmtree(out / "checkpoints")  # as if killed before the only checkpoint (the last step's)
    (out / "summary.json").unlink()
    assert pretrain(prepared, out, *args, "--resume") == 0
    assert [r["step"] for r in read_metrics(out) if r["split"] == "train"] == [2, 4, 6, 8]
    assert [step for step, _ in scalars(out)["train/loss"]] == [2, 4, 6, 8]


def test_a_resumed_run_is_unfinished_until_it_ends(prepared, tmp_path, monkeypatch):
    """The summary.json of a run's first session goes when a resumed session starts training: a run stopped
    again is unfinished (`masklm compare`), not finished at the old step."""
    out = tmp_path / "run"
    assert pretrain(prepared, out, "--train.checkpoint_every", "4") == 0
    assert (out / "summary.json").is_file()

    def killed(*args, **kwargs):
        raise RuntimeError("killed")

    monkeypatch.setattr("masklm.train.run.fit", killed)
    with pytest.raises(RuntimeError, match="killed"):
        pretrain(prepared, out, "--train.checkpoint_every", "4", "--resume", "--max-steps", "12")
    assert not (out / "summary.json").exists()
    assert (out / "checkpoints").is_dir() and (out / "model").is_dir()


def test_missing_tensorboard_is_one_line_before_any_work(prepared, tmp_path, monkeypatch, capsys):
    # what `import` sees without the package
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)
    out = tmp_path / "run"
    capsys.readouterr()
    assert pretrain(prepared, out, "--train.log", "tensorboard") == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: "), err
    assert "pip install 'masklm[tensorboard]'" in err[0]
    assert not out.exists()


# ----------------------------------------------------------------------------------------------------------------
# One resume rule, one run-folder check, one rank


def saved_run(folder: Path, cfg: Config | FinetuneConfig, **sections: object) -> Path:
    folder.mkdir()
    (folder / "config.yaml").write_text(yaml.safe_dump({**sections, **cfg.to_dict()}, sort_keys=False))
    return folder


def test_resume_keeps_the_saved_config_with_the_allowed_changes(tmp_path):
    saved = Config()
    saved.train.seed, saved.train.max_steps = 3, 10
    run_dir = saved_run(tmp_path / "run", saved)
    given = Config()
    given.dist.strategy = "fsdp"
    settings = {"train.max_steps": 20, "train.lr": 1e-4, "train.seed": 3, "dist.strategy": "fsdp"}
    cfg = resume_config(run_dir, given, settings)
    assert (cfg.train.seed, cfg.train.max_steps, cfg.train.lr) == (3, 20, 1e-4)
    assert cfg.dist.strategy == "fsdp"  # how to run comes from this command
    refused = rf"hidden_size=64 differs from the run's {saved.model.hidden_size}; drop it"
    with pytest.raises(UserError, match=refused):
        resume_config(run_dir, given, {"model.hidden_size": 64})
    check_resume_settings(run_dir, {"model.hidden_size": saved.model.hidden_size})  # the same value is fine
    # no config.yaml (a run killed before writing it): the command's config
    assert resume_config(tmp_path, given, {"model.hidden_size": 64}) is given


def test_fine_tuning_resumes_by_the_same_rule(tmp_path):
    def load(values: dict) -> FinetuneConfig:
        return apply_dict(FinetuneConfig(), {k: values[k] for k in ("train", "data")}, "saved config")

    saved = FinetuneConfig()
    saved.data.max_length = 64
    run_dir = saved_run(tmp_path / "ft", saved, run={"task": "classification"})
    assert {"train.epochs", "train.max_steps", "train.max_minutes"} <= set(RESUME_FREE)
    cfg = resume_config(run_dir, FinetuneConfig(), {"train.epochs": 5.0}, load)
    assert isinstance(cfg, FinetuneConfig) and (cfg.train.epochs, cfg.data.max_length) == (5.0, 64)
    with pytest.raises(UserError, match="data.max_length=128 differs"):
        resume_config(run_dir, FinetuneConfig(), {"data.max_length": 128}, load)


def test_one_run_folder_check(tmp_path):
    a_file = tmp_path / "file"
    a_file.write_text("x")
    # a file is said to be one at once (its "already exists; pass --resume" led nowhere)
    with pytest.raises(UserError, match="output folder .* is a file, not a folder; choose another --output"):
        check_run_dir(a_file, resume=False, overwrite=False, what="output folder")
    with pytest.raises(UserError, match="is a file, not a folder"):
        check_run_dir(a_file, resume=True, overwrite=False)
    with pytest.raises(UserError, match="--resume: run folder .* does not exist"):
        check_run_dir(tmp_path / "nope", resume=True, overwrite=False)
    (tmp_path / "new" / "data").mkdir(parents=True)  # pretrain --input prepared its data here: still new
    check_run_dir(tmp_path / "new", resume=False, overwrite=False)
    (tmp_path / "new" / ".data.tmp-12-ab34cd56").mkdir()  # a kill while it prepared: still new, or resumable
    check_run_dir(tmp_path / "new", resume=False, overwrite=False)
    check_run_dir(tmp_path / "new", resume=True, overwrite=False)
    (tmp_path / "new" / "notes.txt").write_text("not a run's")
    with pytest.raises(UserError, match="--resume: .* is not a masklm run folder"):
        check_run_dir(tmp_path / "new", resume=True, overwrite=False)


def test_an_output_folder_given_as_a_symbolic_link(tmp_path, capsys):
    """A link to a run folder is that folder (resume, "already exists"); --overwrite through it is refused with
    the folder it would delete named (rmtree refused the link: a traceback), and a dangling link is named as such
    (finetune --resume said it 'needs --task, --model, ...', a new run 'File exists')."""
    run = saved_run(tmp_path / "run", FinetuneConfig(), run={"task": "classification"})
    (tmp_path / "link").symlink_to("run")
    check_run_dir(tmp_path / "link", resume=True, overwrite=False)
    with pytest.raises(UserError, match="already exists; pass --resume"):
        check_run_dir(tmp_path / "link", resume=False, overwrite=False, what="output folder")
    message = (
        f"--overwrite: {tmp_path / 'link'} is a symbolic link to {run.resolve()}, and --overwrite replaces"
    )
    with pytest.raises(UserError, match=re.escape(message)):
        check_run_dir(tmp_path / "link", resume=False, overwrite=True, what="output folder")
    (tmp_path / "dangling").symlink_to("gone")
    for resume in (True, False):
        with pytest.raises(
            UserError, match="dangling is a symbolic link to .*gone, which does not exist; fix"
        ):
            check_run_dir(tmp_path / "dangling", resume=resume, overwrite=False)
    for output in (tmp_path / "dangling", tmp_path / "missing"):
        assert cli("finetune", "--output", output, "--resume") == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "does not exist" in err[0] and "needs --task" not in err[0], err
    assert (run / "config.yaml").is_file() and (tmp_path / "link").is_symlink()


def test_one_rank(monkeypatch, capsys):
    from masklm import dist, utils

    assert utils.rank is dist.rank
    monkeypatch.setenv("RANK", "1")  # torchrun's environment, before the process group is joined
    assert dist.rank() == 1
    utils.log("only rank 0 prints")
    assert capsys.readouterr().err == ""


def test_overwrite_never_deletes_what_the_run_reads(tmp_path, capsys):
    """pretrain --overwrite of the run folder that holds its --data or --input: refused, every file kept."""
    run = tmp_path / "run"
    argv = ["--preset", "tiny", "--max-steps", "2", "--train.eval_every", "0", "--train.threads", "1"]
    corpus = write_walk_corpus(tmp_path / "corpus", 12)
    prep = ["--vocab-size", "120", "--seq-len", "32"]
    assert cli("pretrain", *argv, *prep, "--input", corpus, "--output", run) == 0
    shutil.copytree(corpus, run / "texts")
    before = sorted(p for p in run.rglob("*"))
    capsys.readouterr()
    for source in (["--data", run / "data"], ["--input", run / "texts", *prep]):
        assert cli("pretrain", *argv, *source, "--output", run, "--overwrite") == 2
        err = capsys.readouterr().err
        assert f"--overwrite would delete {run}, which holds {source[0]}" in err and err.count("\n") == 1
        assert sorted(p for p in run.rglob("*")) == before


def test_a_run_without_its_model_yet_is_named_as_such(tmp_path, capsys):
    """A stopped run (checkpoints, no model/) given as a model: one line saying to finish it with --resume."""
    run = tmp_path / "stopped"
    (run / "checkpoints" / "step_00000010").mkdir(parents=True)
    (run / "config.yaml").write_text("model: {}\n")
    assert cli("fill-mask", run, "a [MASK] b") == 2
    err = capsys.readouterr().err
    assert "stopped before its end" in err and "--resume" in err and err.count("\n") == 1


@pytest.mark.parametrize("text", ["", "- a list\n"])
def test_a_config_yaml_without_settings_is_damaged_not_the_defaults(prepared, tmp_path, capsys, text):
    """An emptied config.yaml was read as no settings, so --resume went on with the defaults, rewrote config.yaml
    with them and stopped at the checkpoint: 'written by a model of another architecture'."""
    out = tmp_path / "run"
    assert pretrain(prepared, out, "--train.checkpoint_every", "4") == 0
    (out / "config.yaml").write_text(text)
    capsys.readouterr()
    assert cli("pretrain", "--data", prepared, "--output", out, "--max-steps", 10, "--resume") == 2
    err = capsys.readouterr().err
    assert f"{out / 'config.yaml'} holds no settings" in err and "damaged" in err and err.count("\n") == 1
    assert (out / "config.yaml").read_text() == text


# ----------------------------------------------------------------------------------------------------------------
# One process per run folder


class OtherProcess:
    """A second process holding `folder` as a training masklm process does (an exclusive flock on the folder)
    until stopped; `held` says whether it got the hold."""

    def __init__(self, folder: Path) -> None:
        import subprocess

        code = (
            "import fcntl, os, sys; fd = os.open(sys.argv[1], os.O_RDONLY)\n"
            "try: fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)\n"
            "except BlockingIOError: print('busy', flush=True)\n"
            "else: print('held', flush=True)\n"
            "sys.stdin.read()"
        )
        self.proc = subprocess.Popen(
            [sys.executable, "-c", code, str(folder)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        self.held = self.proc.stdout.readline().strip() == "held"

    def stop(self) -> None:
        self.proc.stdin.close()
        self.proc.wait(timeout=30)


@pytest.mark.skipif(sys.platform == "win32", reason="flock is POSIX")
@pytest.mark.parametrize("how", ["resume", "overwrite", "new"])
def test_a_run_folder_in_use_by_another_process_is_refused(prepared, tmp_path, capsys, how):
    """A second --resume of a run still training, an --overwrite of it, or two new runs started on one --output
    at once (the other made the folder first): one line, exit 2, and the other run's files untouched."""
    run = tmp_path / "run"
    if how == "new":
        run.mkdir()  # made by the other process, which has written nothing yet
    else:
        assert pretrain(prepared, run) == 0
    before = file_snapshot(run)
    other = OtherProcess(run)
    flag = {"resume": ["--resume", "--max-steps", 12], "overwrite": ["--overwrite"], "new": []}[how]
    try:
        assert other.held
        assert pretrain(prepared, run, *flag) == 2
    finally:
        other.stop()
    err = capsys.readouterr().err
    assert f"{run} is in use: another masklm process is training in it" in err
    assert "Traceback" not in err
    assert file_snapshot(run) == before
    # once the other process has ended, the same command runs
    assert pretrain(prepared, run, *flag) == 0


@pytest.mark.skipif(sys.platform == "win32", reason="flock is POSIX")
def test_a_run_holds_its_folder_only_while_it_runs(prepared, tmp_path):
    """The hold ends with the run: a later command from another process is not refused."""
    from masklm.train import run as run_module

    run = tmp_path / "run"
    assert pretrain(prepared, run) == 0
    assert str(run.resolve()) not in run_module._HELD
    other = OtherProcess(run)
    other.stop()
    assert other.held


def test_input_overwrite_replaces_the_data_and_clears_what_a_kill_staged(tmp_path):
    """`pretrain --input NEW --overwrite` of a run prepares NEW beside it and moves it in once the old run is
    gone (the first version of the hold deleted the staged text before the move: FileNotFoundError); a later
    --input run deletes what a killed --overwrite left staged beside its folder."""
    from masklm.train import run as run_module

    first, second = (
        write_walk_corpus(tmp_path / "a", n_docs=20),
        write_walk_corpus(tmp_path / "b", n_docs=12, seed=3),
    )
    run = tmp_path / "run"
    argv = ["--vocab-size", 120, "--seq-len", 32, "--output", run]
    assert cli("pretrain", *TINY, "--input", first, *argv, "--max-steps", 2) == 0
    assert cli("pretrain", *TINY, "--input", second, *argv, "--max-steps", 2, "--overwrite") == 0
    sources = json.loads((run / "data" / "meta.json").read_text())["sources"]
    assert {Path(s["path"]).parent for s in sources} == {second}
    assert (run / "model").is_dir() and not run_module.new_data_dir(run).exists()
    staged = run_module.new_data_dir(run)
    (staged / "train").mkdir(parents=True)  # as a kill during a third --overwrite would leave it
    assert cli("pretrain", *TINY, "--input", second, *argv, "--max-steps", 4, "--resume") == 0
    assert not staged.exists()


def test_a_resumed_run_rewrites_metrics_as_an_uninterrupted_run_has_them(prepared, tmp_path, capsys):
    """The records after the checkpoint a run resumes from are trained and logged again, so they go (curves ran
    back, and compare plotted the steps twice); a damaged line goes too, with a note (it stayed, and compare refused
    the run for good); a run with no checkpoint starts over with an empty file. The result equals the records of
    the run that was never interrupted, wall-clock fields aside."""
    from masklm.plots import without_replayed

    def steady(rows: list[dict]) -> list[dict]:
        return [{k: v for k, v in r.items() if k not in ("tokens_per_s", "elapsed_s")} for r in rows]

    whole = tmp_path / "whole"
    assert pretrain(prepared, whole, "--train.checkpoint_every", 4) == 0
    out = tmp_path / "run"
    assert pretrain(prepared, out, "--train.checkpoint_every", 4) == 0
    shutil.rmtree(out / "checkpoints" / "step_00000008")  # as if killed before the final checkpoint
    with open(out / "metrics.jsonl", "a") as f:
        f.write("not a record\n")
    capsys.readouterr()
    assert pretrain(prepared, out, "--train.checkpoint_every", 4, "--resume") == 0
    assert "1 line(s) that were no JSON record dropped" in capsys.readouterr().err
    assert steady(read_metrics(out)) == steady(read_metrics(whole))
    shutil.rmtree(out / "checkpoints")  # no checkpoint left: the resumed run starts from the beginning
    assert pretrain(prepared, out, "--train.checkpoint_every", 4, "--resume") == 0
    assert steady(read_metrics(out)) == steady(read_metrics(whole))
    # a metrics.jsonl written before this rule: the later records of a step win in curves and compare
    rows = [{"step": s, "split": "train", "n": i} for i, s in enumerate([2, 4, 6, 8, 6, 8])]
    assert [r.get("n") for r in without_replayed([*rows, {"step": 8, "split": "val"}])] == [0, 1, 4, 5, None]


def test_a_budget_in_any_form_replaces_the_one_before_it(prepared, tmp_path, capsys):
    """--max-minutes with the tiny preset (40 steps) runs by time; --train.max_steps, on the command line or in a
    config file, clears a time budget as --max-steps does; a flag and its dotted form with one value are fine."""
    out = tmp_path / "minutes"
    assert (
        cli("pretrain", "--preset", "tiny", "--data", prepared, "--output", out, "--max-minutes", 0.01) == 0
    )
    train = yaml.safe_load((out / "config.yaml").read_text())["train"]
    assert (train["max_steps"], train["max_minutes"]) == (None, 0.01)
    assert "budget 0.01 minutes" in capsys.readouterr().err
    (tmp_path / "steps.yaml").write_text("train:\n  max_steps: 3\n")
    for name, extra in [
        ("flag", ["--max-minutes", 5, "--train.max_steps", 3]),
        ("file", ["--max-minutes", 5]),
    ]:
        out = tmp_path / name
        config = ["--config", tmp_path / "steps.yaml"] if name == "file" else []
        # both budgets given: both hold, and the start line says so
        assert cli("pretrain", *TINY, "--data", prepared, "--output", out, *config, *extra) == 0
        train = yaml.safe_load((out / "config.yaml").read_text())["train"]
        assert (train["max_steps"], train["max_minutes"]) == (3, 5)
        assert "budget 3 steps or 5 minutes, whichever comes first" in capsys.readouterr().err
    assert cli("pretrain", *TINY, "--data", prepared, "--output", tmp_path / "same", "--max-steps", 2,
               "--train.max_steps", "2", "--seed", 1, "--train.seed", "1") == 0  # fmt: skip


def test_a_config_file_on_resume_follows_the_resume_rule(prepared, tmp_path, capsys):
    """A --config file given with --resume was ignored: a changed setting it held ran unchanged without a word,
    and a budget it raised was not applied. Its settings are checked and applied as the command line's."""
    out = tmp_path / "run"
    assert pretrain(prepared, out) == 0
    (tmp_path / "mask.yaml").write_text("mask:\n  rate: 0.5\n")
    before = file_snapshot(out)
    assert pretrain(prepared, out, "--resume", "--config", tmp_path / "mask.yaml") == 2
    assert "mask.rate=0.5 differs from the run's" in capsys.readouterr().err
    assert file_snapshot(out) == before
    (tmp_path / "more.yaml").write_text("train:\n  max_steps: 12\n")
    assert (
        cli("pretrain", "--data", prepared, "--output", out, "--resume", "--config", tmp_path / "more.yaml")
        == 0
    )
    assert yaml.safe_load((out / "config.yaml").read_text())["train"]["max_steps"] == 12
    assert json.loads((out / "summary.json").read_text())["steps"] == 12


def test_a_finished_run_resumed_as_it_was_trains_and_records_nothing(prepared, tmp_path, capsys):
    """Each --resume of a finished run added its final evaluation to metrics.jsonl again; and a budget below the
    step the run reached was taken (nothing ran, and config.yaml recorded the lower budget)."""
    out = tmp_path / "run"
    assert pretrain(prepared, out) == 0
    metrics = (out / "metrics.jsonl").read_text()
    for _ in range(2):
        assert cli("pretrain", "--data", prepared, "--output", out, "--resume") == 0
        assert "has reached its budget (8 steps)" in capsys.readouterr().err
    assert (out / "metrics.jsonl").read_text() == metrics
    before = file_snapshot(out)
    assert cli("pretrain", "--data", prepared, "--output", out, "--resume", "--max-steps", 4) == 2
    assert "the run is at step 8 already, past a budget of 4 steps" in capsys.readouterr().err
    assert file_snapshot(out) == before


def test_fine_tuning_resumed_on_another_number_of_processes_keeps_its_global_batch(tmp_path, monkeypatch):
    """A fine-tuning started on 1 process and resumed on 2 read 64 examples a step instead of 32 (and counted
    its epochs wrongly), with no word; it keeps its global batch now, as pretraining does: the accumulation is
    split again where it divides, else the micro-batch."""
    from masklm import dist
    from masklm.config import FinetuneTrainConfig
    from masklm.finetune import keep_global_batch

    def resumed(saved: int, now: int, batch: int, accum: int) -> tuple[int, int]:
        run_dir = saved_run(
            tmp_path / f"ft{saved}{now}{batch}{accum}", FinetuneConfig(), run={"processes": saved}
        )
        monkeypatch.setattr(dist, "world_size", lambda: now)
        train = FinetuneTrainConfig(batch_size=batch, grad_accum=accum)
        keep_global_batch(train, run_dir, resume=True)
        return train.batch_size, train.grad_accum

    assert resumed(1, 2, 32, 1) == (16, 1)  # 32 a step either way
    assert resumed(2, 1, 16, 1) == (16, 2)  # the same batches as before, read one after the other
    assert resumed(1, 2, 16, 4) == (16, 2)
    assert resumed(2, 2, 16, 1) == (16, 1)
    with pytest.raises(UserError, match="does not divide among 2 processes"):
        resumed(1, 2, 3, 1)
