"""export_model: Hugging Face folders that transformers loads cleanly, ONNX checked in ONNX Runtime, model cards."""

from __future__ import annotations

import json
import logging
import os
import shutil
from pathlib import Path

import pytest
import torch
import yaml

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from helpers import random_inputs, tiny_model_config  # noqa: E402

from masklm import export as export_mod  # noqa: E402
from masklm.data.tokenizer import train_tokenizer  # noqa: E402
from masklm.errors import UserError  # noqa: E402
from masklm.export import export_model  # noqa: E402
from masklm.infer.fill_mask import FillMask  # noqa: E402
from masklm.model.heads import (  # noqa: E402
    MaskedLM,
    QuestionAnswering,
    SequenceClassification,
    TokenClassification,
)
from masklm.model.io import ModelInfo, save_model  # noqa: E402
from masklm.tasks.multiple_choice import MultipleChoice  # noqa: E402

CORPUS = [
    "the cat sat on the mat . the dog ran after the cat !",
    "Café au lait, crème brûlée and a naïve résumé .",
    "東京 and 北京 are big cities ; 中文 text splits per character",
    "bread , cheese and apples make a good lunch",
    "antidisestablishmentarianism is a very long word",
] * 8
TRICKY = [
    "",
    "Café CRÈME brûlée — naïve résumé!",
    "東京タワーと北京, 中文字符",
    "Hello,world!!(really?) [MASK] don't",
    "x" * 150,  # longer than WordPiece's 100 characters: one [UNK]
    "antidisestablishmentarianismantidisestablishmentarianism",
    "tabs\tand\nnewlines  and\u00a0nbsp \u200b zero-width",
    "emoji 🙂 and control \x07 chars",
]


@pytest.fixture(scope="module")
def tok():
    return train_tokenizer(CORPUS, vocab_size=120)


def make_folder(path: Path, tok, architecture: str = "MaskedLM", seed: int = 0, **cfg_kw: object) -> Path:
    cfg = tiny_model_config(tok.get_vocab_size(), **cfg_kw)
    torch.manual_seed(seed)
    labels = None
    if architecture == "MaskedLM":
        model = MaskedLM(cfg)
        with torch.no_grad():
            model.decoder_bias[: cfg.vocab_size].normal_()
    elif architecture in ("SequenceClassification", "TokenClassification"):
        labels = ["neg", "pos", "mixed"]
        head = SequenceClassification if architecture == "SequenceClassification" else TokenClassification
        model = head(cfg, len(labels))
    else:
        model = QuestionAnswering(cfg)
    with torch.no_grad():  # LayerNorms away from 1/0 so that every weight matters
        for name, p in model.named_parameters():
            if "norm" in name:
                p.add_(torch.randn_like(p) * 0.2)
    return save_model(model, path, tok, ModelInfo(architecture=architecture, labels=labels))


def padded_batch(vocab_size: int) -> dict[str, torch.Tensor]:
    return random_inputs(vocab_size, lengths=(12, 8, 4), second_segment=6, seed=7)


class _Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


@pytest.fixture(scope="module")
def hf_export(tmp_path_factory: pytest.TempPathFactory, tok) -> tuple[Path, Path]:
    base = tmp_path_factory.mktemp("hf")
    model_dir = make_folder(base / "model", tok)
    return model_dir, export_model(model_dir, base / "out", "hf")


# ----------------------------------------------------------------------------------------------------------------
# Hugging Face format


def test_hf_export_loads_in_transformers_without_warnings(hf_export: tuple[Path, Path]) -> None:
    transformers = pytest.importorskip("transformers")
    from masklm.model.io import load_model

    model_dir, out = hf_export
    names = {p.name for p in out.iterdir()}
    assert names == {
        "config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json",
        "special_tokens_map.json", "vocab.txt", "README.md",
    }  # fmt: skip
    assert not [p for p in out.parent.iterdir() if p.name.startswith(".")]  # no temporary folders left
    config = json.loads((out / "config.json").read_text())
    assert config["architectures"] == ["BertForMaskedLM"] and config["model_type"] == "bert"

    records = _Records()
    hf_logger = logging.getLogger("transformers")
    hf_logger.addHandler(records)
    try:
        hf, info = transformers.AutoModelForMaskedLM.from_pretrained(str(out), output_loading_info=True)
    finally:
        hf_logger.removeHandler(records)
    assert info == {
        "missing_keys": set(),
        "unexpected_keys": set(),
        "mismatched_keys": set(),
        "error_msgs": [],
    }
    noisy = [
        m
        for m in records.messages
        if any(w in m.lower() for w in ("missing", "unexpected", "newly", "not used"))
    ]
    assert noisy == []
    assert type(hf).__name__ == "BertForMaskedLM"

    model, _, _ = load_model(model_dir)
    model.eval()
    hf.eval()
    b = padded_batch(model.cfg.vocab_size)
    with torch.no_grad():
        ours = model(**b)
        hidden = model.encoder(**b)
        theirs = hf(**b, output_hidden_states=True)
    assert (ours - theirs.logits).abs().max().item() < 1e-5
    assert (hidden - theirs.hidden_states[-1]).abs().max().item() < 1e-5


