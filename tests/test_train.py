"""End-to-end pretraining on a tiny corpus: learning, exact resume, the run folder, fill-mask, CLI errors."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import file_snapshot, final_weights, prepare_tiny, read_metrics, write_walk_corpus

from masklm.cli import main
from masklm.errors import UserError
from masklm.infer.fill_mask import FillMask


@pytest.fixture(scope="module")
def prepared(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("prep")
    return prepare_tiny(write_walk_corpus(root / "corpus", n_docs=60), root / "data")


TINY = ["--preset", "tiny", "--train.eval_every", "0", "--train.log_every", "5"]


def run(args: list[str]) -> int:
    return main(["pretrain", *TINY, *args])


def test_tiny_model_learns_tiny_corpus(prepared, tmp_path):
    out = tmp_path / "run"
    assert (
        run(
            [
                "--data",
                str(prepared),
                "--output",
                str(out),
                "--max-steps",
                "800",
                "--train.lr",
                "3e-3",
                "--train.batch_size",
                "16",
            ]
        )
        == 0
    )
    summary = json.loads((out / "summary.json").read_text())
    rows = read_metrics(out)
    train = [r["loss"] for r in rows if r["split"] == "train"]
    assert train[-1] < train[0] - 1.5, train
    # each word follows from its neighbours: far below the unigram entropy (about 3 nats here) and far above
    # always guessing the most frequent token
    assert summary["eval"]["loss"] < 2.0, summary
    assert summary["eval"]["accuracy"] > summary["frequency_baseline_accuracy"] + 0.15, summary
    for name in (
        "config.yaml",
        "tokenizer.json",
        "metrics.jsonl",
        "curves.png",
        "summary.json",
        "command.txt",
    ):
        assert (out / name).is_file(), name
    assert {p.name for p in (out / "model").iterdir()} >= {
        "config.json",
        "model.safetensors",
        "tokenizer.json",
    }
    assert summary["tokens"] == 800 * 16 * 32


@pytest.mark.parametrize("strategy", ["whole_word", "span"])
def test_other_mask_strategies_train(prepared, tmp_path, strategy):
    """A run with each strategy finishes (that the strategy reaches the masks: tests/test_wiring.py)."""
    out = tmp_path / strategy
    assert (
        run(["--data", str(prepared), "--output", str(out), "--max-steps", "5", "--mask.strategy", strategy])
        == 0
    )
    assert (out / "model" / "model.safetensors").is_file()


@pytest.mark.parametrize(
    "variant",
    [
        [],
        [
            "--model.norm",
            "pre",
            "--model.position",
            "rotary",
            "--model.ffn",
            "geglu",
            "--model.bias",
            "false",
        ],
        ["--train.embedding_init", "ppmi"],  # the resumed run keeps the word vectors it started from
    ],
)
def test_resume_is_exact(prepared, tmp_path, variant):
    """2N steps == N steps + --resume + N steps, bit for bit, with dropout and accumulation on."""
    common = [
        "--data",
        str(prepared),
        "--model.hidden_dropout_prob",
        "0.1",
        "--train.schedule",
        "constant",
        "--train.warmup",
        "4",
        "--train.grad_accum",
        "2",
        "--train.checkpoint_every",
        "3",
        "--train.log_every",
        "3",
        *variant,
    ]
    assert run([*common, "--output", str(tmp_path / "full"), "--max-steps", "12"]) == 0
    assert run([*common, "--output", str(tmp_path / "half"), "--max-steps", "6"]) == 0
    assert run([*common, "--output", str(tmp_path / "half"), "--max-steps", "12", "--resume"]) == 0
    a, b = final_weights(tmp_path / "full"), final_weights(tmp_path / "half")
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    full_rows = read_metrics(tmp_path / "full")
    half_rows = read_metrics(tmp_path / "half")
    losses = lambda rows: [r["loss"] for r in rows if r["split"] == "train" and r["step"] > 6]  # noqa: E731
    assert losses(full_rows) == losses(half_rows)


def test_different_seed_differs(prepared, tmp_path):
    assert (
        run(["--data", str(prepared), "--output", str(tmp_path / "a"), "--max-steps", "3", "--seed", "1"])
        == 0
    )
    assert (
        run(["--data", str(prepared), "--output", str(tmp_path / "b"), "--max-steps", "3", "--seed", "2"])
        == 0
    )
    a, b = final_weights(tmp_path / "a"), final_weights(tmp_path / "b")
    assert not torch.equal(a["decoder_bias"], b["decoder_bias"])


def test_input_prepares_into_run_folder_and_fill_mask(tmp_path, capsys):
    corpus = write_walk_corpus(tmp_path / "corpus", n_docs=20)
    out = tmp_path / "run"
    assert (
        run(
            [
                "--input",
                str(corpus),
                "--output",
                str(out),
                "--max-steps",
                "4",
                "--vocab-size",
                "120",
                "--seq-len",
                "32",
            ]
        )
        == 0
    )
    assert (out / "data" / "meta.json").is_file()
    capsys.readouterr()
    assert (
        main(["fill-mask", str(out), "alpha [MASK] charlie delta [MASK] foxtrot", "--top-k", "3", "--json"])
        == 0
    )
    ranked = json.loads(capsys.readouterr().out)
    assert len(ranked) == 2 and all(len(r) == 3 for r in ranked)
    scores = [c["score"] for c in ranked[0]]
    assert scores == sorted(scores, reverse=True) and 0 < sum(scores) <= 1
    # the same from Python
    fm = FillMask.load(out)
    assert [c["token"] for c in fm("alpha [MASK] charlie delta [MASK] foxtrot", top_k=3)[0]] == [
        c["token"] for c in ranked[0]
    ]
    # bfloat16 weights (the default on CPUs with native bf16): the same candidates, scores to ~2 decimals
    text = "alpha [MASK] charlie delta [MASK] foxtrot"
    exact, half = (
        FillMask.load(out, dtype="float32")(text, top_k=3),
        FillMask.load(out, dtype="bfloat16")(text, top_k=3),
    )
    for e, h in zip(exact, half):
        assert e[0]["token"] == h[0]["token"] or abs(e[0]["score"] - e[1]["score"]) < 0.02
        assert abs(e[0]["score"] - h[0]["score"]) < 0.02
    with pytest.raises(UserError, match="--dtype"):
        FillMask.load(out, dtype="float16")
    # max-tokens budget
    out2 = tmp_path / "run2"
    assert run(["--data", str(out / "data"), "--output", str(out2), "--max-tokens", "1000"]) == 0
    assert json.loads((out2 / "summary.json").read_text())["steps"] == 4  # ceil(1000 / (8 * 32))


def test_an_input_run_resumes_on_its_own_data_and_refuses_other_text(tmp_path, capsys):
    """pretrain --input ... --resume: other text than the run was prepared from is refused (it would have been
    ignored), no --input at all resumes on RUN/data (it read as the demo before), and a --preset that disagrees
    with the run's settings is refused like the same setting given as a flag."""
    corpus = write_walk_corpus(tmp_path / "corpus", n_docs=20)
    other = write_walk_corpus(tmp_path / "other", n_docs=12, seed=5)
    out = tmp_path / "run"
    argv = ["--input", str(corpus), "--output", str(out), "--vocab-size", "120", "--seq-len", "32"]
    argv += ["--max-steps", "4", "--train.checkpoint_every", "2"]
    assert run(argv) == 0
    uninterrupted = final_weights(out)
    for cut in ("checkpoints/step_00000004", "model", "summary.json"):
        shutil.rmtree(out / cut) if (out / cut).is_dir() else (out / cut).unlink()
    capsys.readouterr()
    assert run([*argv[:1], str(other), *argv[2:], "--resume"]) == 2
    assert "prepared from other text than --input gives now" in capsys.readouterr().err
    assert main(["pretrain", *argv, "--resume", "--preset", "small"]) == 2
    assert "started with --preset tiny, not small" in capsys.readouterr().err
    assert main(["pretrain", "--output", str(out), "--resume"]) == 0  # no --input: RUN/data
    resumed = final_weights(out)
    assert all(torch.equal(uninterrupted[k], resumed[k]) for k in uninterrupted)


