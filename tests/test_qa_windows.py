"""QA end to end on multi-window contexts: masklm's evaluation path against transformers on the SAME model.

test_qa_parity.py compares masklm's windows, labels and post-processing with transformers' run_qa example on the
same logits. Here the logits come from a model: one small BertForQuestionAnswering (MiniLM's vocabulary and
tokenizer, random weights) saved as a Hugging Face folder. masklm loads it and answers through its own path
(load_finetuned → the task's windows → run_model's length-sorted, padded batches → Task.decode / Task.answers
→ predict's file); transformers answers with the fast tokenizer's overflowing windows, the same model on
dynamically padded batches in file order, and utils_qa's post-processing (test_qa_parity.run_qa_postprocess).
Any difference in how windows are cut, batched, padded, put back in order, cut to their length or combined
shows as a different answer. The post-processing of benchmarks/qa_vs_hf.py (the transformers side of the QA
benchmark) is checked against the same reference.
"""

from __future__ import annotations

import json
import random
import shutil

import numpy as np
import pytest
import torch
from helpers import minilm_dir, write_jsonl
from test_qa_parity import run_qa_postprocess
from tokenizers import Tokenizer

from masklm.finetune import load_finetuned, predict, run_model
from masklm.tasks.qa import encode_qa

transformers = pytest.importorskip("transformers")

MAX_LENGTH, STRIDE = 96, 24
_WORDS = (
    "the film river city of Denver's 1,234 unbelievably café naïve résumé Mr. (Panthers) quarterback Super Bowl "
    "50 in 2016 was a long and strange journey, which nobody expected; e-mail data-driven co-operation 3.14 km²"
).split()


@pytest.fixture(scope="module")
def qa_model(tmp_path_factory):
    """A 2-layer BertForQuestionAnswering on MiniLM's vocabulary, saved with MiniLM's tokenizer files. Its QA
    layer is scaled up so that logits are spread (no near-ties that float rounding could flip)."""
    folder = tmp_path_factory.mktemp("qa-model")
    config = transformers.BertConfig(
        vocab_size=30522,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=128,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
    )
    torch.manual_seed(0)
    model = transformers.BertForQuestionAnswering(config).eval()
    with torch.no_grad():
        model.qa_outputs.weight.mul_(50)
    model.save_pretrained(folder)
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt"):
        shutil.copy(minilm_dir() / name, folder / name)
    return folder, model


def _examples(n: int, seed: int) -> list[dict]:
    """`n` questions on contexts of 80 to 260 words (2 to 9 windows at MAX_LENGTH / STRIDE)."""
    rng = random.Random(seed)
    out = []
    for k in range(n):
        words = [rng.choice(_WORDS) for _ in range(rng.randint(80, 260))]
        context = " ".join(words)
        start = context.index(words[5])
        out.append(
            {
                "id": f"q{k}",
                "question": " ".join(rng.choice(_WORDS) for _ in range(rng.choice([2, 5, 11]))) + "?",
                "context": context,
                "answers": {"text": [words[5]], "answer_start": [start]},
            }
        )
    return out


def _transformers_answers(model, examples: list[dict], batch_size: int):
    """transformers' side: overflowing windows, the model on padded batches in order, logits cut to each
    window's length (as the Trainer's -100 padding leaves them), utils_qa's post-processing."""
    from benchmarks.qa_vs_hf import hf_windows, reference_answers

    tok = transformers.AutoTokenizer.from_pretrained(str(minilm_dir()))
    windows = hf_windows(tok, examples, MAX_LENGTH, STRIDE, labelled=False)
    collator = transformers.DataCollatorWithPadding(tok)
    starts, ends = [], []
    for first in range(0, len(windows), batch_size):
        chunk = windows[first : first + batch_size]
        keys = ("input_ids", "token_type_ids", "attention_mask")
        batch = collator([{k: w[k] for k in keys} for w in chunk])
        with torch.no_grad():
            out = model(**batch)
        for row, w in enumerate(chunk):
            starts.append(out.start_logits[row, : len(w["input_ids"])].double().numpy())
            ends.append(out.end_logits[row, : len(w["input_ids"])].double().numpy())
    reference = run_qa_postprocess(examples, windows, starts, ends)
    assert reference_answers(examples, windows, starts, ends) == {q: t for q, (t, _) in reference.items()}
    return windows, reference


