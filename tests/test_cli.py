"""The command line derived from the config dataclasses: --help, settings, suggestions, one-line errors, the docs.

Everything runs `masklm.cli.main` in-process; handlers are replaced by a recorder where only parsing matters.
"""

from __future__ import annotations

import dataclasses
import errno
import importlib.util
import inspect
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from masklm import cli
from masklm.config import Config, FinetuneConfig, settings

ROOT = Path(__file__).resolve().parents[1]


def help_text(capsys, *argv: str) -> str:
    """`masklm ARGV --help`, whitespace collapsed (argparse wraps lines to the terminal's width)."""
    with pytest.raises(SystemExit) as e:
        cli.main([*argv, "--help"])
    assert e.value.code == 0
    return " ".join(capsys.readouterr().out.split())


def error_line(capsys, *argv: str) -> str:
    """The one error line of a command line that must exit 2."""
    assert cli.main(list(argv)) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err, err
    return err


@pytest.fixture
def calls(monkeypatch) -> list[tuple[str, Any, dict[str, Any]]]:
    """Every command's handler replaced by one that records (command, args, overrides)."""
    seen: list[tuple[str, Any, dict[str, Any]]] = []
    for name, command in cli.COMMANDS.items():

        def record(args, overrides, name=name):
            seen.append((name, args, overrides))
            return 0

        monkeypatch.setitem(cli.COMMANDS, name, dataclasses.replace(command, handler=record))
    return seen


def test_pretrain_help_lists_every_setting_with_type_default_and_help(capsys):
    text = help_text(capsys, "pretrain")
    assert "--train.lr FLOAT peak learning rate (default: 0.0005)" in text
    assert "--model.hidden_size INT width of every hidden state (H) (default: 768)" in text
    assert "--mask.strategy {token,whole_word,span}" in text
    assert "--log {jsonl,tensorboard}" in text
    for section in ("model", "data", "mask", "train", "dist"):
        assert f"{section} settings:" in text
    missing = [s.key for s in settings(Config) if f"--{s.key} " not in text]
    assert not missing, missing


def test_finetune_help_lists_the_fine_tuning_settings(capsys):
    text = help_text(capsys, "finetune")
    assert "--train.epochs FLOAT passes over the training data" in text
    assert "None: 3, or more with few examples" in text  # train.epochs unset: by the number of steps
    assert "--train.lr FLOAT peak learning rate; None: by the encoder's width" in text
    assert "--train.beta2 FLOAT AdamW beta2 (default: 0.999)" in text  # a changed default keeps its help
    assert "--data.max_length INT" in text and "--log {jsonl,tensorboard}" in text
    missing = [s.key for s in settings(FinetuneConfig) if f"--{s.key} " not in text]
    assert not missing, missing
    assert "--model.hidden_size" not in text and "--mask.rate" not in text


@pytest.mark.parametrize("command", ["evaluate", "predict"])
def test_evaluate_and_predict_take_the_fine_tuning_settings(capsys, command):
    text = help_text(capsys, command)
    assert "--data.text_column STR" in text and "--train.eval_batch_size INT" in text
    assert "override the ones saved with the model" in text


@pytest.mark.parametrize("command", ["fill-mask", "export"])
def test_commands_without_settings_list_none_and_refuse_them(capsys, command):
    assert "--train." not in help_text(capsys, command)
    line = error_line(capsys, command, "MODEL", "OUT [MASK]", "--train.lr", "3e-4")
    assert f"{command} takes no --SECTION.FIELD settings (--train.lr)" in line


@pytest.mark.parametrize("flag", [["--train.lrr", "1e-3"], ["--train.lrr=1e-3"]])
def test_a_mistyped_setting_gets_a_suggestion(capsys, calls, flag):
    line = error_line(capsys, "pretrain", *flag)
    assert "--train.lrr" in line and "did you mean --train.lr?" in line
    assert "unknown config key" in line
    assert not calls


def test_a_mistyped_section_names_the_sections(capsys, calls):
    line = error_line(capsys, "evaluate", "--model", "m", "--data", "d.csv", "--model.hidden_size", "8")
    assert "unknown config key --model.hidden_size" in line and "--train.FIELD and --data.FIELD" in line


def test_settings_are_not_abbreviated(capsys, calls):
    line = error_line(capsys, "pretrain", "--train.eval", "5")
    assert (
        "unknown config key --train.eval;" in line and "did you mean --train.eval_" in line
    )  # eval_every / eval_pairs
    assert not calls


