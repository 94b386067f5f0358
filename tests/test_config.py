"""Config loading: presets, YAML, dotted overrides, validation, and the docs listing every key."""

import dataclasses
from pathlib import Path

import pytest

from masklm.config import (
    PRESETS,
    Config,
    FinetuneConfig,
    FinetuneTrainConfig,
    ModelConfig,
    TrainConfig,
    build_config,
    config_from_dict,
    load_config,
    section_settings,
    settings,
)
from masklm.errors import UserError


def test_layers_apply_in_order(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("train: {lr: 0.002, batch_size: 4}\nmask: {rate: 0.2}\n")
    cfg = load_config("tiny", f, {"train.lr": "3e-4", "model.hidden_size": "64", "mask.strategy": "span"})
    assert cfg.train.lr == 3e-4  # command line beats the file
    assert cfg.train.batch_size == 4  # the file beats the preset
    assert cfg.mask.rate == 0.2 and cfg.mask.strategy == "span"
    assert cfg.model.hidden_size == 64 and cfg.model.num_hidden_layers == 2  # the rest from the preset


@pytest.mark.parametrize("name", PRESETS)
def test_presets_are_valid(name):
    cfg = load_config(name)
    assert cfg.model.hidden_size % cfg.model.num_attention_heads == 0


def test_base_preset_is_bert_base():
    m = load_config("base").model
    assert (m.num_hidden_layers, m.hidden_size, m.num_attention_heads, m.intermediate_size) == (
        12,
        768,
        12,
        3072,
    )
    m = load_config("large").model
    assert (m.num_hidden_layers, m.hidden_size, m.num_attention_heads) == (24, 1024, 16)


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"train.lrr": "1"}, "unknown config key 'train.lrr'"),
        ({"nosection.x": "1"}, "unknown config key"),
        ({"train.batch_size": "0"}, "batch_size must be positive"),
        ({"train.batch_size": "-3"}, "batch_size must be positive"),
        ({"train.batch_size": "2.5"}, "expects int"),
        ({"train.compile": "maybe"}, "expects bool"),
        ({"mask.rate": "1.5"}, "mask.rate"),
        ({"model.num_attention_heads": "5"}, "divisible"),
        ({"data.seq_len": "1024"}, "max_position_embeddings"),
        ({"mask.strategy": "random"}, "mask.strategy"),
        ({"train.schedule": "exp"}, "train.schedule"),
        # numbers a run would take and then train badly with (NaN weights, a negative rate) or crash on
        ({"train.eps": "0"}, "train.eps must be positive"),
        ({"train.min_lr_ratio": "-1"}, "min_lr_ratio must be in"),
        ({"train.decay_fraction": "1.5"}, "decay_fraction must be in"),
        ({"train.beta1": "1.0"}, "beta1 and beta2"),
        ({"train.seed": "-1"}, "train.seed"),
        ({"train.threads": "0"}, "train.threads"),
        ({"train.device": "tpu"}, "train.device must be"),
        ({"train.device": "meta"}, "train.device must be"),
        ({"model.hidden_dropout_prob": "1.5"}, "hidden_dropout_prob"),
        ({"model.initializer_range": "-0.02"}, "initializer_range"),
        ({"model.layer_norm_eps": "-1"}, "layer_norm_eps"),
        ({"model.rope_theta": "0"}, "rope_theta"),
        ({"model.pad_vocab_multiple": "0"}, "pad_vocab_multiple"),
        ({"data.max_documents": "0"}, "max_documents"),
    ],
)
def test_bad_values_are_one_line_user_errors(overrides, message):
    with pytest.raises(UserError, match=message) as e:
        load_config("tiny", None, overrides)
    assert "\n" not in str(e.value)