def test_answers_equal_transformers_on_the_same_model(qa_model, tmp_path):
    """Every question's answer equals transformers' (v1.1, n_best 20, max answer length 30), through masklm's
    predict file and through Task.answers, with batches of 5 windows sorted by length; masklm reads every
    window (as many as the fast tokenizer makes), and the answers come from windows all over the contexts."""
    folder, model = qa_model
    examples = _examples(12, seed=0)
    path = write_jsonl(tmp_path / "questions.jsonl", examples)
    settings = {
        "data.max_length": MAX_LENGTH,
        "data.doc_stride": STRIDE,
        "train.precision": "fp32",
        "train.eval_batch_size": 5,
    }
    windows, reference = _transformers_answers(model, examples, batch_size=7)
    assert not any(placeholder for _, placeholder in reference.values())

    out = tmp_path / "answers.jsonl"
    assert predict(folder, path, out, settings) == len(examples)
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert {r["id"]: r["answer"] for r in rows} == {q: text for q, (text, _) in reference.items()}

    fm = load_finetuned(folder, settings)
    data = fm.task.load(path, fm.tokenizer, fm.cfg.data, fm.labels, labelled=False)
    assert len(data.features) == len(windows) > 4 * len(examples)
    outputs, _ = run_model(fm.model, fm.task, data, fm.cfg.data, 5, fm.pad_id, fm.device)
    found = fm.task.answers(data, outputs, fm.labels, fm.cfg.data)
    assert [a["answer"] for a in found] == [reference[ex["id"]][0] for ex in examples]
    for ex, a in zip(examples, found):
        assert ex["context"][a["start"] : a["end"]] == a["answer"]
    # which window each answer lies in: not only the first
    first_window_end = [max(o[1] for o in f["offsets"] if o) for f in data.features]
    firsts = {}
    for f, feature in enumerate(data.features):
        firsts.setdefault(feature["example_index"], first_window_end[f])
    beyond = sum(a["start"] >= firsts[i] for i, a in enumerate(found))
    assert beyond > len(examples) // 3


def test_masklm_logits_equal_transformers_per_window(qa_model, tmp_path):
    """The per-window logits masklm decodes are the model's own for that window: equal (to float tolerance) to
    transformers' on the same window, whatever batch and padding run_model put it in."""
    folder, model = qa_model
    examples = _examples(5, seed=1)
    path = write_jsonl(tmp_path / "questions.jsonl", examples)
    fm = load_finetuned(folder, {"data.max_length": MAX_LENGTH, "data.doc_stride": STRIDE})
    data = fm.task.load(path, fm.tokenizer, fm.cfg.data, fm.labels, labelled=False)
    outputs, _ = run_model(fm.model, fm.task, data, fm.cfg.data, 4, fm.pad_id, fm.device)
    assert [len(o) for o in outputs] == [len(f["input_ids"]) for f in data.features]
    for feature, output in zip(data.features, outputs):
        ids = torch.tensor([feature["input_ids"]])
        with torch.no_grad():
            theirs = model(input_ids=ids, token_type_ids=torch.tensor([feature["token_type_ids"]]))
        np.testing.assert_allclose(output[:, 0].numpy(), theirs.start_logits[0].numpy(), atol=1e-4, rtol=1e-4)
        np.testing.assert_allclose(output[:, 1].numpy(), theirs.end_logits[0].numpy(), atol=1e-4, rtol=1e-4)


def test_windows_without_the_answer_train_on_cls(tmp_path):
    """Training features of a multi-window context: the window(s) that hold the whole answer point at it, every
    other window at [CLS] (0, 0), as transformers' run_qa labels them; the benchmark's transformers side agrees."""
    from benchmarks.qa_vs_hf import hf_windows

    tok = transformers.AutoTokenizer.from_pretrained(str(minilm_dir()))
    ours_tok = Tokenizer.from_file(str(minilm_dir() / "tokenizer.json"))
    ours_tok.no_padding()
    ours_tok.no_truncation()
    rng = random.Random(5)
    cls_windows = answer_windows = 0
    for _ in range(20):
        words = [rng.choice(_WORDS) for _ in range(200)]
        first = rng.randrange(len(words) - 3)
        answer = " ".join(words[first : first + 2])
        start = len(" ".join(words[:first])) + (1 if first else 0)
        ex = {
            "id": "q",
            "question": "which words ?",
            "context": " ".join(words),
            "answers": {"text": [answer], "answer_start": [start]},
            "is_impossible": False,
        }
        ours = encode_qa(ours_tok, [ex], MAX_LENGTH, STRIDE)
        theirs = hf_windows(tok, [ex], MAX_LENGTH, STRIDE, labelled=True)
        assert [(f["start_positions"], f["end_positions"]) for f in ours] == [
            (w["start_positions"], w["end_positions"]) for w in theirs
        ]
        for f in ours:
            if f["start_positions"] == 0:
                cls_windows += 1
                spans = [o for o in f["offsets"] if o]
                assert not (spans[0][0] <= start and start + len(answer) <= spans[-1][1])
            else:
                answer_windows += 1
                o = f["offsets"]
                assert ex["context"][o[f["start_positions"]][0] : o[f["end_positions"]][1]] == answer
    assert cls_windows > 2 * answer_windows > 20