@pytest.mark.parametrize(
    "argv, field, allowed",
    [
        (["pretrain", "--mask.strategy", "words"], "mask.strategy", "token, whole_word, span"),
        (["pretrain", "--train.schedule=exp"], "train.schedule", "linear, cosine, wsd, constant"),
        (["finetune", "--train.precision", "fp8"], "train.precision", "fp32, bf16, fp16, auto"),
        (["pretrain", "--log", "wandb"], "train.log", "jsonl, tensorboard"),
    ],
)
def test_a_bad_choice_names_the_field_and_the_allowed_values(capsys, calls, argv, field, allowed):
    line = error_line(capsys, *argv)
    assert field in line and allowed in line
    assert not calls


def test_a_value_of_the_wrong_type_is_refused_before_the_handler_runs(capsys, calls):
    line = error_line(capsys, "finetune", "--train.epochs", "many")
    assert "train.epochs expects a finite number" in line
    assert not calls


def test_an_unknown_flag_is_unrecognised(capsys, calls):
    assert "unrecognised argument '--bogus'" in error_line(capsys, "pretrain", "--bogus")


@pytest.mark.parametrize("form", [["--model.hidden_size=64"], ["--model.hidden_size", "64"]])
def test_both_forms_reach_the_handler_as_given(calls, form):
    assert cli.main(["pretrain", "--data", "d", *form]) == 0
    (name, args, overrides) = calls[0]
    assert name == "pretrain" and overrides == {"model.hidden_size": "64"}
    assert args.data == ["d"] and args.argv == ["pretrain", "--data", "d", *form]


def test_only_given_settings_reach_the_handler_in_command_line_order(calls):
    argv = [
        "finetune",
        "--train",
        "t.csv",
        "--train.lr",
        "3e-4",
        "--log",
        "tensorboard",
        "--data.max_length=64",
    ]
    assert cli.main(argv) == 0
    (_, args, overrides) = calls[0]
    assert list(overrides.items()) == [
        ("train.lr", "3e-4"),
        ("train.log", "tensorboard"),
        ("data.max_length", "64"),
    ]
    assert args.train == "t.csv"  # --train FILE and --train.lr live side by side
    assert cli.main(["evaluate", "--model", "m", "--data", "d.csv"]) == 0
    assert calls[1][2] == {}


def test_every_command_has_one_handler_signature():
    from masklm import finetune

    assert set(cli.COMMANDS) == {
        "prepare",
        "pretrain",
        "fill-mask",
        "export",
        "finetune",
        "evaluate",
        "predict",
        "serve",
        "score",
        "compare",
        "suite",
    }
    for name, command in cli.COMMANDS.items():
        handler = getattr(finetune, command.handler.__name__, command.handler)  # the lazy ones: their target
        assert list(inspect.signature(handler).parameters) == ["args", "overrides"], name


