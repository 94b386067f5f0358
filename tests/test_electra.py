"""ELECTRA (`masklm pretrain --objective electra`): the loss on a tiny model, the sampling, end-to-end runs (every
masking strategy, exact resume, accumulation and two FSDP processes), fill-mask from the generator, fine-tuning
from the discriminator, and the Hugging Face export of both (parity with transformers' Electra classes)."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from helpers import (
    WALK_WORDS,
    cli,
    final_weights,
    prepare_tiny,
    read_metrics,
    tiny_model_config,
    write_csv,
    write_walk_corpus,
)

from masklm.config import Config, MaskConfig, config_from_dict
from masklm.data.masking import mask_tokens
from masklm.data.tokenizer import train_tokenizer
from masklm.errors import UserError
from masklm.export import export_model
from masklm.infer.fill_mask import FillMask
from masklm.model.electra import ElectraGenerator, ElectraPreTraining, generator_config, sample_from_logits
from masklm.model.heads import MaskedLM
from masklm.model.hf import config_to_hf
from masklm.model.io import ModelInfo, load_model, save_model
from masklm.objectives.electra import Electra, electra_loss
from masklm.objectives.mlm import mlm_loss
from masklm.train.pretrain import _generator_width_note

V = 60  # the vocabulary of the unit tests; ids 0-4 are [PAD] [UNK] [CLS] [SEP] [MASK]
PAD, CLS, SEP, MASK = 0, 2, 3, 4
SPECIALS = torch.tensor([0, 1, 2, 3, 4])


def tiny_electra(seed: int = 0, **cfg: object) -> ElectraPreTraining:
    torch.manual_seed(seed)
    return ElectraPreTraining(tiny_model_config(V, **cfg)).eval()


def batch(seed: int = 0) -> dict[str, torch.Tensor]:
    """Two rows: [CLS] 8 tokens [SEP] and [CLS] 5 tokens [SEP] + padding; a few positions masked in each."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(5, V, (2, 10), generator=g)
    ids[:, 0] = CLS
    ids[0, 9] = SEP
    ids[1, 6], ids[1, 7:] = SEP, PAD
    labels = torch.full_like(ids, -100)
    for row, cols in ((0, [1, 4, 5, 8]), (1, [2, 3])):
        labels[row, cols] = ids[row, cols]
    inputs = ids.masked_fill(labels != -100, MASK)
    real = ~torch.isin(ids, SPECIALS)
    return {
        "input_ids": inputs,
        "labels": labels,
        "attention_mask": ids != PAD,
        "sample_u": torch.rand(ids.shape, generator=g),
        "real": real,
    }


# ----------------------------------------------------------------------------------------------------------------
# The loss and the sampling


def test_sampling_inverts_the_softmax():
    probs = torch.tensor([[0.2, 0.3, 0.5]])
    u = (torch.arange(1000) + 0.5) / 1000
    picked = sample_from_logits(probs.log().expand(1000, 3), u)
    assert torch.bincount(picked, minlength=3).tolist() == [200, 300, 500]
    assert sample_from_logits(torch.tensor([[0.0, -1e9]]), torch.tensor([0.9999999])).item() == 0


def test_generator_shape_and_shared_embeddings():
    model = tiny_electra()
    gen = model.generator
    assert gen.cfg.hidden_size == 16 and gen.cfg.num_attention_heads == 1 and gen.cfg.intermediate_size == 16
    assert gen.cfg.embedding_size == 32 and gen.encoder.embed_proj is not None  # E = 32 → 16
    assert gen.encoder.input_embeddings is model.encoder.embeddings
    keys = model.state_dict().keys()
    assert not any(k.startswith("generator.encoder.embeddings") for k in keys)  # held, not owned
    assert (
        generator_config(model.cfg, 1.0).hidden_size == 32
        and generator_config(model.cfg, 0.1).hidden_size == 16
    )
    # without labels: one logit per token
    b = batch()
    assert model(b["input_ids"], b["attention_mask"]).shape == (2, 10)
    # a width that is not the fraction asked for (whole heads) is said at the start of the run
    note = _generator_width_note(model)
    assert note is not None and "16 wide, 0.5 of the discriminator's 32" in note and "1 of 2" in note
    assert _generator_width_note(ElectraPreTraining(model.cfg, 0.5)) is None