def test_an_input_run_killed_before_its_command_was_saved_resumes_as_itself(tmp_path, capsys):
    """A kill before the first session wrote command.txt (while it prepared the text): the run read as the demo
    on a later `--output RUN --resume`, and the demo's data.where was refused as a changed setting. RUN/data's
    sources tell it apart."""
    from masklm.utils import remove_dead_staging

    corpus = write_walk_corpus(tmp_path / "corpus", n_docs=20)
    out = tmp_path / "run"
    argv = ["--input", str(corpus), "--output", str(out), "--vocab-size", "120", "--seq-len", "32"]
    assert run([*argv, "--max-steps", "4", "--train.checkpoint_every", "2"]) == 0
    (out / "command.txt").unlink()
    assert run(["--output", str(out), "--resume", "--max-steps", "6"]) == 0
    assert json.loads((out / "summary.json").read_text())["steps"] == 6
    # what a prepare killed in the middle left beside its output goes once its process is gone
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True
    )
    stale, live = out / f".data.tmp-{dead.stdout.strip()}-00ff", out / f".data.tmp-{os.getpid()}-00ff"
    stale.mkdir(), live.mkdir()
    remove_dead_staging(out / "data", "tmp")
    assert not stale.exists() and live.exists()


def test_bad_inputs_one_line_exit_2_nothing_changed(prepared, tmp_path, capsys):
    out = tmp_path / "run"
    assert run(["--data", str(prepared), "--output", str(out), "--max-steps", "2"]) == 0
    before = file_snapshot(out)
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "a.txt").write_text("")
    binary = tmp_path / "bin"
    binary.mkdir()
    (binary / "a.txt").write_bytes(bytes(range(256)) * 10)
    cases = [
        (["pretrain", *TINY, "--data", str(prepared), "--output", str(out)], "already exists"),
        (
            [
                "pretrain",
                *TINY,
                "--data",
                str(prepared),
                "--output",
                str(tmp_path / "x"),
                "--train.nope",
                "1",
            ],
            "unknown config key",
        ),
        (
            [
                "pretrain",
                *TINY,
                "--data",
                str(prepared),
                "--output",
                str(tmp_path / "x"),
                "--train.batch_size",
                "0",
            ],
            "batch_size",
        ),
        (
            ["pretrain", *TINY, "--data", str(tmp_path / "missing"), "--output", str(tmp_path / "x")],
            "missing",
        ),
        (["prepare", "--input", str(empty), "--output", str(tmp_path / "p")], "empty"),
        (["prepare", "--input", str(binary), "--output", str(tmp_path / "p")], "binary"),
        (["prepare", "--input", str(tmp_path / "nope.txt"), "--output", str(tmp_path / "p")], "nope.txt"),
        (["prepare", "--input", str(empty), "--output", str(out)], "exists"),
        (["fill-mask", str(out), "no mask here"], "[MASK]"),
        (["fill-mask", str(tmp_path / "nomodel"), "a [MASK]"], "does not exist"),
        (["pretrain", "--bogus"], "unrecognised"),
    ]
    for argv, needle in cases:
        capsys.readouterr()
        assert main(argv) == 2, argv
        err = capsys.readouterr().err.strip()
        last = err.splitlines()[-1]  # progress bars may come before it
        assert last.startswith("error: ") and err.count("error: ") == 1, (argv, err)
        assert needle.lower() in last.lower(), (argv, err)
        assert "Traceback" not in err
        assert file_snapshot(out) == before, argv
        assert not (tmp_path / "x").exists() and not (tmp_path / "p").exists()


