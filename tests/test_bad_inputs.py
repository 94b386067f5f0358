"""Bad input to every command: one line `error: ...` naming the problem, exit code 2, and nothing changed.

One workspace is built per module (prepared data, a tiny pretrained run, a tiny fine-tuned classifier, task files
and broken copies of them). Every case runs `masklm.cli.main` in-process inside that workspace (the current
folder too), then checks: exit code 2; stderr's last line starts with "error: " and names the problem; exactly
one "error:" and no traceback; and every file and folder under the workspace is exactly as before (no new
ones either). docs/failures.md lists every case of CASES (tests/test_bad_inputs.py keeps the two in step).
"""

from __future__ import annotations

import gzip
import json
import random
import re
import shutil
from pathlib import Path

import pytest
import torch
from helpers import WALK_WORDS, cli, prepare_tiny, write_csv, write_jsonl

OTHER_WORDS = (
    "red green blue cyan magenta yellow black white orange purple brown pink grey olive navy teal".split()
)
ONE_THREAD = ["--train.threads", "1"]
TINY = ["--preset", "tiny", "--train.eval_every", "0", *ONE_THREAD]
DOCS = Path(__file__).resolve().parent.parent / "docs" / "failures.md"


# ----------------------------------------------------------------------------------------------------------------
# The workspace