def test_both_halves_get_gradients_and_the_embeddings_from_both():
    model = tiny_electra()
    model.train()
    parts = electra_loss(model, batch(), weight=50.0)
    assert parts.shape == (2,)
    params = dict(model.named_parameters())
    gen = [p for k, p in params.items() if k.startswith("generator.")]
    disc = [p for k, p in params.items() if k.startswith(("encoder.layers", "discriminator_"))]
    word = params["encoder.embeddings.word.weight"]

    g_gen = torch.autograd.grad(parts[0], [word, *gen, *disc], allow_unused=True, retain_graph=True)
    g_disc = torch.autograd.grad(parts[1], [word, *gen, *disc], allow_unused=True)
    n = len(gen)
    nonzero = lambda g: g is not None and bool(g.abs().sum() > 0)  # noqa: E731
    assert nonzero(g_gen[0]) and nonzero(g_disc[0])  # the shared embeddings learn from both
    assert all(nonzero(g) for g in g_gen[1 : 1 + n])  # the generator from its MLM loss ...
    assert not any(nonzero(g) for g in g_disc[1 : 1 + n])  # ... never through its samples
    assert all(nonzero(g) for g in g_disc[1 + n :])  # the discriminator from its own loss
    assert not any(nonzero(g) for g in g_gen[1 + n :])


def test_weight_zero_is_the_generators_mlm_loss():
    model, b = tiny_electra(), batch()
    parts = electra_loss(model, b, weight=0.0)
    assert parts[1] == 0
    assert torch.allclose(parts.sum(), mlm_loss(model.generator_model().eval(), b), atol=1e-6)


def test_padded_generator_rows_change_nothing():
    """The generator's rows padded for flat memory (pad_rows) give the same samples, corrupted input and loss."""
    model, b = tiny_electra(), batch()
    args = (b["input_ids"], b["attention_mask"], None, b["labels"], b["sample_u"])
    gen1, disc1, rep1 = model(*args)
    gen8, disc8, rep8 = model(*args, pad_rows=8)
    assert gen1.shape[0] == 6 and gen8.shape[0] == 8
    torch.testing.assert_close(gen8[:6], gen1)
    torch.testing.assert_close(disc8, disc1)
    assert torch.equal(rep8, rep1)
    torch.testing.assert_close(electra_loss(model, b, 50.0), electra_loss_unpadded(model, b, 50.0))


def electra_loss_unpadded(
    model: ElectraPreTraining, b: dict[str, torch.Tensor], weight: float
) -> torch.Tensor:
    """The loss written out without padding rows, as the objective computed it before rows were padded."""
    labels, real = b["labels"], b["real"]
    gen, disc, replaced = model(b["input_ids"], b["attention_mask"], None, labels, b["sample_u"])
    g = torch.nn.functional.cross_entropy(gen.float(), labels[labels != -100])
    d = torch.nn.functional.binary_cross_entropy_with_logits(disc.float()[real], replaced[real].float())
    return torch.stack([g, weight * d])


def test_the_generator_is_shown_mask_or_the_original_never_a_random_token():
    """ELECTRA's split, as Clark et al.'s reference code: 85% of the chosen tokens become [MASK], 15% stay, none
    is a random token (which the generator could copy when kept); mlm keeps BERT's 80/10/10; a split given is
    kept for either objective."""
    assert MaskConfig().for_objective("mlm") == MaskConfig(mask_prob=0.8, random_prob=0.1)
    electra = config_from_dict({"objective": {"name": "electra"}}).mask
    assert (electra.mask_prob, electra.random_prob) == (0.85, 0.0)
    assert (Config().validate().mask.mask_prob, Config().validate().mask.random_prob) == (0.8, 0.1)
    given = config_from_dict(
        {"objective": {"name": "electra"}, "mask": {"mask_prob": 0.8, "random_prob": 0.1}}
    )
    assert (given.mask.mask_prob, given.mask.random_prob) == (0.8, 0.1)
    ids = torch.randint(10, 1000, (64, 128), generator=torch.Generator().manual_seed(0))
    special = torch.zeros_like(ids, dtype=torch.bool)
    for cfg, share in ((electra, 0.85), (MaskConfig(), 0.8)):
        masked, labels = mask_tokens(
            ids, special, cfg, mask_token_id=4, vocab_size=1000, generator=torch.Generator().manual_seed(1)
        )
        chosen = labels != -100
        as_mask = (masked == 4) & chosen
        replaced = chosen & (masked != 4) & (masked != ids)
        assert abs(as_mask.sum().item() / chosen.sum().item() - share) < 0.02
        assert (replaced.sum().item() == 0) == (cfg is electra)