def test_benchmark_questions_quote_a_unique_cue():
    """benchmarks/qa_vs_hf.py's questions: the cue occurs once in the context, the answer is at its
    answer_start right after the cue, 1 to 6 words ending at a punctuation mark; a repeated cue is never asked."""
    from benchmarks.qa_vs_hf import MAX_ANSWER_WORDS, make_example

    context = (
        "The plot moves slowly, but the acting is superb. I liked the acting is superb too. "
        "Nobody expected the ending to be so bleak and cold; still, the music by Hans carries it. "
        "What a strange little film this is!"
    )
    seen = set()
    for seed in range(40):
        ex = make_example("q", context, random.Random(seed))
        cue = ex["question"].split('"')[1]
        answer, start = ex["answers"]["text"][0], ex["answers"]["answer_start"][0]
        assert context.lower().count(cue.lower()) == 1
        assert context[start : start + len(answer)] == answer
        assert context[:start].rstrip().endswith(cue)
        assert 1 <= len(answer.split()) <= MAX_ANSWER_WORDS and context[start + len(answer)] in ",.;:!?"
        assert "the acting is superb" not in cue.lower()
        seen.add(answer)
    assert len(seen) > 3


def test_benchmark_qa_task_joins_finetune_vs_hf_with_f1_beside_exact_match(tmp_path):
    """benchmarks/qa_vs_hf.py registers its set as finetune_vs_hf's "qa" task; the report compares exact match
    and shows F1 (with its difference to transformers) beside it; the splits are written as SQuAD .jsonl."""
    import benchmarks.finetune_vs_hf as fv
    from benchmarks.common import read_jsonl
    from benchmarks.qa_vs_hf import _write_splits

    fv.register_optional_tasks()
    spec = fv.TASKS["qa"]
    assert (spec.masklm_task, spec.metric, spec.also, spec.scale) == ("qa", "exact_match", ("f1",), 1.0)
    assert spec.extra["data.doc_stride"] == 64 and spec.settings["max_length"] == 192
    run = {"task": "qa", "sizes": [4, 2, 2], "cpu_s": 1.0, "val": 50.0}
    records = [
        {**run, "seed": 0, "side": "transformers", "wall_s": 10.0, "test": {"exact_match": 40.0, "f1": 60.0}},
        {**run, "seed": 1, "side": "transformers", "wall_s": 12.0, "test": {"exact_match": 44.0, "f1": 62.0}},
        {
            **run,
            "seed": 0,
            "side": "masklm default",
            "wall_s": 5.0,
            "test": {"exact_match": 45.0, "f1": 61.0},
        },
        {
            **run,
            "seed": 1,
            "side": "masklm default",
            "wall_s": 6.0,
            "test": {"exact_match": 43.0, "f1": 65.0},
        },
    ]
    table = fv.report(records, fv.parse_args(["--tasks", "qa", "--seeds", "0", "1"]), "cmd")
    masklm_row = next(line for line in table.splitlines() if "| masklm default | 44.00 ± 1.41 |" in line)
    assert (
        "| +2.00 | +2.00 ± 3.00; 1/2 | f1 63.00 ± 2.83 (+2.00) |" in masklm_row and "| 0.50 |" in masklm_row
    )
    assert "| qa | 1 | masklm default | 43.00 | f1 65.00 |" in table
    assert "shared with other work" not in table  # only when --shared says so
    shared = fv.report(records, fv.parse_args(["--tasks", "qa", "--seeds", "0", "--shared"]), "cmd")
    assert "**shared with other work while measured: expect noise**" in shared
    example = {
        "id": "q",
        "question": "Q?",
        "context": "a b.",
        "answers": {"text": ["b"], "answer_start": [2]},
    }
    files = _write_splits(tmp_path, ([example], [example], []))
    assert read_jsonl(files["train"]) == [example] and files["test"].read_text() == ""