def test_overwrite_replaces_a_run_and_refuses_other_folders(prepared, tmp_path, capsys):
    out = tmp_path / "run"
    assert run(["--data", str(prepared), "--output", str(out), "--max-steps", "2"]) == 0
    assert run(["--data", str(prepared), "--output", str(out), "--max-steps", "3", "--overwrite"]) == 0
    assert json.loads((out / "summary.json").read_text())["steps"] == 3
    precious = tmp_path / "precious"
    precious.mkdir()
    (precious / "notes.txt").write_text("keep me")
    assert run(["--data", str(prepared), "--output", str(precious), "--max-steps", "2", "--overwrite"]) == 2
    assert (precious / "notes.txt").read_text() == "keep me"


@pytest.mark.parametrize("has_bf16", [True, False])
def test_auto_precision_follows_native_bf16(monkeypatch, has_bf16):
    from masklm.train.loop import resolve_precision
    from masklm.utils import native_bf16

    cpu = torch.device("cpu")
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: has_bf16, raising=False)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: False, raising=False)
    assert native_bf16(cpu) is has_bf16
    assert resolve_precision("auto", cpu) == ("bf16" if has_bf16 else "fp32")
    assert resolve_precision("fp32", cpu) == "fp32"  # an explicit choice is kept
    with pytest.raises(UserError, match="fp16 needs a GPU"):
        resolve_precision("fp16", cpu)