def test_hf_export_tokenizer_gives_identical_ids(hf_export: tuple[Path, Path], tok) -> None:
    transformers = pytest.importorskip("transformers")
    _, out = hf_export
    hf_tok = transformers.AutoTokenizer.from_pretrained(str(out))
    for text in TRICKY:
        assert hf_tok(text)["input_ids"] == tok.encode(text).ids, text
    pair = hf_tok("Café crème", "東京 tower")
    ours = tok.encode("Café crème", "東京 tower")
    assert pair["input_ids"] == ours.ids and pair["token_type_ids"] == ours.type_ids
    assert hf_tok.mask_token == "[MASK]" and hf_tok.model_max_length == 64


def test_cased_tokenizer_exports_identically(tmp_path: Path) -> None:
    transformers = pytest.importorskip("transformers")
    cased = train_tokenizer(CORPUS, vocab_size=120, lowercase=False)
    out = export_model(make_folder(tmp_path / "m", cased), tmp_path / "out", "hf")
    assert json.loads((out / "tokenizer_config.json").read_text())["do_lower_case"] is False
    hf_tok = transformers.AutoTokenizer.from_pretrained(str(out))
    for text in TRICKY:
        assert hf_tok(text)["input_ids"] == cased.encode(text).ids, text


def test_fill_mask_pipeline_matches_masklm(hf_export: tuple[Path, Path]) -> None:
    transformers = pytest.importorskip("transformers")
    model_dir, out = hf_export
    fill = transformers.pipeline("fill-mask", model=str(out), tokenizer=str(out), device="cpu")
    ours = FillMask.load(model_dir, dtype="float32")
    for text in ("the cat sat on the [MASK] .", "bread , [MASK] and apples"):
        # (the pipeline ranks special tokens too; masklm leaves them out)
        theirs = [c for c in fill(text, top_k=20) if c["token"] not in ours.special_ids.tolist()][:5]
        mine = ours(text, top_k=5)[0]
        assert [c["token"] for c in theirs] == [c["token_id"] for c in mine]
        assert [c["score"] for c in theirs] == pytest.approx([c["score"] for c in mine], abs=1e-5)


def test_classification_export_runs_in_transformers(tmp_path: Path, tok) -> None:
    transformers = pytest.importorskip("transformers")
    from masklm.model.io import load_model

    model_dir = make_folder(tmp_path / "cls", tok, "SequenceClassification", seed=3)
    out = export_model(model_dir, tmp_path / "out", "hf")
    hf = transformers.AutoModelForSequenceClassification.from_pretrained(str(out)).eval()
    assert hf.config.id2label == {0: "neg", 1: "pos", 2: "mixed"}
    model, _, _ = load_model(model_dir)
    b = padded_batch(model.cfg.vocab_size)
    with torch.no_grad():
        assert (model.eval()(**b) - hf(**b).logits).abs().max().item() < 1e-5
    assert "text-classification" in (out / "README.md").read_text()


def test_regression_export_runs_in_transformers(tmp_path: Path, tok) -> None:
    """A one-output classifier without labels (fine-tuned with data.regression) is written with num_labels 1 and
    problem_type regression: transformers builds one output (not its default two), the check passes, and
    masklm reads the folder back as a regression model with the same scores."""
    transformers = pytest.importorskip("transformers")
    from masklm.finetune import load_finetuned

    cfg = tiny_model_config(tok.get_vocab_size())
    torch.manual_seed(4)
    info = ModelInfo("SequenceClassification", labels=None, task={"name": "classification"})
    model_dir = save_model(SequenceClassification(cfg, 1), tmp_path / "reg", tok, info)
    out = export_model(model_dir, tmp_path / "out", "hf")  # the check (masklm and transformers) runs
    config = json.loads((out / "config.json").read_text())
    assert config["num_labels"] == 1 and config["problem_type"] == "regression"
    hf = transformers.AutoModelForSequenceClassification.from_pretrained(str(out)).eval()
    assert hf.config.num_labels == 1 and hf.config.problem_type == "regression"
    ours = load_finetuned(model_dir)
    again = load_finetuned(out)
    assert ours.cfg.data.regression and again.cfg.data.regression
    b = padded_batch(cfg.vocab_size)
    with torch.no_grad():
        want = ours.model(**b)
        assert want.shape == (3, 1)
        assert (want - hf(**b).logits).abs().max().item() < 1e-5
        assert (want - again.model(**b)).abs().max().item() < 1e-5

    # a one-output classifier with a label name (how a Hugging Face regressor is read: id2label {0: LABEL_0})
    named = ModelInfo("SequenceClassification", labels=["LABEL_0"], task={"name": "classification"})
    named_dir = save_model(SequenceClassification(cfg, 1), tmp_path / "named", tok, named)
    config = json.loads((export_model(named_dir, tmp_path / "out2", "hf") / "config.json").read_text())
    assert config["problem_type"] == "regression" and config["id2label"] == {"0": "LABEL_0"}