def sentences(words: list[str], n: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        start, length = rng.randrange(len(words)), rng.randrange(6, 14)
        out.append(" ".join(words[(start + j) % len(words)] for j in range(length)))
    return out


def cls_rows(n: int, seed: int) -> list[dict]:
    return [{"text": s, "label": "a" if "alpha" in s else "other"} for s in sentences(WALK_WORDS, n, seed)]


def conll(n: int, seed: int) -> str:
    blocks = []
    for s in sentences(WALK_WORDS, n, seed):
        blocks.append("".join(f"{w}\t{'B-A' if w == 'alpha' else 'O'}\n" for w in s.split()))
    return "\n".join(blocks)


def qa_rows(n: int, seed: int) -> list[dict]:
    rows = []
    for i, s in enumerate(sentences(WALK_WORDS, n, seed)):
        answer = s.split()[2]
        rows.append(
            {
                "id": f"q{seed}-{i}",
                "question": "which word is third ?",
                "context": s,
                "answers": {"text": [answer], "answer_start": [s.index(" " + answer + " ") + 1]},
            }
        )
    return rows


def ok(*argv: object) -> None:
    assert cli(*argv) == 0, argv


@pytest.fixture(scope="module")
def ws(tmp_path_factory) -> Path:
    torch.set_num_threads(1)
    ws = tmp_path_factory.mktemp("ws")
    corpus, other = ws / "corpus", ws / "other_corpus"
    for folder, words in ((corpus, WALK_WORDS), (other, OTHER_WORDS)):
        folder.mkdir()
        for i, text in enumerate(sentences(words, 40, seed=len(words))):
            (folder / f"doc{i:02d}.txt").write_text(" ".join([text] * 4))
    prepare_tiny(corpus, ws / "data")
    prepare_tiny(other, ws / "other_data")
    ok("pretrain", *TINY, "--data", ws / "data", "--output", ws / "run", "--max-steps", "4",
       "--train.checkpoint_every", "2")  # fmt: skip

    f = ws / "files"
    f.mkdir()
    write_csv(f / "cls_train.csv", cls_rows(32, 1))
    write_csv(f / "cls_val.csv", cls_rows(16, 2))
    write_csv(f / "cls_unseen_label.csv", [*cls_rows(4, 3), {"text": "alpha bravo", "label": "zulu"}])
    write_csv(f / "no_label.csv", [{"text": r["text"]} for r in cls_rows(4, 4)])
    write_csv(f / "body_only.csv", [{"body": r["text"], "label": r["label"]} for r in cls_rows(4, 5)])
    (f / "cls_bad.jsonl").write_text('{"text": "alpha bravo", "label": "a"}\n{"text": "bravo", "label": \n')
    (f / "ner_train.txt").write_text(conll(24, 6))
    (f / "ner_val.txt").write_text(conll(8, 7))
    lines = conll(8, 8).splitlines()
    lines[3] = "alpha\tB-A\textra"
    (f / "ner_bad.txt").write_text("\n".join(lines) + "\n")
    write_jsonl(f / "qa_train.jsonl", qa_rows(16, 9))
    write_jsonl(f / "qa_val.jsonl", qa_rows(8, 10))
    bad_qa = qa_rows(4, 11)
    bad_qa[1]["answers"]["answer_start"] = [0]
    write_jsonl(f / "qa_bad_offset.jsonl", bad_qa)
    (f / "qa_empty.json").write_text('{"version": "1.1", "data": []}\n')
    (f / "empty.txt").write_text("")
    (f / "empty.csv").write_text("")
    (f / "binary.txt").write_bytes(bytes(range(256)) * 8)
    (f / "binary.csv").write_bytes(b"text,label\n" + bytes(range(256)) * 8)
    (f / "latin1.txt").write_bytes("caf\xe9 cr\xe8me br\xfbl\xe9e\n".encode("latin-1") * 20)
    (f / "latin1.csv").write_bytes("text,label\ncaf\xe9,a\ncr\xe8me,other\n".encode("latin-1"))
    (f / "corpus_bad.jsonl").write_text('{"text": "alpha bravo"}\n{"text": "charlie\n')
    write_csv(f / "corpus_body.csv", [{"body": s} for s in sentences(WALK_WORDS, 4, 12)])
    (f / "predictions.jsonl").write_text('{"label": "a"}\n')
    (f / "long.txt").write_text(" ".join(["alpha"] * 300) + " [MASK]")
    (f / "corpus_ragged.csv").write_text("id,text\n1,alpha bravo, charlie delta\n2,echo\n")
    (f / "corpus_object.json").write_text('{"text": "alpha bravo"}\n')
    (f / "ner_train.txt.gz").write_bytes(gzip.compress(conll(24, 6).encode()))
    val = cls_rows(6, 14)
    write_csv(f / "cls_nan.csv", [*val[:3], {"text": "alpha bravo", "label": "NaN"}])
    (f / "cls_joined.csv").write_text((f / "cls_val.csv").read_text() * 2)
    (f / "cls_semicolon.csv").write_text("text;label\n" + "".join(f"{r['text']};{r['label']}\n" for r in val))
    (f / "cls_open_quote.csv").write_text('text,label\nalpha bravo,a\n"bravo charlie,other\necho,a\n')
    (f / "cls_twice.jsonl").write_text('{"text": "alpha bravo", "label": "a", "text": ""}\n')
    scores = [{"text": r["text"], "label": 1.5 if r["label"] == "a" else -0.5} for r in val]
    write_csv(f / "scores.csv", scores)
    write_csv(f / "scores_huge.csv", [*scores, {"text": "alpha", "label": "3e300"}])
    write_csv(
        f / "cls_headerless.csv",
        [{"alpha bravo charlie delta": r["text"], "0": r["label"]} for r in cls_rows(6, 13)],
    )

    ok("export", ws / "run", ws / "onnx", "--format", "onnx")
    ok("finetune", "--task", "classification", "--model", ws / "run", "--train", f / "cls_train.csv",
       "--validation", f / "cls_val.csv", "--output", ws / "ft", "--train.epochs", "1", "--train.batch_size", "16",
       *ONE_THREAD)  # fmt: skip

    # Damaged copies of the prepared data: a shard cut short, the tokenizer of other data, the val split gone.
    for name in ("data_cut", "data_other_tok", "data_no_val"):
        shutil.copytree(ws / "data", ws / name)
    shard = ws / "data_cut" / "train" / "ids_00000.npy"
    shard.write_bytes(shard.read_bytes()[:-64])
    shutil.copy(ws / "other_data" / "tokenizer.json", ws / "data_other_tok" / "tokenizer.json")
    shutil.rmtree(ws / "data_no_val" / "val")

    precious = ws / "precious"
    precious.mkdir()
    (precious / "notes.txt").write_text("not a masklm folder: keep me\n")

    # Broken copies of the pretrained model folder.
    m = ws / "models"
    good = ws / "run" / "model"
    for name in ("bad_st", "pickle_st", "bad_config", "wrong_tok", "wrong_shape", "nan_weights"):
        shutil.copytree(good, m / name)
    from safetensors.torch import load_file, save_file

    weights = load_file(str(good / "model.safetensors"))
    first = next(k for k in weights if weights[k].is_floating_point())
    weights[first][0] = float("nan")
    save_file(weights, str(m / "nan_weights" / "model.safetensors"), metadata={"format": "pt"})
    (m / "bad_st" / "model.safetensors").write_bytes(b"\x00garbage, not safetensors" * 10)
    torch.save({"w": torch.zeros(3)}, m / "pickle_st" / "model.safetensors")
    text = (good / "config.json").read_text()
    (m / "bad_config" / "config.json").write_text(text[: len(text) // 2])
    shutil.copy(ws / "other_data" / "tokenizer.json", m / "wrong_tok" / "tokenizer.json")
    config = json.loads(text)
    config["model"]["hidden_size"] = 64
    config["model"]["num_attention_heads"] = 4
    (m / "wrong_shape" / "config.json").write_text(json.dumps(config))
    shutil.copytree(good, m / "bad_heads")  # a config.json edited to a shape the model cannot have
    config["model"]["hidden_size"], config["model"]["num_attention_heads"] = 32, 3
    (m / "bad_heads" / "config.json").write_text(json.dumps(config))
    return ws


def snapshot(root: Path) -> dict[str, bytes | None]:
    """Every file's bytes and every folder (None) under `root`, by relative path."""
    return {
        str(p.relative_to(root)): (None if p.is_dir() else p.read_bytes()) for p in sorted(root.rglob("*"))
    }


def changes(before: dict[str, bytes | None], after: dict[str, bytes | None]) -> list[str]:
    return sorted(k for k in before.keys() | after.keys() if before.get(k, b"?") != after.get(k, b"?"))


# ----------------------------------------------------------------------------------------------------------------
# The cases: (id, argv with {ws} for the workspace, a word the error line must contain)

F = "{ws}/files"
CLS = ["finetune", "--task", "classification", "--model", "{ws}/run", "--train", f"{F}/cls_train.csv"]
FT_NEW = ["--output", "{ws}/new_ft", *ONE_THREAD]
PT_NEW = ["pretrain", *TINY, "--output", "{ws}/new_run"]

CASES: list[tuple[str, list[str], str]] = [
    # prepare
    ("prepare-empty-file", ["prepare", "--input", f"{F}/empty.txt", "--output", "{ws}/p"], "no text"),
    ("prepare-binary-file", ["prepare", "--input", f"{F}/binary.txt", "--output", "{ws}/p"], "not UTF-8"),
    ("prepare-not-utf8", ["prepare", "--input", f"{F}/latin1.txt", "--output", "{ws}/p"], "not UTF-8"),
    ("prepare-missing-input", ["prepare", "--input", f"{F}/nope.txt", "--output", "{ws}/p"], "does not exist"),
    ("prepare-empty-input-path", ["prepare", "--input", "", "--output", "{ws}/p"], "input path is empty"),
    ("prepare-invalid-jsonl", ["prepare", "--input", f"{F}/corpus_bad.jsonl", "--output", "{ws}/p"], "invalid JSON"),
    ("prepare-missing-column", ["prepare", "--input", f"{F}/corpus_body.csv", "--output", "{ws}/p"], "no column 'text'"),
    ("prepare-where-matches-nothing",
     ["prepare", "--input", f"{F}/cls_train.csv", "--output", "{ws}/p", "--data.where", "label=zulu"], "has --data.where"),
    ("prepare-csv-row-with-an-unquoted-comma",
     ["prepare", "--input", f"{F}/corpus_ragged.csv", "--output", "{ws}/p"], "has 3 fields, the header has 2"),
    ("prepare-json-not-an-array",
     ["prepare", "--input", f"{F}/corpus_object.json", "--output", "{ws}/p"], "must be an array"),
    ("prepare-where-on-plain-text",
     ["prepare", "--input", "{ws}/corpus", "--output", "{ws}/p", "--data.where", "source=x"], "plain text has no fields"),
    ("prepare-existing-output", ["prepare", "--input", "{ws}/corpus", "--output", "{ws}/data"], "already exists"),
    ("prepare-output-under-a-file", ["prepare", "--input", "{ws}/corpus", "--output", f"{F}/empty.txt/p"], "is a file"),
    ("prepare-overwrite-foreign-folder",
     ["prepare", "--input", "{ws}/corpus", "--output", "{ws}/precious", "--overwrite"], "not a prepared data folder"),
    ("prepare-seq-len-given-twice",
     ["prepare", "--input", "{ws}/corpus", "--output", "{ws}/p", "--seq-len", "32", "--data.seq_len", "64"],
     "--seq-len 32 and --data.seq_len 64"),
    ("prepare-vocab-size-with-tokenizer",
     ["prepare", "--input", "{ws}/corpus", "--output", "{ws}/p", "--tokenizer", "{ws}/data/tokenizer.json",
      "--vocab-size", "500"], "drop --vocab-size"),
    ("prepare-lowercase-with-tokenizer",
     ["prepare", "--input", "{ws}/corpus", "--output", "{ws}/p", "--tokenizer", "{ws}/data/tokenizer.json",
      "--data.lowercase", "false"], "drop --data.lowercase"),
    ("prepare-seq-len-too-small",
     ["prepare", "--input", "{ws}/corpus", "--output", "{ws}/p", "--seq-len", "2"], "seq_len"),
    ("prepare-unknown-config-key",
     ["prepare", "--input", "{ws}/corpus", "--output", "{ws}/p", "--data.colour", "red"], "unknown config key"),
    # pretrain
    ("pretrain-existing-output", ["pretrain", *TINY, "--data", "{ws}/data", "--output", "{ws}/run"], "already exists"),
    ("pretrain-overwrite-foreign-folder",
     ["pretrain", *TINY, "--data", "{ws}/data", "--output", "{ws}/precious", "--overwrite"], "not look like a masklm run"),
    ("pretrain-input-missing", ["pretrain", *TINY, "--input", "{ws}/nope.txt", "--output", "{ws}/new_run"],
     "does not exist"),
    ("pretrain-init-from-with-model-settings",
     ["pretrain", *TINY, "--data", "{ws}/data", "--init-from", "{ws}/run", "--output", "{ws}/new_run",
      "--model.hidden_size", "64"], "would be ignored"),
    ("pretrain-overwrite-own-init-from",
     ["pretrain", *TINY, "--data", "{ws}/data", "--init-from", "{ws}/run", "--output", "{ws}/run", "--overwrite"],
     "the --init-from itself"),
    ("pretrain-resume-without-run", [*PT_NEW, "--data", "{ws}/data", "--resume"], "does not exist"),
    ("pretrain-resume-without-data", ["pretrain", "--output", "{ws}/run", "--resume"], "--data"),
    ("pretrain-missing-data", [*PT_NEW, "--data", "{ws}/nope"], "nope"),
    ("pretrain-overwrite-with-bad-input",
     ["pretrain", *TINY, "--input", f"{F}/latin1.txt", "--output", "{ws}/run", "--overwrite"], "not UTF-8"),
    ("pretrain-overwrite-with-cut-shard",
     ["pretrain", *TINY, "--data", "{ws}/data_cut", "--output", "{ws}/run", "--overwrite"], "is cut short"),
    ("pretrain-data-with-other-tokenizer", [*PT_NEW, "--data", "{ws}/data_other_tok"], "is not the tokenizer"),
    ("pretrain-data-without-val-shards", [*PT_NEW, "--data", "{ws}/data_no_val"], "missing"),
    ("pretrain-empty-output", ["pretrain", *TINY, "--data", "{ws}/data", "--output", ""], "--output is empty"),
    ("pretrain-resume-and-overwrite",
     ["pretrain", *TINY, "--data", "{ws}/data", "--output", "{ws}/run", "--resume", "--overwrite"], "pass one of them"),
    ("pretrain-data-not-prepared", [*PT_NEW, "--data", "{ws}/corpus"], "meta.json"),
    ("pretrain-unknown-config-key", [*PT_NEW, "--data", "{ws}/data", "--train.speed", "9"], "unknown config key"),
    ("pretrain-zero-batch-size", [*PT_NEW, "--data", "{ws}/data", "--train.batch_size", "0"], "batch_size"),
    ("pretrain-negative-batch-size", [*PT_NEW, "--data", "{ws}/data", "--train.batch_size", "-4"], "batch_size"),
    ("pretrain-seq-len-above-model-max",
     [*PT_NEW, "--data", "{ws}/data", "--model.max_position_embeddings", "16"], "max_position_embeddings"),
    ("pretrain-resume-other-architecture",
     ["pretrain", *TINY, "--data", "{ws}/data", "--output", "{ws}/run", "--resume", "--model.hidden_size", "64"],
     "model.hidden_size"),
    ("pretrain-resume-other-tokenizer",
     ["pretrain", *TINY, "--data", "{ws}/other_data", "--output", "{ws}/run", "--resume"], "tokenizer"),
    ("pretrain-resume-foreign-folder",
     ["pretrain", *TINY, "--data", "{ws}/data", "--output", "{ws}/precious", "--resume"], "not a masklm run folder"),
    ("pretrain-resume-fine-tuning-run",
     ["pretrain", *TINY, "--data", "{ws}/data", "--output", "{ws}/ft", "--resume"], "masklm finetune"),
    ("pretrain-init-from-other-tokenizer",
     [*PT_NEW, "--data", "{ws}/other_data", "--init-from", "{ws}/run"], "different tokenizer"),
    ("pretrain-input-and-data", [*PT_NEW, "--data", "{ws}/data", "--input", "{ws}/corpus"], "--input and --data"),
    ("pretrain-prepare-flag-with-data", [*PT_NEW, "--data", "{ws}/data", "--seq-len", "16"], "--seq-len"),
    ("pretrain-data-setting-with-data",
     [*PT_NEW, "--data", "{ws}/data", "--data.lowercase", "false"], "--data.lowercase says how text is prepared"),
    ("pretrain-budget-given-twice",
     [*PT_NEW, "--data", "{ws}/data", "--max-steps", "3", "--train.max_steps", "5"], "set the same thing"),
    ("pretrain-vocab-size-with-init-from",
     ["pretrain", *TINY, "--input", "{ws}/corpus", "--init-from", "{ws}/run", "--vocab-size", "500", "--output",
      "{ws}/new_run"], "--init-from"),
    ("pretrain-rotary-odd-head-size",
     [*PT_NEW, "--data", "{ws}/data", "--model.position", "rotary", "--model.hidden_size", "36",
      "--model.num_attention_heads", "4"], "--model.position absolute"),
    ("pretrain-input-init-from-other-tokenizer",
     ["pretrain", *TINY, "--input", "{ws}/corpus", "--init-from", "{ws}/run", "--tokenizer",
      "{ws}/other_data/tokenizer.json", "--output", "{ws}/ft", "--overwrite"], "different tokenizer"),
    ("pretrain-init-from-corrupt-safetensors",
     [*PT_NEW, "--data", "{ws}/data", "--init-from", "{ws}/models/bad_st"], "safetensors"),
    # fill-mask
    ("fill-mask-no-mask", ["fill-mask", "{ws}/run", "alpha bravo charlie"], "[MASK]"),
    ("fill-mask-lowercase-mask", ["fill-mask", "{ws}/run", "alpha [mask] charlie"], "'[mask]' is not it"),
    ("fill-mask-missing-model", ["fill-mask", "{ws}/nope", "alpha [MASK]"], "does not exist"),
    ("fill-mask-non-masklm-folder", ["fill-mask", "{ws}/precious", "alpha [MASK]"], "config.json"),
    ("fill-mask-corrupt-safetensors", ["fill-mask", "{ws}/models/bad_st", "alpha [MASK]"], "safetensors"),
    ("fill-mask-pickle-as-safetensors", ["fill-mask", "{ws}/models/pickle_st", "alpha [MASK]"], "safetensors"),
    ("fill-mask-garbled-config", ["fill-mask", "{ws}/models/bad_config", "alpha [MASK]"], "not valid JSON"),
    ("fill-mask-second-text-no-mask", ["fill-mask", "{ws}/run", "alpha [MASK]", "alpha bravo"], "text 2"),
    ("fill-mask-impossible-config", ["fill-mask", "{ws}/models/bad_heads", "alpha [MASK]"], "invalid model section"),
    ("fill-mask-tokenizer-mismatch", ["fill-mask", "{ws}/models/wrong_tok", "alpha [MASK]"], "tokenizer"),
    ("fill-mask-weights-of-other-shape", ["fill-mask", "{ws}/models/wrong_shape", "alpha [MASK]"], "do not fit"),
    ("fill-mask-text-above-model-max", ["fill-mask", "{ws}/run", " ".join(["alpha"] * 300) + " [MASK]"], "limit"),
    ("fill-mask-top-k-zero", ["fill-mask", "{ws}/run", "alpha [MASK]", "--top-k", "0"], "--top-k"),
    ("fill-mask-unknown-dtype", ["fill-mask", "{ws}/run", "alpha [MASK]", "--dtype", "half"], "--dtype"),
    ("fill-mask-nan-weights", ["fill-mask", "{ws}/models/nan_weights", "alpha [MASK]"], "NaN or infinite"),
    ("fill-mask-onnx-export-folder", ["fill-mask", "{ws}/onnx", "alpha [MASK]"], "is an ONNX export"),
    ("fill-mask-classifier", ["fill-mask", "{ws}/ft", "alpha [MASK]"], "masked-LM head"),
    # export
    ("export-existing-output", ["export", "{ws}/run", "{ws}/data"], "already exists"),
    ("export-missing-model", ["export", "{ws}/nope", "{ws}/hf"], "does not exist"),
    ("export-corrupt-safetensors", ["export", "{ws}/models/bad_st", "{ws}/hf"], "safetensors"),
    ("export-garbled-config", ["export", "{ws}/models/bad_config", "{ws}/hf"], "not valid JSON"),
    ("export-overwrite-foreign-folder", ["export", "{ws}/run", "{ws}/precious", "--overwrite"], "not look like an export"),
    ("export-overwrite-model-folder", ["export", "{ws}/run", "{ws}/ft/model", "--overwrite"], "masklm model folder"),
    ("export-output-where-no-folder-can-be-made", ["export", "{ws}/run", "/proc/masklm-export"], "cannot make a folder"),
    ("export-output-under-a-file", ["export", "{ws}/run", f"{F}/empty.txt/hf"], "is a file"),
    # finetune
    ("finetune-output-under-a-file",
     [*CLS, "--validation", f"{F}/cls_train.csv", "--output", f"{F}/empty.txt/ft", *ONE_THREAD], "is a file"),
    ("finetune-missing-column", [*CLS, "--validation", f"{F}/body_only.csv", *FT_NEW], "no column 'text'"),
    ("finetune-unknown-label", [*CLS, "--validation", f"{F}/cls_unseen_label.csv", *FT_NEW], "zulu"),
    ("finetune-invalid-jsonl", [*CLS, "--validation", f"{F}/cls_bad.jsonl", *FT_NEW], "not valid JSON"),
    ("finetune-binary-file", [*CLS, "--validation", f"{F}/binary.csv", *FT_NEW], "not UTF-8"),
    ("finetune-empty-file", [*CLS, "--validation", f"{F}/empty.csv", *FT_NEW], "empty"),
    ("finetune-missing-file", [*CLS, "--validation", f"{F}/nope.csv", *FT_NEW], "not found"),
    ("finetune-conll-inconsistent-line",
     ["finetune", "--task", "token-classification", "--model", "{ws}/run", "--train", f"{F}/ner_train.txt",
      "--validation", f"{F}/ner_bad.txt", *FT_NEW], "fields"),
    ("finetune-squad-offset-mismatch",
     ["finetune", "--task", "qa", "--model", "{ws}/run", "--train", f"{F}/qa_bad_offset.jsonl",
      "--validation", f"{F}/qa_val.jsonl", *FT_NEW], "answer_start"),
    ("finetune-squad-empty",
     ["finetune", "--task", "qa", "--model", "{ws}/run", "--train", f"{F}/qa_train.jsonl",
      "--validation", f"{F}/qa_empty.json", *FT_NEW], "no questions"),
    ("finetune-existing-output", [*CLS, "--validation", f"{F}/cls_val.csv", "--output", "{ws}/ft"], "already exists"),
    ("finetune-overwrite-foreign-folder",
     [*CLS, "--validation", f"{F}/cls_val.csv", "--output", "{ws}/precious", "--overwrite"], "not look like a masklm run"),
    ("finetune-overwrite-own-model",
     [*CLS, "--validation", f"{F}/cls_val.csv", "--output", "{ws}/run", "--overwrite"], "the --model itself"),
    ("finetune-overwrite-folder-holding-model",
     ["finetune", "--task", "classification", "--model", "{ws}/ft/model", "--train", f"{F}/cls_train.csv",
      "--validation", f"{F}/cls_val.csv", "--output", "{ws}/ft", "--overwrite"], "which holds --model"),
    ("finetune-resume-without-run", [*CLS, "--validation", f"{F}/cls_val.csv", *FT_NEW, "--resume"], "does not exist"),
    ("finetune-resume-other-model",
     ["finetune", "--output", "{ws}/ft", "--resume", "--model", "{ws}/models/wrong_shape"], "--model"),
    ("finetune-resume-foreign-folder",
     [*CLS, "--validation", f"{F}/cls_val.csv", "--output", "{ws}/precious", "--resume", *ONE_THREAD],
     "not a masklm run folder"),
    ("finetune-resume-pretraining-run", ["finetune", "--output", "{ws}/run", "--resume"], "masklm pretrain"),
    ("finetune-zero-batch-size",
     [*CLS, "--validation", f"{F}/cls_val.csv", *FT_NEW, "--train.batch_size", "0"], "batch_size"),
    ("finetune-max-length-above-model-max",
     [*CLS, "--validation", f"{F}/cls_val.csv", *FT_NEW, "--data.max_length", "1000"], "max_position_embeddings"),
    ("finetune-unknown-config-key",
     [*CLS, "--validation", f"{F}/cls_val.csv", *FT_NEW, "--data.colour", "red"], "unknown config key"),
    ("finetune-corrupt-model",
     ["finetune", "--task", "classification", "--model", "{ws}/models/bad_st", "--train", f"{F}/cls_train.csv",
      "--validation", f"{F}/cls_val.csv", *FT_NEW], "safetensors"),
    # evaluate
    ("evaluate-not-fine-tuned", ["evaluate", "--model", "{ws}/run", "--data", f"{F}/cls_val.csv"], "not a fine-tuned"),
    ("evaluate-unknown-label", ["evaluate", "--model", "{ws}/ft", "--data", f"{F}/cls_unseen_label.csv"], "zulu"),
    ("evaluate-no-label-column", ["evaluate", "--model", "{ws}/ft", "--data", f"{F}/no_label.csv"], "no label column"),
    ("evaluate-not-utf8", ["evaluate", "--model", "{ws}/ft", "--data", f"{F}/latin1.csv"], "not UTF-8"),
    ("evaluate-missing-file", ["evaluate", "--model", "{ws}/ft", "--data", f"{F}/nope.csv"], "not found"),
    ("evaluate-regression-of-a-classifier",
     ["evaluate", "--model", "{ws}/ft", "--data", f"{F}/cls_val.csv", "--data.regression", "true"],
     "cannot change after fine-tuning"),
    ("predict-output-in-model-folder",
     ["predict", "--model", "{ws}/ft", "--data", f"{F}/no_label.csv", "--output", "{ws}/ft/model/config.json",
      "--overwrite"], "lies inside the model folder"),
    ("predict-missing-device",
     ["predict", "--model", "{ws}/ft", "--data", f"{F}/no_label.csv", "--output", "{ws}/p.jsonl",
      "--train.device", "cuda:9"], "train.device cuda:9: this machine has"),
    # predict
    ("predict-existing-output",
     ["predict", "--model", "{ws}/ft", "--data", f"{F}/no_label.csv", "--output", f"{F}/predictions.jsonl"],
     "already exists"),
    ("finetune-compressed-file",
     ["finetune", "--task", "token-classification", "--model", "{ws}/run", "--train", f"{F}/ner_train.txt.gz",
      "--validation", f"{F}/ner_val.txt", *FT_NEW], "decompress it first"),
    ("finetune-label-written-nan", [*CLS, "--validation", f"{F}/cls_nan.csv", *FT_NEW], "has no label"),
    ("finetune-files-joined-with-their-headers",
     [*CLS, "--validation", f"{F}/cls_joined.csv", *FT_NEW], "repeats the header"),
    ("finetune-semicolon-separated-csv",
     [*CLS, "--validation", f"{F}/cls_semicolon.csv", *FT_NEW], "semicolon-separated"),
    ("finetune-csv-quote-left-open",
     [*CLS, "--validation", f"{F}/cls_open_quote.csv", *FT_NEW], "quoted field opened on this line"),
    ("finetune-jsonl-field-given-twice", [*CLS, "--validation", f"{F}/cls_twice.jsonl", *FT_NEW], "twice"),
    ("finetune-overwrite-with-score-too-large",
     ["finetune", "--task", "classification", "--model", "{ws}/run", "--train", f"{F}/scores.csv",
      "--validation", f"{F}/scores_huge.csv", "--data.regression", "true", "--output", "{ws}/ft", "--overwrite",
      *ONE_THREAD], "too large to train on"),
    ("finetune-file-without-a-header-row",
     [*CLS[:-1], f"{F}/cls_headerless.csv", "--validation", f"{F}/cls_val.csv", *FT_NEW], "no header row"),
    ("predict-output-under-a-file",
     ["predict", "--model", "{ws}/ft", "--data", f"{F}/no_label.csv", "--output", f"{F}/empty.txt/p.jsonl"],
     "is a file"),
    ("predict-missing-column",
     ["predict", "--model", "{ws}/ft", "--data", f"{F}/body_only.csv", "--output", "{ws}/p.jsonl"], "no column 'text'"),
    ("predict-invalid-jsonl",
     ["predict", "--model", "{ws}/ft", "--data", f"{F}/cls_bad.jsonl", "--output", "{ws}/p.jsonl"], "not valid JSON"),
    ("predict-unsupported-output",
     ["predict", "--model", "{ws}/ft", "--data", f"{F}/no_label.csv", "--output", "{ws}/p.xml"], ".xml"),
    ("predict-garbled-model-config",
     ["predict", "--model", "{ws}/models/bad_config", "--data", f"{F}/no_label.csv", "--output", "{ws}/p.jsonl"],
     "not valid JSON"),
]  # fmt: skip


def documented_messages() -> dict[str, str]:
    """docs/failures.md's message column by case id, its Markdown code quotes dropped."""
    rows = re.findall(r"^\| `([a-z0-9-]+)` \| .*? \| (.*?) \| .*\|$", DOCS.read_text(encoding="utf-8"), re.M)
    return {case_id: message.replace("`", "") for case_id, message in rows}


@pytest.mark.parametrize("case_id, argv, keyword", CASES, ids=[c[0] for c in CASES])
def test_bad_input(ws, case_id, argv, keyword, capsys, monkeypatch):
    before = snapshot(ws)
    monkeypatch.chdir(ws)  # anything written to the current folder would show up in the snapshot too
    capsys.readouterr()
    rc = cli(*(a.replace("{ws}", str(ws)) for a in argv))
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert rc == 2, err
    assert lines and lines[-1].startswith("error: "), err
    assert err.count("error:") == 1 and "Traceback" not in err, err
    assert keyword.lower() in lines[-1].lower(), (keyword, lines[-1])
    assert not changes(before, snapshot(ws))
    # the docs show the message as it is (paths relative to the workspace; "…" or "..." stands for what varies)
    shown = lines[-1].removeprefix("error: ").replace(f"{ws}/", "")
    documented = documented_messages().get(case_id, "")
    assert all(part.strip() in shown for part in re.split(r"…|\.\.\.", documented)), (documented, shown)


def test_docs_list_every_case():
    text = DOCS.read_text(encoding="utf-8")
    missing = [case_id for case_id, _, _ in CASES if f"`{case_id}`" not in text]
    assert not missing, f"docs/failures.md lacks {missing}"


def test_prepare_takes_a_huge_line(ws, tmp_path):
    """A 5 MB single line (one document) is fine for prepare: it is packed into many sequences."""
    huge = tmp_path / "huge.txt"
    rng = random.Random(0)
    words = [rng.choice(WALK_WORDS) for _ in range(5 * 1024 * 1024 // 6)]
    huge.write_text(" ".join(words))
    assert huge.stat().st_size > 5_000_000
    ok("prepare", "--input", huge, "--output", tmp_path / "data", "--tokenizer", ws / "data" / "tokenizer.json",
       "--seq-len", "128")  # fmt: skip
    meta = json.loads((tmp_path / "data" / "meta.json").read_text())
    assert meta["documents"] == 1
    assert meta["splits"]["train"]["sequences"] + meta["splits"]["val"]["sequences"] > 5_000_000 // 6 // 128