def test_samples_equal_to_the_original_count_as_original():
    model, b = tiny_electra(), batch()
    target = int(b["labels"][0, 1])
    b["labels"][b["labels"] != -100] = target  # every masked position was `target`...
    b["labels"][1, 3] = target + 1 if target + 1 < V else 5  # ...but one
    with torch.no_grad():
        model.generator.decoder_bias[target] = 1e4  # ...and the generator always samples `target`
        _, _, replaced = model(b["input_ids"], b["attention_mask"], None, b["labels"], b["sample_u"])
    assert replaced.sum() == 1 and replaced[1, 3]


def test_padding_and_specials_never_count():
    model, b = tiny_electra(), batch()
    base = electra_loss(model, b, weight=50.0)
    not_real = (~b["real"]).float()
    hook = model.discriminator_prediction.register_forward_hook(
        lambda m, i, out: out + 1e3 * not_real[..., None]
    )
    try:
        assert torch.equal(electra_loss(model, b, weight=50.0), base)  # logits there are never read
    finally:
        hook.remove()
    masked, real = Electra().loss_items(b)
    assert (masked, real) == (6, 13)  # 8 + 5 text tokens; [CLS], [SEP] and padding are not real


# ----------------------------------------------------------------------------------------------------------------
# Runs


@pytest.fixture(scope="module")
def prepared(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("prep")
    return prepare_tiny(write_walk_corpus(root / "corpus", n_docs=60), root / "data")


TINY = ["--preset", "tiny", "--objective", "electra", "--train.eval_every", "0", "--train.log_every", "5"]


def pretrain(*args: object) -> int:
    return cli("pretrain", *TINY, *args)


@pytest.fixture(scope="module")
def electra_run(prepared, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("electra") / "run"
    assert pretrain("--data", prepared, "--output", out, "--max-steps", "150", "--train.lr", "3e-3",
                    "--train.eval_every", "75", "--train.eval_sequences", "16") == 0  # fmt: skip
    return out


def test_end_to_end_run(electra_run, one_thread):
    summary = json.loads((electra_run / "summary.json").read_text())
    assert summary["objective"] == "electra"
    ev = summary["eval"]
    assert set(ev) == {
        "loss", "accuracy", "perplexity", "discriminator_loss", "discriminator_accuracy", "replaced_fraction",
        "replaced_recall",
    }  # fmt: skip
    assert 0 < ev["replaced_fraction"] < 0.2  # at most the masked share (mask.rate 0.15) is replaced
    assert ev["discriminator_accuracy"] > 1 - ev["replaced_fraction"] - 0.02
    train = [r["loss"] for r in read_metrics(electra_run) if r["split"] == "train"]
    assert train[-1] < train[0]
    config = json.loads((electra_run / "model" / "config.json").read_text())
    assert config["architecture"] == "ElectraPreTraining" and config["task"]["generator_fraction"] == 0.25
    saved = yaml.safe_load((electra_run / "config.yaml").read_text())["mask"]
    assert (saved["mask_prob"], saved["random_prob"]) == (0.85, 0.0)
    assert (
        config_from_dict(
            {k: v for k, v in json.loads(json.dumps(Config().to_dict())).items() if k != "objective"}
        ).objective.name
        == "mlm"
    )  # a saved run without the section is an MLM run


def test_the_report_and_curves_say_which_network(electra_run, tmp_path, capsys, monkeypatch):
    """The closing lines name the generator's accuracy and add the discriminator's; curves.png labels the train
    loss as the sum and draws the discriminator's accuracy beside the generator's."""
    from masklm import cli as cli_module
    from masklm import plots

    summary = json.loads((electra_run / "summary.json").read_text())
    cli_module._report_pretrain(summary, electra_run, demo=False)
    out = capsys.readouterr().out
    assert "(the generator's; loss" in out and "held-out discriminator accuracy" in out
    figures = []
    make = plots.new_figure
    monkeypatch.setattr(plots, "new_figure", lambda *a: figures.append(make(*a)) or figures[-1])
    plots.plot_curves(electra_run / "metrics.jsonl", tmp_path / "curves.png")
    (loss_ax, acc_ax) = figures[0][1][0]
    assert [t.get_text() for t in loss_ax.get_legend().get_texts()] == [
        "train loss (generator + weight x discriminator)",
        "validation generator loss",
    ]
    assert [t.get_text() for t in acc_ax.get_legend().get_texts()] == [
        "generator (masked tokens)",
        "discriminator (every real token)",
    ]


def test_fill_mask_answers_from_the_generator(electra_run, one_thread):
    fm = FillMask.load(electra_run, dtype="float32")
    assert isinstance(fm.model, MaskedLM) and fm.model.cfg.hidden_size == 16
    model, tok, _ = load_model(electra_run)
    gen = model.generator_model().eval()
    ids = torch.tensor([tok.encode("alpha bravo [MASK] delta").ids])
    labels = torch.full_like(ids, -100)
    pos = (ids == tok.token_to_id("[MASK]")).nonzero()[0, 1]
    labels[0, pos] = 0
    with torch.no_grad():
        want = gen(ids, None, torch.zeros_like(ids), labels).softmax(-1)[0]
    got = fm("alpha bravo [MASK] delta", top_k=3)[0]
    assert [a["token_id"] for a in got] == want.topk(3).indices.tolist()
    assert got[0]["score"] == pytest.approx(float(want.max()), abs=1e-5)


def test_finetuning_loads_the_discriminator(electra_run, one_thread):
    model, _, info = load_model(electra_run, architecture="SequenceClassification", labels=["a", "b"])
    saved = final_weights(electra_run)
    own = model.state_dict()
    enc = [k for k in saved if k.startswith("encoder.")]
    assert enc and all(torch.equal(own[k], saved[k]) for k in enc)
    assert model.cfg.hidden_size == 32  # the discriminator's width, not the generator's
    assert any("initialised from scratch" in n for n in info.notes)


def test_prompt_classification_says_it_fine_tunes_the_generator(electra_run, tmp_path, one_thread):
    """The masked LM of an ELECTRA run is its generator (a quarter of the width): prompt-classification, which
    needs a masked LM, fine-tunes that, and says so instead of silently leaving the discriminator aside."""
    rows = [{"text": f"{w} delta echo", "label": str(i % 2)} for i, w in enumerate(WALK_WORDS)]
    train = write_csv(tmp_path / "train.csv", rows)
    out = tmp_path / "ft"
    assert cli("finetune", "--task", "prompt-classification", "--model", electra_run, "--train", train,
               "--validation", train, "--output", out, "--train.max_steps", 1, "--data.prompt", "{text} [MASK] .",
               "--data.label_words", "0=alpha,1=bravo") == 0  # fmt: skip
    assert json.loads((out / "model" / "config.json").read_text())["model"]["hidden_size"] == 16
    notes = json.loads((out / "summary.json").read_text())["notes"]
    assert any("masked LM is its generator" in n for n in notes), notes


def test_init_from_between_objectives(electra_run, prepared, tmp_path, one_thread):
    """MLM from an ELECTRA run continues its discriminator; ELECTRA from an MLM run starts a generator."""
    saved = final_weights(electra_run)
    assert pretrain("--data", prepared, "--output", tmp_path / "mlm", "--init-from", electra_run, "--max-steps", "1",
                    "--objective", "mlm", "--train.lr", "1e-9") == 0  # fmt: skip
    mlm = final_weights(tmp_path / "mlm")
    key = "encoder.layers.0.attn.qkv.weight"
    assert torch.allclose(mlm[key], saved[key], atol=1e-6)  # the discriminator's, not the generator's
    summary = json.loads((tmp_path / "mlm" / "summary.json").read_text())
    assert any("discriminator" in n for n in summary["notes"])
    assert pretrain("--data", prepared, "--output", tmp_path / "back", "--init-from", tmp_path / "mlm",
                    "--max-steps", "1", "--objective.generator_fraction", "0.5") == 0  # fmt: skip
    back = final_weights(tmp_path / "back")
    assert back["generator.encoder.layers.0.attn.qkv.weight"].shape == (3 * 16, 16)  # 1 head of 16


@pytest.mark.parametrize("strategy, precision", [("token", "bf16"), ("whole_word", "fp32"), ("span", "fp32")])
def test_every_masking_strategy_trains(prepared, tmp_path, strategy, precision, one_thread):
    out = tmp_path / strategy
    assert pretrain("--data", prepared, "--output", out, "--max-steps", "3", "--mask.strategy", strategy,
                    "--train.precision", precision, "--train.eval_sequences", "8") == 0  # fmt: skip
    summary = json.loads((out / "summary.json").read_text())
    # finite (neither NaN nor infinite), evaluated under the run's precision
    assert summary["eval"] and all(math.isfinite(v) for v in summary["eval"].values())


def test_resume_is_exact(prepared, tmp_path, one_thread):
    """2N steps == N steps + --resume + N steps, bit for bit, with dropout and accumulation on."""
    common = ["--data", prepared, "--model.hidden_dropout_prob", "0.1", "--train.schedule", "constant",
              "--train.warmup", "4", "--train.grad_accum", "2", "--train.checkpoint_every", "3",
              "--train.log_every", "2"]  # fmt: skip
    assert pretrain(*common, "--output", tmp_path / "full", "--max-steps", "8") == 0
    assert pretrain(*common, "--output", tmp_path / "half", "--max-steps", "4") == 0
    assert pretrain(*common, "--output", tmp_path / "half", "--max-steps", "8", "--resume") == 0
    a, b = final_weights(tmp_path / "full"), final_weights(tmp_path / "half")
    assert a.keys() == b.keys() and any(k.startswith("generator.") for k in a)
    for k in a:
        assert torch.equal(a[k], b[k]), k
    losses = lambda run: [r["loss"] for r in read_metrics(run) if r["split"] == "train" and r["step"] > 4]  # noqa: E731
    assert losses(tmp_path / "full") == losses(tmp_path / "half")


def test_accumulation_trains_like_one_batch(prepared, tmp_path, one_thread):
    """Micro-batch 8 == micro-batch 2 x accumulation 4: each loss part is weighted by its own items."""
    common = ["--data", prepared, "--train.log_every", "1", "--max-steps", "3"]
    assert pretrain(*common, "--output", tmp_path / "one", "--train.batch_size", "8") == 0
    assert pretrain(*common, "--output", tmp_path / "acc", "--train.batch_size", "2",
                    "--train.grad_accum", "4") == 0  # fmt: skip
    train = lambda run: [r["loss"] for r in read_metrics(run) if r["split"] == "train"]  # noqa: E731
    assert train(tmp_path / "one") == pytest.approx(train(tmp_path / "acc"), rel=1e-5)
    a, b = final_weights(tmp_path / "one"), final_weights(tmp_path / "acc")
    for k in a:
        assert torch.allclose(a[k], b[k], atol=1e-5), k


def test_two_fsdp_processes_train_like_one(prepared, tmp_path):
    """torchrun, FSDP2 over both encoders' blocks: 2 processes x 4 == 1 process x 8."""
    common = ["--data", str(prepared), "--train.log_every", "1", "--max-steps", "3"]
    assert pretrain(*common, "--output", tmp_path / "one", "--train.batch_size", "8") == 0
    env = {**os.environ, "OMP_NUM_THREADS": "1", "GLOO_SOCKET_IFNAME": "lo"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "masklm", "pretrain", *TINY, *common, "--output", str(tmp_path / "two"),
           "--train.batch_size", "4", "--dist.strategy", "fsdp"]  # fmt: skip
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    train = lambda run: [r["loss"] for r in read_metrics(run) if r["split"] == "train"]  # noqa: E731
    assert train(tmp_path / "one") == pytest.approx(train(tmp_path / "two"), rel=1e-5)
    a, b = final_weights(tmp_path / "one"), final_weights(tmp_path / "two")
    assert a.keys() == b.keys()
    for k in a:
        assert torch.allclose(a[k], b[k], atol=1e-5), k


# ----------------------------------------------------------------------------------------------------------------
# Export

CORPUS = [
    "the cat sat on the mat . the dog ran after the cat !",
    "bread , cheese and apples make a good lunch",
] * 8


@pytest.fixture(scope="module")
def tok():
    return train_tokenizer(CORPUS, vocab_size=80)


def electra_folder(path: Path, tok, **cfg_kw: object) -> tuple[Path, ElectraPreTraining]:
    model = ElectraPreTraining(tiny_model_config(tok.get_vocab_size(), **cfg_kw))
    with torch.no_grad():  # biases and LayerNorms away from 0 / 1 so that every weight matters
        for name, p in model.named_parameters():
            if "norm" in name or "bias" in name:
                p.add_(torch.randn_like(p) * 0.2)
    info = ModelInfo(architecture="ElectraPreTraining", task=Electra().info())
    return save_model(model, path, tok, info), model.eval()


@pytest.mark.parametrize("embedding_size", [None, 16])
def test_hf_export_matches_transformers(tmp_path, tok, embedding_size, one_thread):
    transformers = pytest.importorskip("transformers")
    folder, model = electra_folder(tmp_path / "model", tok, embedding_size=embedding_size)
    disc = export_model(folder, tmp_path / "disc")  # checks parity itself; again here, explicitly
    assert cli("export", folder, tmp_path / "gen", "--generator") == 0
    config = json.loads((disc / "config.json").read_text())
    assert config["model_type"] == "electra" and config["architectures"] == ["ElectraForPreTraining"]
    assert config["embedding_size"] == (embedding_size or 32)
    gen_config = json.loads((tmp_path / "gen" / "config.json").read_text())
    assert gen_config["architectures"] == ["ElectraForMaskedLM"] and gen_config["hidden_size"] == 16

    ids = torch.tensor(
        [tok.encode("the cat sat on the mat").ids, tok.encode("bread and cheese").ids + [0] * 3]
    )
    mask = (ids != 0).long()
    hf_disc, info = transformers.ElectraForPreTraining.from_pretrained(disc, output_loading_info=True)
    assert not any(info.values()), info
    with torch.no_grad():
        assert torch.allclose(hf_disc.eval()(ids, attention_mask=mask).logits, model(ids, mask), atol=1e-5)
        hf_gen, info = transformers.ElectraForMaskedLM.from_pretrained(
            tmp_path / "gen", output_loading_info=True
        )
        assert not any(info.values()), info
        want = model.generator_model().eval()(ids, mask)
        assert torch.allclose(hf_gen.eval()(ids, attention_mask=mask).logits, want, atol=1e-5)
    if embedding_size is not None:
        assert "electra.embeddings_project.weight" in hf_disc.state_dict()


def test_hf_export_refusals(tmp_path, tok):
    folder, _ = electra_folder(tmp_path / "model", tok)
    bert = save_model(MaskedLM(tiny_model_config(tok.get_vocab_size())), tmp_path / "bert", tok)
    with pytest.raises(UserError, match="--generator exports an ELECTRA model's generator"):
        export_model(bert, tmp_path / "out", generator=True)
    with pytest.raises(UserError, match="model.embedding_size=16"):  # BERT has no embedding projection
        config_to_hf(tiny_model_config(100, embedding_size=16), "MaskedLM")
    modern, _ = electra_folder(tmp_path / "modern", tok, norm="pre")
    with pytest.raises(UserError, match="model.norm=pre"):
        export_model(modern, tmp_path / "out2")
    assert not (tmp_path / "out2").exists()


def test_a_relu_discriminator_exports_and_its_generator_is_refused(tmp_path, tok, one_thread):
    """transformers' ElectraDiscriminatorPredictions follows config.hidden_act; only the generator's prediction
    head is gelu whatever the config says."""
    pytest.importorskip("transformers")
    folder, _ = electra_folder(tmp_path / "model", tok, hidden_act="relu")
    export_model(folder, tmp_path / "disc")  # its transformers parity check passes
    with pytest.raises(UserError, match="model.hidden_act=relu.*--model.hidden_act gelu"):
        export_model(folder, tmp_path / "gen", generator=True)
    assert not (tmp_path / "gen").exists()


def test_onnx_export_of_the_discriminator(tmp_path, tok, one_thread):
    pytest.importorskip("onnxruntime")
    folder, _ = electra_folder(tmp_path / "model", tok)
    out = export_model(folder, tmp_path / "onnx", "onnx")  # checked against ONNX Runtime
    assert (out / "model.onnx").is_file()


def test_generator_view_is_a_masked_lm(tmp_path, tok):
    folder, model = electra_folder(tmp_path / "model", tok)
    gen, _, info = load_model(folder, architecture="MaskedLM")
    assert type(gen) is MaskedLM and not info.notes
    as_generator, _, _ = load_model(folder, architecture="ElectraGenerator")
    assert isinstance(as_generator, ElectraGenerator)
    ids = torch.tensor([tok.encode("the cat sat").ids])
    with torch.no_grad():
        assert torch.allclose(gen.eval()(ids), model.generator_model().eval()(ids))