@pytest.mark.parametrize("has_bf16", [True, False])
def test_forced_bf16_on_a_cpu_that_emulates_it_is_kept_with_a_note(monkeypatch, capsys, has_bf16):
    from masklm.train import loop

    monkeypatch.setattr(loop, "native_bf16", lambda device: has_bf16)
    loop._note_emulated_bf16.cache_clear()
    assert loop.resolve_precision("bf16", torch.device("cpu")) == "bf16"
    assert loop.resolve_precision("bf16", torch.device("cpu")) == "bf16"
    err = capsys.readouterr().err
    assert err.count("emulated") == (0 if has_bf16 else 1), err


def test_cpu_optimizer_is_fused_and_matches_foreach():
    from masklm.config import TrainConfig
    from masklm.train.optim import make_optimizer

    def trained(fused: bool) -> torch.Tensor:
        torch.manual_seed(0)
        model = torch.nn.Sequential(torch.nn.Linear(8, 8), torch.nn.LayerNorm(8), torch.nn.Linear(8, 2))
        opt = make_optimizer(model, TrainConfig(lr=1e-2, weight_decay=0.1), torch.device("cpu"))
        assert opt.defaults["fused"] is True
        if not fused:
            opt.defaults["fused"] = None
            for group in opt.param_groups:
                group["fused"], group["foreach"] = None, True
        for _ in range(5):
            model(torch.randn(4, 8, generator=torch.Generator().manual_seed(1))).square().mean().backward()
            opt.step()
            opt.zero_grad()
        return torch.cat([p.detach().flatten() for p in model.parameters()])

    assert torch.allclose(trained(True), trained(False), atol=1e-6)


def test_no_preset_forces_bf16_on_a_cpu_without_it():
    """bf16 on a CPU without AVX512-BF16 or AMX is emulated: a `small` step took 35 s instead of 0.8 s on an
    AVX2-only AMD EPYC. A preset does not know the machine, so it may ask for "auto" (or fp32), never bf16."""
    from masklm.config import PRESETS, preset_values

    for name in PRESETS:
        precision = preset_values(name).get("train", {}).get("precision", "auto")
        assert precision in ("auto", "fp32"), (name, precision)


