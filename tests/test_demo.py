"""The demo's closing check: Rotten Tomatoes splits and the pretrained-vs-random-init fine-tuning (tiny model)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml
from helpers import tiny_model_config

from masklm.data.tokenizer import train_tokenizer
from masklm.demo import (
    SentimentCheck,
    fine_tuning_epochs,
    lift_verdict,
    rotten_tomatoes_splits,
    sentiment_lift,
)
from masklm.model.heads import MaskedLM
from masklm.model.io import ModelInfo, save_model

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py

TINY = SentimentCheck(
    labels=48,
    validation=16,
    test=24,
    lrs=(1e-3, 3e-3),
    seeds=(0, 1),
    epochs=1,
    min_steps=4,
    batch_size=16,
    max_length=24,
)


def test_splits_are_disjoint_seeded_and_hold_only_rotten_tomatoes():
    a, b = rotten_tomatoes_splits(TINY), rotten_tomatoes_splits(TINY)
    assert a == b
    assert [len(a[k]) for k in ("train", "validation", "test")] == [48, 16, 24]
    texts = [{r["text"] for r in a[k]} for k in ("train", "validation", "test")]
    assert not (texts[0] & texts[1]) and not (texts[0] & texts[2]) and not (texts[1] & texts[2])
    assert {r["label"] for part in a.values() for r in part} <= {"0", "1"}
    assert rotten_tomatoes_splits(TINY, seed=1)["train"] != a["train"]
    # the training rows of a larger check begin with the smaller one's: more labels only add rows
    bigger = rotten_tomatoes_splits(SentimentCheck(labels=96, validation=16, test=24))
    assert bigger["train"][:48] == a["train"] and bigger["test"] == a["test"]


def test_lift_fine_tunes_both_starts_at_their_best_lr(tmp_path, capsys):
    rows = rotten_tomatoes_splits(SentimentCheck())["train"][:300]
    tok = train_tokenizer([r["text"] for r in rows], vocab_size=200)
    run = tmp_path / "run"
    torch.manual_seed(0)
    save_model(MaskedLM(tiny_model_config(tok.get_vocab_size())), run / "model", tok, ModelInfo("MaskedLM"))

    result = sentiment_lift(run / "model", TINY, threads=1, verbose=True)

    # one line per fine-tuning on stdout; the runs' own output (start lines, progress bars) goes to a log file
    out, err = capsys.readouterr()
    assert len(out.splitlines()) == 2 * len(TINY.lrs) * len(TINY.seeds) and "validation accuracy" in out
    assert "train" not in err
    assert "parameters" in (run / "model" / "demo-sentiment" / "finetune.log").read_text()

    assert set(result) == {"pretrained", "random"}
    for init, r in result.items():
        assert r["lr"] in TINY.lrs and len(r["tests"]) == len(TINY.seeds)
        assert r["test"] == pytest.approx(sum(r["tests"]) / len(r["tests"]))
        assert all(0.0 <= t <= 1.0 for t in r["tests"])
        # the best lr is the one with the best mean validation accuracy
        val = {
            lr: sum(
                json.loads(
                    (
                        run / "model" / "demo-sentiment" / f"{init}-lr{lr:g}-seed{s}" / "summary.json"
                    ).read_text()
                )["accuracy"]
                for s in TINY.seeds
            )
            for lr in TINY.lrs
        }
        assert val[r["lr"]] == max(val.values())
    summaries = [
        json.loads(p.read_text()) for p in sorted((run / "model" / "demo-sentiment").glob("*/summary.json"))
    ]
    assert len(summaries) == 2 * len(TINY.lrs) * len(TINY.seeds)
    assert {s["init"] for s in summaries} == {"pretrained", "random"}
    assert all(s["train_examples"] == 48 and s["validation_examples"] == 16 for s in summaries)
    # both starts fine-tune with the check's layer-wise lr decay
    configs = [
        yaml.safe_load(p.read_text()) for p in (run / "model" / "demo-sentiment").glob("*/config.yaml")
    ]
    assert len(configs) == len(summaries)
    assert {c["train"]["layer_decay"] for c in configs} == {TINY.layer_decay} != {1.0}
    assert Path(run / "model" / "demo-sentiment" / "test.csv").read_text().count("\n") == 25


@pytest.mark.parametrize(
    ("n", "want"),
    [(300, 15), (1000, 5), (10_000, 3), (31, 150)],  # 10, 32, 313 and 1 steps per epoch at batch 32
)
def test_few_labels_get_more_epochs_up_to_the_minimum_steps(n, want):
    """The demo's check and benchmarks/pretraining_value.py count epochs with this one function."""
    assert fine_tuning_epochs(n, batch_size=32, epochs=3, min_steps=150) == want


def _result(pre: list[float], rnd: list[float]) -> dict:
    return {
        name: {"lr": 1e-3, "test": sum(tests) / len(tests), "tests": tests}
        for name, tests in (("pretrained", pre), ("random", rnd))
    }


def test_the_verdict_reads_the_difference_against_its_standard_error():
    """A gap beyond two standard errors of the difference of means is a gain (or a loss); a smaller one is called
    a tie, whatever its sign. Standard error: sqrt(var_pretrained / n + var_random / n), variances over seeds."""
    gain = lift_verdict(_result([0.70, 0.71], [0.65, 0.66]))  # se = sqrt(0.5/2 + 0.5/2) = 0.71
    assert gain.startswith("pretraining helps: +5.0 points") and "over 2 seeds, 1.4 points" in gain
    tie = lift_verdict(_result([0.66, 0.64], [0.65, 0.64]))  # se = sqrt(2/2 + 0.5/2) = 1.12
    assert tie.startswith("a tie: +0.5 points") and "2.2 points" in tie and "--max-minutes 60" in tie
    assert lift_verdict(_result([0.64, 0.66], [0.655, 0.655])).startswith("a tie: -0.5 points")
    loss = lift_verdict(_result([0.60, 0.61], [0.66, 0.665]))
    assert loss.startswith("random init is ahead by 5.8 points")
    # the same +1.5 points: a gain with steady seeds, a tie with noisy ones
    assert lift_verdict(_result([0.665, 0.665, 0.67, 0.67], [0.65, 0.65, 0.655, 0.655])).startswith(
        "pretraining"
    )
    assert lift_verdict(_result([0.64, 0.695, 0.635, 0.70], [0.65, 0.65, 0.655, 0.655])).startswith("a tie")
    assert "one seed" in lift_verdict(_result([0.70], [0.60]))


def test_the_demo_prints_both_accuracies_and_the_verdict(tmp_path, monkeypatch, capsys):
    import masklm.demo
    from masklm import cli

    monkeypatch.setattr(masklm.demo, "sentiment_lift", lambda *a, **k: _result([0.70, 0.71], [0.65, 0.66]))
    cli._report_lift(tmp_path)
    out = capsys.readouterr().out.splitlines()
    assert "pretrained 70.5% (lr 0.001) vs random init 65.5% (lr 0.001): +5.0 points" in out[-2]
    assert out[-1].startswith("pretraining helps: +5.0 points")