def test_refusals(tmp_path: Path, tok, hf_export: tuple[Path, Path]) -> None:
    modern = make_folder(tmp_path / "modern", tok, norm="pre", ffn="geglu")
    with pytest.raises(UserError, match=r"model\.norm=pre, model\.ffn=geglu"):
        export_model(modern, tmp_path / "out", "hf")
    assert not (tmp_path / "out").exists()

    model_dir, out = hf_export
    before = (out / "model.safetensors").stat().st_mtime_ns
    with pytest.raises(UserError, match="already exists"):
        export_model(model_dir, out, "hf")
    assert (out / "model.safetensors").stat().st_mtime_ns == before

    with pytest.raises(UserError, match="unknown export format"):
        export_model(model_dir, tmp_path / "x", "tflite")
    with pytest.raises(UserError, match="holds the model"):
        export_model(model_dir, model_dir.parent, "hf", overwrite=True)

    again = export_model(model_dir, tmp_path / "again", "hf")
    (again / "stale.txt").write_text("old")
    export_model(model_dir, again, "hf", overwrite=True, check=False)
    assert not (again / "stale.txt").exists() and (again / "model.safetensors").is_file()

    # a Hugging Face folder of the user's (a config.json, no masklm model card) is not an export to replace
    theirs = tmp_path / "theirs"
    shutil.copytree(again, theirs)
    (theirs / "README.md").write_text("# my sentence-transformers model\n")
    (theirs / "modules.json").write_text("[]")
    with pytest.raises(UserError, match="does not look like an export of masklm"):
        export_model(model_dir, theirs, "hf", overwrite=True, check=False)
    assert (theirs / "modules.json").read_text() == "[]"


def test_broken_link_as_output_is_refused(tmp_path: Path, tok) -> None:
    model_dir = make_folder(tmp_path / "model", tok)
    out = tmp_path / "out"
    out.symlink_to(tmp_path / "nowhere")
    with pytest.raises(UserError, match="broken link"):
        export_model(model_dir, out, "hf", overwrite=True, check=False)
    assert out.is_symlink() and sorted(p.name for p in tmp_path.iterdir()) == ["model", "out"]


