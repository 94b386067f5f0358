"""The encoder and its heads: padding invariance, sparse MLM head, save → load, variants."""

from pathlib import Path

import pytest
import tokenizers
import torch
from helpers import tiny_model_config
from tokenizers import models, pre_tokenizers

from masklm.config import ModelConfig
from masklm.errors import UserError
from masklm.model.heads import (
    MaskedLM,
    QuestionAnswering,
    SequenceClassification,
    TokenClassification,
    masked_rows,
    masked_targets,
)
from masklm.model.io import ModelInfo, load_model, save_model

VARIANTS = {
    "bert": {},
    "modern": {"norm": "pre", "position": "rotary", "ffn": "geglu", "bias": False},
    "pre_ln": {"norm": "pre"},
    "rotary": {"position": "rotary"},
    "geglu_nobias": {"ffn": "geglu", "bias": False},
}


def tiny_cfg(**kw) -> ModelConfig:
    """The tiny encoder with 4 heads and a vocabulary of 100 unless `kw` says otherwise."""
    return tiny_model_config(**{"vocab_size": 100, "num_attention_heads": 4, **kw})


def tiny_tokenizer(vocab_size=100) -> tokenizers.Tokenizer:
    vocab = {t: i for i, t in enumerate(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"])}
    for i in range(len(vocab), vocab_size):
        vocab[f"w{i}"] = i
    tok = tokenizers.Tokenizer(models.WordPiece(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.add_special_tokens(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"])
    return tok


def test_vocab_padded_to_multiple_of_64_ids_unchanged():
    cfg = tiny_cfg(vocab_size=100)
    m = MaskedLM(cfg)
    assert m.encoder.embeddings.word.weight.shape[0] == 128
    logits = m(torch.randint(5, 100, (2, 8)))
    assert logits.shape == (2, 8, 100)


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_padding_invariance(variant):
    torch.manual_seed(0)
    m = MaskedLM(tiny_cfg(**VARIANTS[variant])).eval()
    ids = torch.randint(5, 100, (2, 10))
    base = m(ids)
    padded = torch.cat([ids, torch.zeros(2, 6, dtype=torch.long)], dim=1)
    mask = torch.cat([torch.ones(2, 10), torch.zeros(2, 6)], dim=1).long()
    out = m(padded, attention_mask=mask)
    torch.testing.assert_close(out[:, :10], base, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_sparse_head_equals_dense_head_at_masked_positions(variant):
    torch.manual_seed(1)
    m = MaskedLM(tiny_cfg(**VARIANTS[variant])).eval()
    ids = torch.randint(5, 100, (3, 12))
    labels = torch.full_like(ids, -100)
    labels[0, 3], labels[1, 0], labels[2, 11], labels[2, 5] = 7, 8, 9, 10
    sparse = m(ids, labels=labels)
    dense = m(ids)[labels != -100]
    assert sparse.shape == (4, 100)
    torch.testing.assert_close(sparse, dense, atol=1e-6, rtol=1e-6)


def test_masked_rows_are_padded_to_a_multiple_and_the_padding_is_ignored():
    """Pretraining pads the head's rows (same few buffer sizes every step); loss, gradients and eval sums are
    those of the M masked positions alone."""
    from masklm.objectives.mlm import MLM, PAD_ROWS, mlm_loss

    labels = torch.full((3, 12), -100)
    labels[0, 3], labels[1, 0], labels[2, 11], labels[2, 5] = 7, 8, 9, 10
    rows = masked_rows(labels, 8)
    assert rows.tolist() == [3, 12, 29, 35, 0, 0, 0, 0]  # flat (row * 12 + column), in order, then index 0
    assert masked_targets(labels, 8).tolist() == [7, 8, 10, 9, -100, -100, -100, -100]
    assert masked_rows(labels, 4).numel() == 4 and masked_rows(labels).numel() == 4

    torch.manual_seed(2)
    m = MaskedLM(tiny_cfg(**VARIANTS["modern"]))
    batch = {"input_ids": torch.randint(5, 100, (3, 12)), "labels": labels}
    logits = m(batch["input_ids"], labels=labels, pad_rows=PAD_ROWS)
    assert logits.shape == (PAD_ROWS, 100)
    loss = mlm_loss(m, batch)
    loss.backward()
    padded_grads = [p.grad.clone() for p in m.parameters()]
    m.zero_grad()
    exact = torch.nn.functional.cross_entropy(m(batch["input_ids"], labels=labels), labels[labels != -100])
    exact.backward()
    torch.testing.assert_close(loss, exact)
    for got, want in zip(padded_grads, (p.grad for p in m.parameters()), strict=True):
        torch.testing.assert_close(got, want)
    with torch.no_grad():
        sums = MLM().eval_sums(m, batch)
    assert int(sums["count"]) == 4
    assert float(sums["loss_sum"]) == pytest.approx(4 * exact.item(), rel=1e-5)
    assert int(sums["correct"]) == int(
        (m(batch["input_ids"], labels=labels).argmax(-1) == labels[labels != -100]).sum()
    )


def test_attention_is_bidirectional():
    torch.manual_seed(2)
    m = MaskedLM(tiny_cfg()).eval()
    ids = torch.randint(5, 100, (1, 10))
    changed = ids.clone()
    changed[0, 9] = (ids[0, 9] + 1 - 5) % 95 + 5
    # changing the LAST token changes the output at the FIRST position: context flows both ways
    assert not torch.allclose(m(ids)[0, 0], m(changed)[0, 0])


def test_tied_embeddings():
    m = MaskedLM(tiny_cfg())
    names = [n for n, _ in m.named_parameters()]
    assert not any("decoder.weight" in n for n in names), "the decoder must reuse the word embeddings"


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_save_load_identical_outputs(tmp_path, variant):
    torch.manual_seed(3)
    m = MaskedLM(tiny_cfg(**VARIANTS[variant])).eval()
    tok = tiny_tokenizer()
    save_model(m, tmp_path / "m", tok)
    m2, tok2, info = load_model(tmp_path / "m")
    ids = torch.randint(5, 100, (2, 9))
    assert info.architecture == "MaskedLM"
    assert torch.equal(m(ids), m2.eval()(ids))
    assert tok2.to_str() == tok.to_str()


def test_the_same_model_saves_to_the_same_bytes(tmp_path):
    """safetensors writes metadata keys in an order that varies between processes, so two keys gave two byte
    sequences for one model (a resumed run's file differed from an uninterrupted one's): one key is written."""
    import subprocess
    import sys

    from safetensors import safe_open

    save = (
        "import sys, torch; sys.path.insert(0, 'tests'); from helpers import tiny_model_config; "
        "from test_model import tiny_tokenizer; from masklm.model.heads import MaskedLM; "
        "from masklm.model.io import save_model; torch.manual_seed(0); "
        "save_model(MaskedLM(tiny_model_config(100)), sys.argv[1], tiny_tokenizer())"
    )
    root = Path(__file__).resolve().parent.parent
    for name in ("a", "b"):
        subprocess.run([sys.executable, "-c", save, str(tmp_path / name)], check=True, cwd=root)
    a, b = ((tmp_path / n / "model.safetensors").read_bytes() for n in ("a", "b"))
    assert a == b
    with safe_open(str(tmp_path / "a" / "model.safetensors"), "pt") as f:
        assert f.metadata() == {"format": "pt"}


def test_saved_weights_get_the_permissions_of_any_file(tmp_path):
    """safetensors creates its file 0o600: a model saved for others (a shared run, an export) was theirs to see but
    not to read. It gets the umask applied to 0o666, as config.json beside it does."""
    import os
    import stat

    old = os.umask(0o022)
    try:
        save_model(MaskedLM(tiny_model_config(100)), tmp_path / "m", tiny_tokenizer())
    finally:
        os.umask(old)
    modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in (tmp_path / "m").iterdir()}
    assert modes["model.safetensors"] == 0o644 and modes["config.json"] == 0o644


def test_load_with_new_head_keeps_encoder(tmp_path):
    torch.manual_seed(4)
    m = MaskedLM(tiny_cfg()).eval()
    save_model(m, tmp_path / "m", tiny_tokenizer())
    clf, _, info = load_model(tmp_path / "m", architecture="SequenceClassification", labels=["a", "b", "c"])
    assert isinstance(clf, SequenceClassification) and clf.num_labels == 3
    assert info.notes and "from scratch" in info.notes[0]
    ids = torch.randint(5, 100, (2, 7))
    torch.testing.assert_close(clf.encoder.eval()(ids), m.encoder(ids))


def test_corrupt_weights_and_mismatched_tokenizer_are_refused(tmp_path):
    m = MaskedLM(tiny_cfg())
    save_model(m, tmp_path / "m", tiny_tokenizer())
    (tmp_path / "m" / "model.safetensors").write_bytes(b"not a safetensors file at all")
    with pytest.raises(UserError, match="safetensors"):
        load_model(tmp_path / "m")
    save_model(m, tmp_path / "n", tiny_tokenizer(vocab_size=90))
    with pytest.raises(UserError, match="tokenizer"):
        load_model(tmp_path / "n")


def test_weights_from_another_model_are_refused(tmp_path):
    save_model(MaskedLM(tiny_cfg()), tmp_path / "a", tiny_tokenizer())
    save_model(MaskedLM(tiny_cfg(hidden_size=64)), tmp_path / "b", tiny_tokenizer())
    (tmp_path / "a" / "model.safetensors").write_bytes((tmp_path / "b" / "model.safetensors").read_bytes())
    with pytest.raises(UserError, match="different model"):
        load_model(tmp_path / "a")


@pytest.mark.parametrize("cls", [SequenceClassification, TokenClassification, QuestionAnswering])
def test_task_heads_shapes_and_backward(cls):
    cfg = tiny_cfg()
    m = cls(cfg, 3) if cls is not QuestionAnswering else cls(cfg)
    ids = torch.randint(5, 100, (2, 6))
    out = m(ids, torch.ones_like(ids), torch.zeros_like(ids))
    expected = {SequenceClassification: (2, 3), TokenClassification: (2, 6, 3), QuestionAnswering: (2, 6, 2)}[
        cls
    ]
    assert out.shape == expected
    out.sum().backward()
    assert m.encoder.embeddings.word.weight.grad is not None


def test_rotary_angles_survive_a_cast_to_bfloat16():
    """fill-mask's bf16 weights come from `model.to(torch.bfloat16)`; the rotary angles must stay float32-exact."""
    from masklm.model.encoder import Rotary

    g = torch.Generator().manual_seed(0)
    q, k = torch.randn(1, 2, 500, 16, generator=g), torch.randn(1, 2, 500, 16, generator=g)
    rotary = Rotary(16, 10000.0)
    before = rotary(q, k)
    after = rotary.to(torch.bfloat16)(q, k)
    for a, b in zip(before, after):
        assert torch.equal(a, b)


def test_head_registry():
    from masklm.model.base import build_model, head_class, registered_heads

    assert [h.architecture for h in registered_heads()][:4] == [
        "MaskedLM", "SequenceClassification", "TokenClassification", "QuestionAnswering",
    ]  # fmt: skip
    assert head_class("QuestionAnswering") is QuestionAnswering
    assert build_model("TokenClassification", tiny_cfg(), ["a", "b"]).num_labels == 2
    with pytest.raises(UserError, match="unknown architecture 'Nope'; expected one of MaskedLM"):
        head_class("Nope")


def test_other_labels_keep_encoder_and_pooler_and_start_a_new_classifier(tmp_path):
    torch.manual_seed(5)
    m = SequenceClassification(tiny_cfg(), 3).eval()
    save_model(
        m, tmp_path / "m", tiny_tokenizer(), ModelInfo("SequenceClassification", labels=["a", "b", "c"])
    )
    same, _, info = load_model(tmp_path / "m")
    assert info.labels == ["a", "b", "c"] and info.notes == []
    assert torch.equal(same.classifier.weight, m.classifier.weight)

    other, _, info = load_model(tmp_path / "m", labels=["x", "y"])
    assert info.labels == ["x", "y"] and other.classifier.weight.shape[0] == 2
    assert torch.equal(other.pooler.weight, m.pooler.weight)
    assert torch.equal(other.encoder.layers[1].ffn.up.weight, m.encoder.layers[1].ffn.up.weight)
    assert len(info.notes) == 1 and "labels ['x', 'y'] requested" in info.notes[0]
    assert "new: classifier)" in info.notes[0]


def test_a_masklm_folder_missing_head_weights_is_refused(tmp_path):
    from safetensors.torch import load_file, save_file

    save_model(
        SequenceClassification(tiny_cfg(), 2),
        tmp_path / "m",
        tiny_tokenizer(),
        ModelInfo("SequenceClassification", labels=["a", "b"]),
    )
    weights = tmp_path / "m" / "model.safetensors"
    state = load_file(str(weights))
    del state["classifier.bias"]
    save_file(state, str(weights))
    with pytest.raises(UserError, match=r"do not fit this model \(missing \['classifier.bias'\]\)"):
        load_model(tmp_path / "m")


def test_bf16_attention_dropout_drops_at_rate_p_and_keeps_the_expectation():
    from masklm.model.encoder import _attention_written_out

    torch.manual_seed(3)
    q, k, v = (torch.randn(4, 2, 64, 8).to(torch.bfloat16) for _ in range(3))
    probs = ((q.float() * 8**-0.5) @ k.float().transpose(-1, -2)).softmax(-1)
    plain = _attention_written_out(q, k, v, None, 0.0).float()
    torch.testing.assert_close(plain, probs.to(torch.bfloat16).float() @ v.float(), atol=2e-2, rtol=2e-2)
    # v = identity rows: the output shows which probabilities were kept (x 1 / (1 - p)) and which dropped
    eye = torch.eye(64).expand(4, 2, 64, 64).to(torch.bfloat16)
    q64, k64 = (torch.randn(4, 2, 64, 64).to(torch.bfloat16) for _ in range(2))
    dropped = _attention_written_out(q64, k64, eye, None, 0.25).float()
    assert abs((dropped == 0).float().mean().item() - 0.25) < 0.01
    mean = torch.stack([_attention_written_out(q, k, v, None, 0.25).float() for _ in range(100)]).mean(0)
    assert (mean - plain).abs().mean() < 0.03  # unbiased: the mean over draws tends to the plain output
    # gradients reach q, k and v through the masked probabilities
    q.requires_grad_(True)
    _attention_written_out(q, k, v, None, 0.25).float().sum().backward()
    assert q.grad is not None and q.grad.abs().sum() > 0


def test_no_padding_mask_when_nothing_is_padded():
    from masklm.model.encoder import _padding_mask

    assert _padding_mask(torch.ones(2, 5, dtype=torch.long), drop_if_full=True) is None
    assert _padding_mask(torch.ones(2, 5, dtype=torch.long)).shape == (
        2,
        1,
        1,
        5,
    )  # export: no data-dependent if
    mask = torch.ones(2, 5, dtype=torch.long)
    mask[1, 3:] = 0
    want = [[[[True] * 5]], [[[True, True, True, False, False]]]]
    assert _padding_mask(mask, drop_if_full=True).tolist() == want
    torch.manual_seed(4)
    m = MaskedLM(tiny_cfg()).eval()
    ids = torch.randint(5, 100, (2, 6))
    torch.testing.assert_close(m(ids, torch.ones_like(ids)), m(ids))


def test_one_segment_row_reads_every_segment_as_the_first():
    """type_vocab_size 1 (a RoBERTa-like BERT, or --model.type_vocab_size 1): the second text of a pair (segment
    id 1) reads the one row, as the first does, instead of indexing past it."""
    torch.manual_seed(6)
    m = MaskedLM(tiny_cfg(type_vocab_size=1)).eval()
    ids = torch.randint(5, 100, (2, 9))
    types = torch.zeros_like(ids)
    types[:, 5:] = 1
    assert torch.equal(m(ids, token_type_ids=types), m(ids, token_type_ids=torch.zeros_like(ids)))


def test_weights_this_user_cannot_read_are_not_called_damaged(tmp_path, monkeypatch):
    """safetensors says "No such file or directory" for a file it may not read, which read as a damaged model
    folder; the line says permission denied. (Injected: root, which runs the tests, reads any file.)"""
    import os

    from safetensors.torch import save_file

    from masklm.errors import UserError
    from masklm.model import base

    path = tmp_path / "model.safetensors"
    save_file({"w": torch.zeros(2)}, str(path))
    assert list(base.read_safetensors(path)) == ["w"]
    monkeypatch.setattr(os, "access", lambda p, mode: str(p) != str(path))
    with pytest.raises(UserError, match=r"cannot read .*model.safetensors \(permission denied\)"):
        base.read_safetensors(path)


def test_a_regression_head_keeps_float32_under_bf16_autocast():
    """A one-output head (a regression score) runs its last layer in float32 under autocast: a bf16 output
    keeps three significant digits (3.0536 came out 3.046875). A classifier's logits stay as autocast makes them."""
    torch.manual_seed(0)
    ids = torch.randint(5, 50, (3, 7))
    for num_labels, dtype in ((1, torch.float32), (3, torch.bfloat16)):
        model = SequenceClassification(tiny_model_config(50), num_labels).eval()
        with torch.no_grad(), torch.autocast("cpu", torch.bfloat16):
            h = model.encoder(ids)
            out = model(ids)
            pooled = torch.tanh(model.pooler(h[:, 0])).float()
        assert out.dtype == dtype
        if num_labels == 1:
            assert torch.equal(
                out, torch.nn.functional.linear(pooled, model.classifier.weight, model.classifier.bias)
            )