def test_every_step_of_the_budget_moves_the_weights(prepared, tmp_path):
    """The rate of each step is the schedule where that step starts, as transformers' get_linear_schedule_with_
    warmup gives it: the last step of a decaying schedule is not at lr 0, and a one-step run without warmup
    trains at the peak rate."""
    import transformers

    out = tmp_path / "sched"
    steps, lr, warmup = 6, 1e-3, 2
    args = ["--data", str(prepared), "--output", str(out), "--max-steps", str(steps), "--train.lr", str(lr)]
    args += ["--train.warmup", str(warmup), "--train.schedule", "linear", "--train.log_every", "1"]
    assert run(args) == 0
    logged = [r["lr"] for r in read_metrics(out) if r["split"] == "train"]
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=lr)
    sched = transformers.get_linear_schedule_with_warmup(opt, warmup, steps)
    expected = []
    for _ in range(steps):
        expected.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert logged == pytest.approx(expected, abs=1e-12) and logged[-1] > 0
    one = ["--data", str(prepared), "--max-steps", "1", "--train.warmup", "0", "--train.log_every", "1"]
    assert run([*one, "--output", str(tmp_path / "a"), "--train.lr", "1e-3"]) == 0
    assert run([*one, "--output", str(tmp_path / "b"), "--train.lr", "1e-1"]) == 0
    a, b = final_weights(tmp_path / "a"), final_weights(tmp_path / "b")
    assert any(not torch.equal(a[k], b[k]) for k in a)


def test_resume_with_an_init_from_of_another_shape_is_one_line(prepared, tmp_path, capsys):
    data = ["--data", str(prepared), "--max-steps", "2"]
    assert run([*data, "--output", str(tmp_path / "other")]) == 0
    assert run([*data, "--output", str(tmp_path / "run"), "--model.num_hidden_layers", "1"]) == 0
    capsys.readouterr()
    argv = [*data, "--output", str(tmp_path / "run"), "--resume", "--init-from", str(tmp_path / "other")]
    assert run([*argv, "--max-steps", "4"]) == 2
    err = capsys.readouterr().err
    assert "--init-from" in err and "model.num_hidden_layers" in err and err.count("\n") == 1, err


def _other_text(prepared: Path, other: Path) -> None:
    """Other texts prepared with the run's tokenizer: another number of sequences."""
    corpus = write_walk_corpus(other.parent / "corpus", n_docs=20)
    argv = ["--tokenizer", str(prepared / "tokenizer.json"), "--seq-len", "32"]
    assert main(["prepare", "--input", str(corpus), "--output", str(other), *argv]) == 0


def _rows_rolled(prepared: Path, other: Path) -> None:
    """The same number of sequences in another order (a shard's rows rolled by one): only the fingerprint of the
    stream tells."""
    shutil.copytree(prepared, other)
    for name in ("ids_00000.npy", "word_starts_00000.npy"):
        path = other / "train" / name
        np.save(path, np.roll(np.load(path), 1, axis=0))