def test_bad_yaml_and_missing_file(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        load_config(None, tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("train: [unclosed\n")
    with pytest.raises(UserError, match="not valid YAML"):
        load_config(None, bad)
    with pytest.raises(UserError, match="unknown preset"):
        load_config("huge")
    with pytest.raises(UserError, match="is a folder"):
        load_config(None, tmp_path)
    section = tmp_path / "section.yaml"
    section.write_text("train: 5\n")
    with pytest.raises(UserError, match="section 'train' in .* must map settings to values"):
        load_config(None, section)
    section.write_text("model:\ntrain: {lr: 0.002}\n")  # an empty section is no section
    assert load_config(None, section).train.lr == 0.002


def test_round_trip_through_dict():
    cfg = load_config("small", None, {"train.max_steps": "7", "data.tokenizer": "x.json"})
    again = config_from_dict(cfg.to_dict())
    assert again == cfg
    none_again = load_config("small", None, {"train.max_steps": "none"})
    assert none_again.train.max_steps is None


def test_every_key_is_documented():
    doc = (Path(__file__).parents[1] / "docs" / "configuration.md").read_text()
    for section in dataclasses.fields(Config):
        for f in dataclasses.fields(getattr(Config(), section.name)):
            assert f"`{section.name}.{f.name}`" in doc, (
                f"{section.name}.{f.name} missing from docs/configuration.md"
            )


def test_every_fine_tuning_key_is_documented():
    doc = (Path(__file__).parents[1] / "docs" / "configuration.md").read_text()
    for s in settings(FinetuneConfig):
        assert f"`{s.key}`" in doc, f"{s.key} missing from docs/configuration.md"


@pytest.mark.parametrize("root", [Config, FinetuneConfig])
def test_every_setting_has_help_and_a_valid_default(root):
    for s in settings(root):
        assert s.help.strip(), s.key
        assert s.choices is None or s.default in s.choices, s.key


def test_a_changed_default_keeps_the_help_of_the_base_field():
    pre, ft = section_settings(TrainConfig, "train"), section_settings(FinetuneTrainConfig, "train")
    assert ft["beta2"].default == 0.999 and ft["beta2"].help == pre["beta2"].help
    assert ft["lr"].default is None and ft["lr"].help != pre["lr"].help  # its own help (None: by the width)


@pytest.mark.parametrize(
    "overrides, allowed",
    [
        ({"model.norm": "middle"}, "post, pre"),
        ({"train.log": "wandb"}, "jsonl, tensorboard"),
        ({"dist.backend": "mpi"}, "auto, gloo, nccl"),
    ],
)
def test_a_bad_choice_names_the_field_and_the_allowed_values(overrides, allowed):
    (key,) = overrides
    with pytest.raises(UserError, match=f"{key} must be one of {allowed}"):
        load_config("tiny", None, overrides)


def test_validate_checks_choices_of_configs_built_in_code():
    with pytest.raises(UserError, match="model.ffn must be one of mlp, geglu, not 'swiglu'"):
        Config(model=ModelConfig(ffn="swiglu")).validate()
    with pytest.raises(UserError, match="train.schedule must be one of"):
        FinetuneConfig(train=FinetuneTrainConfig(schedule="exp")).validate()


def test_train_log_defaults_to_jsonl_and_takes_tensorboard():
    assert load_config("tiny").train.log == "jsonl"
    assert load_config("tiny", None, {"train.log": "tensorboard"}).train.log == "tensorboard"
    assert build_config({"train.log": "tensorboard"}).train.log == "tensorboard"


@pytest.fixture(scope="module")
def prepared(tmp_path_factory) -> Path:
    """A real prepared data folder (a run refused for its device must not be refused for its data first)."""
    from helpers import prepare_tiny, write_walk_corpus

    root = tmp_path_factory.mktemp("prep")
    return prepare_tiny(write_walk_corpus(root / "corpus", n_docs=20), root / "data")


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="a machine without a CUDA GPU")
@pytest.mark.parametrize("device, precision", [("cuda", "auto"), ("cuda:1", "fp32")])
def test_a_device_this_machine_lacks_is_refused_when_a_run_starts(
    device, precision, prepared, tmp_path, capsys
):
    """A config naming a GPU still loads here (a GPU run's config.yaml: evaluate it, resume it with
    --train.device cpu); starting a run on it (with data it could train on) is refused in one line naming the
    device, before anything is written."""
    from helpers import cli

    from masklm.config import check_device

    cfg = load_config("tiny", None, {"train.device": device, "train.precision": precision})
    with pytest.raises(UserError, match="GPU"):
        check_device(cfg.train.device, cfg.train.precision)
    capsys.readouterr()
    argv = ["--train.device", device, "--train.precision", precision, "--output", tmp_path / "run"]
    assert cli("pretrain", "--preset", "tiny", "--data", prepared, *argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"error: train.device {device}: ") and "GPU" in err[0], err
    assert not (tmp_path / "run").exists()


def test_fp16_training_is_refused_for_want_of_loss_scaling(tmp_path, capsys):
    """fp16 autocast without a gradient scaler lets small gradients round to 0: refused in one line, before
    anything is written, on any machine (pretraining and fine-tuning configs alike)."""
    from helpers import cli

    with pytest.raises(UserError, match="needs loss scaling"):
        load_config("tiny", None, {"train.precision": "fp16"})
    argv = ["--task", "classification", "--model", tmp_path, "--train", tmp_path / "t.csv"]
    argv += ["--validation", tmp_path / "v.csv", "--train.precision", "fp16", "--output", tmp_path / "run"]
    assert cli("finetune", *argv) == 2
    assert (
        "train.precision fp16 is not offered" in capsys.readouterr().err and not (tmp_path / "run").exists()
    )