def test_the_command_line_does_not_import_torch():
    code = (
        "import sys, masklm.cli as c; c.build_parser(); "
        "assert 'torch' not in sys.modules, sorted(m for m in sys.modules if m.startswith('torch'))"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_configuration_doc_is_up_to_date():
    spec = importlib.util.spec_from_file_location("config_doc", ROOT / "scripts" / "config_doc.py")
    config_doc = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(config_doc)
    current = (ROOT / "docs" / "configuration.md").read_text(encoding="utf-8")
    assert current == config_doc.render(), (
        f"docs/configuration.md is stale: run `{config_doc.REGENERATE}` and commit the result"
    )
    for s in [*settings(Config), *settings(FinetuneConfig)]:
        assert f"| `{s.key}` | `{s.default_text}` | {s.help.replace('|', chr(92) + '|')} |" in current, s.key


def test_under_torchrun_one_process_per_machine_says_a_user_error(monkeypatch, capsys):
    """Every process meets the same bad setting: LOCAL_RANK 0 prints it, the others only exit 2."""
    for local_rank, printed in (("1", False), ("0", True)):
        monkeypatch.setenv("LOCAL_RANK", local_rank)
        assert cli.main(["finetune", "--task", "classification", "--train.batch_size", "0"]) == 2
        assert ("error: " in capsys.readouterr().err) == printed


def test_a_path_through_a_file_met_late_is_one_line(monkeypatch, capsys):
    # the commands refuse such outputs up front; a path the checks did not see still ends in one line, exit 2
    def run(argv):
        raise NotADirectoryError(errno.ENOTDIR, os.strerror(errno.ENOTDIR), "notes.txt/out/model.safetensors")

    monkeypatch.setattr(cli, "run", run)
    assert cli.main(["prepare"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [
        "error: Not a directory: notes.txt/out/model.safetensors; a file stands where masklm writes a folder, or a "
        "folder where it writes a file: move it away and run the command again"
    ]
    # a training command's line says how its run continues (other commands' lines said so too)
    assert cli.main(["finetune"]) == 2
    assert (
        capsys.readouterr()
        .err.strip()
        .endswith("run the command again (the run continues from its last checkpoint with --resume)")
    )


def test_version_and_an_option_without_a_command(capsys):
    """`masklm --version` names the installed version; an option with no command is one line and exit 2 (it
    printed the help and exited 0, so a script's typo passed)."""
    import masklm

    with pytest.raises(SystemExit) as stop:
        cli.main(["--version"])
    assert stop.value.code == 0
    assert capsys.readouterr().out.strip() == f"masklm {masklm.__version__}"
    assert cli.main(["--verbose"]) == 2
    err = capsys.readouterr().err
    assert (
        err.startswith("error: unrecognized arguments: --verbose; name a command first")
        and err.count("\n") == 1
    )


def test_output_cut_off_by_its_pipe_is_no_traceback():
    """`masklm compare ... --json | head`: the reader closing the pipe early printed a BrokenPipeError traceback;
    masklm stops quietly with the shell's status for it (141). A command that prints a long answer stands in."""
    code = (
        "import sys, time; import masklm.cli as c; time.sleep(1); "
        "c.run = lambda argv: print('x' * 1_000_000) or 0; sys.exit(c.main([]))"
    )
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    proc.stdout.close()  # the reader is gone before masklm writes
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 141 and err.decode() == "", err.decode()


def test_repeated_sources_add_up_and_negative_exponents_are_values(calls, capsys):
    """`--input a --input b` read only b, and `--data a:0.5 --data b:0.5` trained on b alone: both are kept.
    `--train.lr -1e-3` was "expected one argument" (argparse takes -1e-3 for an option); it is a value."""
    assert cli.main(["prepare", "--input", "a", "--input", "b", "c", "--output", "o"]) == 0
    assert calls[-1][1].input == ["a", "b", "c"]
    assert cli.main(["pretrain", "--data", "x:0.5", "--data", "y:0.5", "--mask.rate", "-1e-3"]) == 0
    assert calls[-1][1].data == ["x:0.5", "y:0.5"] and calls[-1][2] == {"mask.rate": "-1e-3"}
    assert cli.main(["finetune", "--train.lr", "-2.5E+4", "--data.null_threshold", "-1e-3"]) == 0
    assert calls[-1][2] == {"train.lr": "-2.5E+4", "data.null_threshold": "-1e-3"}


def test_prepare_takes_the_data_settings_alone(capsys, calls):
    """prepare accepted --train.seed (and every other section) and did nothing with it."""
    err = error_line(capsys, "prepare", "--input", "a", "--output", "o", "--train.seed", "5")
    assert "prepare's settings are --data.FIELD" in err
    assert "--model.hidden_size" not in help_text(capsys, "prepare") and "--data.seq_len" in help_text(
        capsys, "prepare"
    )
    assert cli.main(["prepare", "--input", "a", "--output", "o", "--data.lowercase", "false"]) == 0


def test_an_interrupt_before_training_says_how_to_continue(monkeypatch, capsys):
    """Ctrl-C before a training loop (which handles its own signals) exits 130; for pretrain / finetune the line
    says that --resume continues the folder (the same command alone would find it exists)."""
    import masklm.cli as cli_module

    def interrupted(argv):
        raise KeyboardInterrupt

    monkeypatch.setattr(cli_module, "run", interrupted)
    for argv, hint in (
        (["pretrain"], True),
        (["finetune", "--resume"], True),
        (["fill-mask", "m", "x"], False),
    ):
        assert cli_module.main(argv) == 130
        err = capsys.readouterr().err.strip()
        assert err.startswith("interrupted") and ("plus --resume continues it" in err) == hint, err