@pytest.mark.parametrize(
    ("make_other", "message"),
    [(_other_text, "the run was trained on"), (_rows_rolled, "other ones (or in another order)")],
    ids=["other-text", "same-size-other-order"],
)
def test_resume_on_other_data_of_the_same_tokenizer_is_refused(
    prepared, tmp_path, capsys, make_other, message
):
    """Data prepared with the run's tokenizer passed the tokenizer check, and the run went on with another data
    stream (exit 0, not the run it was). The data it started with still resumes."""
    other = tmp_path / "other_data"
    make_other(prepared, other)
    out = tmp_path / "run"
    assert run(["--data", str(prepared), "--output", str(out), "--max-steps", "4"]) == 0
    before = file_snapshot(out)
    capsys.readouterr()
    assert run(["--data", str(other), "--output", str(out), "--max-steps", "6", "--resume"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert message in err[-1] and "pass the --data" in err[-1] and len(err) == 1, err
    assert file_snapshot(out) == before
    assert run(["--data", str(prepared), "--output", str(out), "--max-steps", "6", "--resume"]) == 0


def test_forgetting_the_data_is_said(tmp_path, monkeypatch, capsys):
    """`pretrain --output runs/x` without --data or --input trains on the demo's text: a note says so (the user
    may have forgotten --data). The training itself is stubbed out: what is checked is the note and the input
    the run was given."""
    from masklm import cli
    from masklm.train import pretrain as pretrain_module

    monkeypatch.setattr(cli, "_prepare_into_run", lambda *args: None)
    seen = []

    def stub(cfg, data, run_dir, **kwargs):
        seen.append(cfg.data.where)
        raise UserError("stub")

    monkeypatch.setattr(pretrain_module, "pretrain", stub)
    assert main(["pretrain", "--output", str(tmp_path / "x"), "--preset", "tiny", "--max-steps", "2"]) == 2
    err = capsys.readouterr().err
    assert "note: no --data or --input: pretraining on the demo's text" in err and seen == ["source=imdb"], (
        err
    )
    assert (
        main(["pretrain", "--output", str(tmp_path / "y"), "--preset", "tiny", "--data", str(tmp_path)]) == 2
    )
    assert "note: no --data" not in capsys.readouterr().err


def test_a_warmup_in_steps_warms_up_under_a_time_budget():
    """--max-minutes with --train.warmup 100: the warmup was a fraction of no step count, so 0, and the first step
    ran at the full rate. It counts steps now, up to where it meets the decay over the time."""
    from masklm.config import TrainConfig
    from masklm.train.optim import lr_factor

    cfg = TrainConfig(warmup=100, schedule="linear", min_lr_ratio=0.0)
    assert lr_factor(0.001, cfg, None, step=1) == pytest.approx(0.01)
    assert lr_factor(0.01, cfg, None, step=50) == pytest.approx(0.5)
    # past the warmup: the decay over the time
    assert lr_factor(0.5, cfg, None, step=400) == pytest.approx(0.5)
    assert lr_factor(0.2, cfg, 1000) == pytest.approx(1.0 - (0.2 - 0.1) / 0.9)  # a step budget: as before
    fraction = TrainConfig(warmup=0.1, schedule="linear", min_lr_ratio=0.0)
    assert lr_factor(0.05, fraction, None, step=3) == pytest.approx(0.5)  # a fraction: of the time, as before


def test_the_prepared_sequence_length_is_checked_against_the_positions(tmp_path):
    """Data prepared at 16 tokens with --model.max_position_embeddings 16: the tiny preset's 32 was checked instead
    and refused ("lower --data.seq_len", which --data refuses in turn)."""
    from helpers import cli

    corpus = write_walk_corpus(tmp_path / "corpus", n_docs=10)
    assert (
        cli(
            "prepare",
            "--input",
            corpus,
            "--output",
            tmp_path / "data",
            "--vocab-size",
            "120",
            "--seq-len",
            "16",
        )
        == 0
    )
    args = ["--preset", "tiny", "--train.threads", "1", "--max-steps", "2", "--model.max_position_embeddings"]
    assert cli("pretrain", *args, "16", "--data", tmp_path / "data", "--output", tmp_path / "run") == 0
    assert cli("pretrain", *args, "8", "--data", tmp_path / "data", "--output", tmp_path / "run8") == 2


def test_a_warmup_as_long_as_the_budget_is_noted(capsys):
    """--max-steps 1 with the default warmup: the only step ran at rate 0 and changed no weight, silently."""
    from masklm.config import TrainConfig
    from masklm.train.loop import Budget, _note_long_warmup

    for warmup, steps, noted in (
        (0.06, 1, True),
        (100, 4, True),
        (100, 1000, False),
        (0.1, 100, False),
        (0, 1, False),
    ):
        _note_long_warmup(TrainConfig(warmup=warmup), Budget(steps=steps))
        assert ("never reaches train.lr" in capsys.readouterr().err) == noted, (warmup, steps)
    _note_long_warmup(TrainConfig(warmup=100), Budget(minutes=1.0))  # a time budget: no step count to compare
    assert not capsys.readouterr().err


def test_a_warmup_longer_than_the_budget_keeps_its_slope_and_wsd_decays_after_it():
    """A 1,000-step warmup in a 100-step budget rises as step / 1000 (it was squeezed into the budget: half the
    rate at step 50); a wsd decay that would start inside the warmup starts where the warmup ends, with no drop."""
    from masklm.config import TrainConfig
    from masklm.train.optim import lr_factor

    assert lr_factor(0.5, TrainConfig(warmup=1000), 100, 50) == pytest.approx(0.05)
    wsd = TrainConfig(warmup=0.9, schedule="wsd", decay_fraction=0.2, min_lr_ratio=0.0)
    assert lr_factor(0.899, wsd, 1000) == pytest.approx(0.899 / 0.9)
    assert lr_factor(0.901, wsd, 1000) == pytest.approx(1 - 0.001 / 0.1, abs=1e-6)
    assert lr_factor(0.95, wsd, 1000) == pytest.approx(0.5)
    # the usual shape is unchanged: flat until the last 20%, then linear to the floor
    usual = TrainConfig(warmup=0.05, schedule="wsd", decay_fraction=0.2, min_lr_ratio=0.0)
    assert lr_factor(0.7, usual, 1000) == 1.0 and lr_factor(0.9, usual, 1000) == pytest.approx(0.5)


def test_set_up_time_counts_in_the_budget_but_not_in_the_schedule():
    """Under --max-minutes, the seconds spent before the first step (the word-embedding init) count against the
    budget, and the schedule spans the time left: the first step starts its warmup at 0 whatever the set-up
    took, and the schedule still ends with the budget."""
    from masklm.train.loop import Budget

    budget = Budget(minutes=1.0)
    assert budget.progress(0, 30.0, setup_s=30.0) == 0.0
    assert budget.progress(10, 45.0, setup_s=30.0) == pytest.approx(0.5)
    assert budget.progress(20, 60.0, setup_s=30.0) == pytest.approx(1.0) and budget.done(20, 60.0)
    assert budget.progress(0, 30.0) == pytest.approx(0.5)  # what it was: half the budget before any step


def test_evaluation_reads_rows_from_the_whole_validation_split():
    """A validation split of two sources one after another (or of a corpus's files in order) is sampled evenly:
    the first eval_sequences rows were the first source's alone. The rows, and their masks, are the same for any
    batch size."""
    from masklm.objectives import eval_rows, evaluate
    from masklm.objectives.mlm import MLM

    assert eval_rows(10, 512).tolist() == list(range(10))
    rows = eval_rows(1000, 4)
    assert rows.tolist() == [0, 250, 500, 750]

    class Rows:  # 100 rows of the first source, then 100 of the second (token 7 or 9 everywhere)
        def __len__(self) -> int:
            return 200

        def get(self, idx):
            seen.extend(int(i) for i in idx)
            ids = torch.tensor([[2] + [7 if i < 100 else 9] * 6 + [3] for i in idx])
            return ids, torch.ones_like(ids, dtype=torch.bool)

    class Batches:
        dataset = Rows()

        def masked(self, ids, starts, seeds):
            labels = torch.full_like(ids, -100)
            labels[:, 1] = ids[:, 1]
            return {"input_ids": ids, "labels": labels}

    class Counting(MLM):
        def eval_sums(self, model, batch):
            picked = batch["input_ids"][:, 1]
            return {"second": (picked == 9).sum().double(), "rows": torch.tensor(float(len(picked)))}

        def eval_metrics(self, totals):
            return totals

    for batch_size in (3, 16):
        seen = []
        got = evaluate(torch.nn.Identity(), Counting(), Batches(), 20, batch_size, torch.device("cpu"))
        assert got == {"rows": 20.0, "second": 10.0} and sorted(seen) == list(range(0, 200, 10))
