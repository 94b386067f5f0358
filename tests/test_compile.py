"""torch.compile in training (`train.compile true`; off by default, the `small` preset included): the compiled
model's gradients are the eager model's, a compiled run resumes exactly, and a CPU without a C++ compiler trains
without compile."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from helpers import final_weights, prepare_tiny, read_metrics, tiny_model_config, write_walk_corpus

from masklm.cli import main
from masklm.model.heads import MaskedLM
from masklm.objectives.mlm import mlm_loss

MODERN = [
    "--model.norm",
    "pre",
    "--model.position",
    "rotary",
    "--model.ffn",
    "geglu",
    "--model.bias",
    "false",
]


@pytest.fixture(autouse=True)
def restore_determinism():
    """train.compile turns deterministic algorithms on for the process; the other tests run as before."""
    before = (
        torch.are_deterministic_algorithms_enabled(),
        torch.is_deterministic_algorithms_warn_only_enabled(),
    )
    yield
    torch.use_deterministic_algorithms(before[0], warn_only=before[1])


@pytest.fixture(scope="module")
def prepared(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("prep")
    return prepare_tiny(write_walk_corpus(root / "corpus", n_docs=40), root / "data")


def test_compiled_gradients_match_eager_in_bf16():
    """The `small` preset's block (pre-LN, rotary, GeGLU, no biases) under bf16 autocast, one batch, eager and
    compiled. With rotary written as x cos + rotate_half(x) sin, inductor gave the keys' projection non-finite
    gradients at these shapes (head size 64, 128 positions)."""
    cfg = tiny_model_config(
        256,
        hidden_size=128,
        num_hidden_layers=1,
        intermediate_size=176,
        max_position_embeddings=128,
        norm="pre",
        position="rotary",
        ffn="geglu",
        bias=False,
    )
    torch.manual_seed(0)
    model = MaskedLM(cfg)
    ids = torch.randint(5, 256, (4, 128))
    labels = torch.where(torch.rand(4, 128) < 0.3, ids, torch.full_like(ids, -100))
    batch = {"input_ids": ids, "labels": labels}
    grads = {}
    for name, m in [("eager", model), ("compiled", torch.compile(model))]:
        model.zero_grad(set_to_none=True)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = mlm_loss(m, batch)
        loss.backward()
        grads[name] = {n: p.grad.float().clone() for n, p in model.named_parameters() if p.grad is not None}
    assert grads["eager"].keys() == grads["compiled"].keys()
    for n, g in grads["compiled"].items():
        assert torch.isfinite(g).all(), n
        ref = grads["eager"][n]
        # bf16 rounds differently in fused kernels; a wrong gradient is off by far more than this
        assert (g - ref).norm() <= 0.1 * ref.norm() + 1e-6, n


def test_compiled_run_resumes_exactly(prepared, tmp_path):
    """6 compiled steps == 3 + --resume + 3, bit for bit, in bf16 with the modern block (a constant schedule, so
    that --max-steps does not change the learning rates); every loss finite."""
    common = [
        "pretrain",
        "--preset",
        "tiny",
        "--data",
        str(prepared),
        "--train.compile",
        "true",
        "--train.precision",
        "bf16",
        "--train.eval_every",
        "0",
        "--train.schedule",
        "constant",
        "--train.warmup",
        "2",
        "--train.checkpoint_every",
        "3",
        "--train.log_every",
        "1",
        *MODERN,
    ]
    assert main([*common, "--output", str(tmp_path / "full"), "--max-steps", "6"]) == 0
    assert main([*common, "--output", str(tmp_path / "half"), "--max-steps", "3"]) == 0
    assert main([*common, "--output", str(tmp_path / "half"), "--max-steps", "6", "--resume"]) == 0
    a, b = final_weights(tmp_path / "full"), final_weights(tmp_path / "half")
    for k in a:
        assert torch.equal(a[k], b[k]), k
    losses = [r["loss"] for r in read_metrics(tmp_path / "full") if r["split"] == "train"]
    assert len(losses) == 6 and all(torch.isfinite(torch.tensor(losses)))
    later = lambda run: [r["loss"] for r in read_metrics(run) if r["split"] == "train" and r["step"] > 3]  # noqa: E731
    assert later(tmp_path / "full") == later(tmp_path / "half")


def test_no_cpp_compiler_trains_without_compile(prepared, tmp_path, monkeypatch, capsys):
    import masklm.train.run as run

    def no_compile(*args, **kwargs):
        raise AssertionError("torch.compile called without a C++ compiler")

    monkeypatch.setattr(run, "cpp_compiler", lambda: None)
    monkeypatch.setattr(torch, "compile", no_compile)
    argv = ["pretrain", "--preset", "tiny", "--data", str(prepared), "--output", str(tmp_path / "run")]
    assert main([*argv, "--train.compile", "true", "--max-steps", "2", "--train.eval_every", "0"]) == 0
    assert "no C++ compiler found" in capsys.readouterr().err
    assert (tmp_path / "run" / "model" / "model.safetensors").is_file()