def test_overwriting_a_link_replaces_the_folder_it_links_to(tmp_path: Path, tok) -> None:
    """--overwrite through a link to an export replaces that export and keeps the link: no hidden folder or link
    is left beside either."""
    model_dir = make_folder(tmp_path / "model", tok)
    target = export_model(model_dir, tmp_path / "hf", "hf", check=False)
    (target / "stale.txt").write_text("old")
    ex = tmp_path / "ex"
    ex.mkdir()
    (ex / "linkhf").symlink_to(Path("..") / "hf")
    assert export_model(model_dir, ex / "linkhf", "hf", overwrite=True, check=False) == ex / "linkhf"
    assert (ex / "linkhf").is_symlink() and (ex / "linkhf").resolve() == target.resolve()
    assert not (target / "stale.txt").exists() and (target / "model.safetensors").is_file()
    assert [p.name for p in ex.iterdir()] == ["linkhf"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ex", "hf", "model"]


def test_an_export_a_kill_left_half_replaced_is_put_back(tmp_path: Path, tok) -> None:
    """A kill between --overwrite's two renames leaves no OUT, only `.OUT.old-PID`: the next export puts the old
    folder back first, so without --overwrite it is refused as an existing folder, and with it replaced cleanly."""
    model_dir = make_folder(tmp_path / "model", tok)
    out = export_model(model_dir, tmp_path / "hf", "hf", check=False)
    (out / "mine.txt").write_text("the previous export")
    out.rename(tmp_path / ".hf.old-4242")  # where the kill left it
    with pytest.raises(UserError, match="exists"):
        export_model(model_dir, out, "hf", check=False)
    assert (out / "mine.txt").read_text() == "the previous export"
    export_model(model_dir, out, "hf", overwrite=True, check=False)
    assert not (out / "mine.txt").exists() and sorted(p.name for p in tmp_path.iterdir()) == ["hf", "model"]


def test_model_card_from_run_folder(tmp_path: Path, tok) -> None:
    """The card of a run given --data shows how its data folder was prepared (meta.json), not the run's unused
    `data:` settings (it showed vocab_size 8192 for a vocabulary of 120)."""
    run, data = tmp_path / "run", tmp_path / "data" / "tiny"
    make_folder(run / "model", tok)
    data.mkdir(parents=True)
    (data / "meta.json").write_text(json.dumps({"data_config": {"seq_len": 32, "vocab_size": 120}}))
    summary = {
        "steps": 40, "tokens": 40960, "train_time_s": 12.5, "tokens_per_s": 3276.8,
        "eval": {"mlm_accuracy": 0.4321, "perplexity": 17.5}, "data": str(data), "notes": [],
    }  # fmt: skip
    (run / "summary.json").write_text(json.dumps(summary))
    (run / "config.yaml").write_text(
        yaml.safe_dump({"data": {"seq_len": 32, "vocab_size": 8192}, "train": {"lr": 1e-3}})
    )
    (run / "command.txt").write_text("masklm pretrain data/tiny --preset tiny --out runs/tiny\n")
    out = export_model(run, tmp_path / "card", "hf", check=False)
    card = (out / "README.md").read_text()
    for expected in ("40,960", "0.4321", "17.5", "masklm pretrain data/tiny --preset tiny", "seq_len: 32",
                     "| layers | 2 |", "| hidden size | 32 |", "pipeline_tag: fill-mask", "vocab_size: 120"):  # fmt: skip
        assert expected in card, expected
    assert "8192" not in card


def test_model_card_from_model_folder_extras(tmp_path: Path, tok) -> None:
    folder = make_folder(tmp_path / "m", tok)
    config = json.loads((folder / "config.json").read_text())
    config.update({"tokens_seen": 5000, "eval": {"mlm_accuracy": 0.25}})
    (folder / "config.json").write_text(json.dumps(config))
    card = (export_model(folder, tmp_path / "out", "hf", check=False) / "README.md").read_text()
    assert "5,000" in card and "0.25" in card and "parameters" in card


# ----------------------------------------------------------------------------------------------------------------
# ONNX


@pytest.mark.parametrize(
    ("architecture", "extra"),
    [
        ("MaskedLM", {}),
        ("SequenceClassification", {}),
        ("TokenClassification", {"type_vocab_size": 0}),
        ("QuestionAnswering", {}),
        ("MaskedLM", {"norm": "pre", "position": "rotary", "ffn": "geglu", "bias": False}),
    ],
    ids=["mlm", "cls", "ner-no-token-types", "qa", "mlm-modern"],
)
def test_onnx_export_matches_pytorch(tmp_path: Path, tok, architecture: str, extra: dict) -> None:
    ort = pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    import numpy as np

    from masklm.model.io import load_model

    model_dir = make_folder(tmp_path / "m", tok, architecture, seed=5, **extra)
    out = export_model(model_dir, tmp_path / "onnx", "onnx")
    assert (
        (out / "model.onnx").is_file()
        and (out / "tokenizer.json").is_file()
        and (out / "README.md").is_file()
    )
    session = ort.InferenceSession(str(out / "model.onnx"), providers=["CPUExecutionProvider"])
    names = [i.name for i in session.get_inputs()]
    token_types = extra.get("type_vocab_size", 2) > 0  # without token-type embeddings the input is left out
    assert names == ["input_ids", "attention_mask", "token_type_ids"][: 3 if token_types else 2]
    assert all(i.shape[:2] == ["batch", "sequence"] for i in session.get_inputs())

    model, _, _ = load_model(model_dir)
    b = padded_batch(model.cfg.vocab_size)  # another shape than the export's sample, with padding
    if not token_types:
        b["token_type_ids"] = torch.zeros_like(b["token_type_ids"])
    got = session.run(None, {k: v.numpy().astype(np.int64) for k, v in b.items() if k in names})
    with torch.no_grad():
        want = model.eval()(**b)
    got_t = torch.from_numpy(np.stack(got, -1) if architecture == "QuestionAnswering" else got[0])
    assert got_t.shape == want.shape
    assert (got_t - want).abs().max().item() <= 1e-4


def test_onnx_failed_check_leaves_nothing(tmp_path: Path, tok, monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    model_dir = make_folder(tmp_path / "m", tok)
    monkeypatch.setattr(export_mod, "TOLERANCE", -1.0)  # no export can pass
    with pytest.raises(UserError, match="export check failed: ONNX Runtime differs"):
        export_model(model_dir, tmp_path / "onnx", "onnx")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m"]


def test_onnx_export_on_a_full_disk_is_the_full_disk_line(tmp_path: Path, tok, monkeypatch, capsys) -> None:
    """The exporter's OSError (disk full while writing the .onnx file) was "ONNX export failed (OSError: ...)";
    it is the line every command gives for a full disk (exit 2, nothing left behind)."""
    import errno

    from masklm.cli import main

    pytest.importorskip("onnxscript")
    model_dir = make_folder(tmp_path / "m", tok)

    def full(*args, **kwargs):
        raise RuntimeError("export failed") from OSError(
            errno.ENOSPC, "No space left on device", "model.onnx"
        )

    monkeypatch.setattr(torch.onnx, "export", full)
    assert main(["export", str(model_dir), str(tmp_path / "onnx"), "--format", "onnx"]) == 2
    err = capsys.readouterr().err
    assert (
        err.startswith("error: No space left on device: model.onnx; free disk space") and err.count("\n") == 1
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m"]


def test_onnx_without_packages_is_a_user_error(tmp_path: Path, tok, monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "onnxruntime" else real(name, *a)
    )
    with pytest.raises(UserError, match=r"pip install 'masklm\[onnx\]'"):
        export_model(make_folder(tmp_path / "m", tok), tmp_path / "onnx", "onnx")
    assert not (tmp_path / "onnx").exists()


# ----------------------------------------------------------------------------------------------------------------
# A head defined outside masklm.model (multiple choice, in its task module): the hooks are enough to load, convert
# and export it


@pytest.fixture
def multiple_choice(tmp_path: Path, tok):
    """A saved MultipleChoice model folder (the head registers itself when its task module is imported)."""
    torch.manual_seed(11)
    model = MultipleChoice(tiny_model_config(tok.get_vocab_size()))
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name or "bias" in name:
                p.add_(torch.randn_like(p) * 0.2)
    return save_model(model, tmp_path / "mc", tok, ModelInfo(architecture="MultipleChoice")), model.eval()


def test_registered_head_exports_to_transformers(multiple_choice, tmp_path: Path) -> None:
    transformers = pytest.importorskip("transformers")
    from masklm.model.io import load_model

    model_dir, model = multiple_choice
    out = export_model(model_dir, tmp_path / "hf", "hf")  # the check compares with AutoModelForMultipleChoice
    config = json.loads((out / "config.json").read_text())
    assert config["architectures"] == ["BertForMultipleChoice"]
    assert "pipeline_tag: multiple-choice" in (out / "README.md").read_text()

    hf, loading = transformers.AutoModelForMultipleChoice.from_pretrained(str(out), output_loading_info=True)
    assert not any(loading.values()) and type(hf).__name__ == "BertForMultipleChoice"
    inputs = MultipleChoice.example_inputs(model.cfg, batch=2, length=9, seed=5)
    with torch.no_grad():
        want = model(**inputs)
        assert want.shape == (2, 4)
        assert (hf.eval()(**inputs).logits - want).abs().max().item() < 1e-5

    again, _, info = load_model(out)  # the HF loader finds the head by its class name in config.json
    assert isinstance(again, MultipleChoice) and info.architecture == "MultipleChoice" and info.notes == []
    with torch.no_grad():
        assert (again.eval()(**inputs) - want).abs().max().item() < 1e-5


def test_registered_head_exports_to_onnx(multiple_choice, tmp_path: Path) -> None:
    ort = pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    import numpy as np

    model_dir, model = multiple_choice
    out = export_model(model_dir, tmp_path / "onnx", "onnx")  # the check runs ONNX Runtime on other shapes
    session = ort.InferenceSession(str(out / "model.onnx"), providers=["CPUExecutionProvider"])
    assert all(i.shape == ["batch", "choices", "sequence"] for i in session.get_inputs())
    inputs = MultipleChoice.example_inputs(model.cfg, batch=5, length=7, seed=1)
    (got,) = session.run(None, {k: v.numpy().astype(np.int64) for k, v in inputs.items()})
    with torch.no_grad():
        want = model(**inputs)
    assert got.shape == (5, 4) and np.abs(got - want.numpy()).max() <= 1e-4
    assert json.loads((out / "config.json").read_text())["dynamic_axes"] == {
        "0": "batch", "1": "choices", "2": "sequence",
    }  # fmt: skip
