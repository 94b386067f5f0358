"""benchmarks.pretraining_value's result cache: a result is reused only for the start and settings that
produced it."""

import argparse
import json
from pathlib import Path

import pytest

from benchmarks.pretraining_value import RANDOM, SETTINGS, cache_key, start_fingerprint


@pytest.fixture(autouse=True)
def runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """runs/a and runs/b: run folders whose model/ holds a config, a tokenizer and weights (stand-in bytes: the
    key hashes them, it does not load them)."""
    monkeypatch.chdir(tmp_path)
    for name in ("a", "b"):
        write_model(tmp_path / "runs" / name, weights=f"weights of {name}")
    return tmp_path / "runs"


def write_model(run: Path, weights: str, config: str = '{"hidden_size": 8}') -> None:
    model = run / "model"
    model.mkdir(parents=True, exist_ok=True)
    (model / "config.json").write_text(config)
    (model / "tokenizer.json").write_text("{}")
    (model / "model.safetensors").write_text(weights)
    start_fingerprint.cache_clear()


def _args(**changes: object) -> argparse.Namespace:
    return argparse.Namespace(**{"run": ["runs/a"], "random_of": None, "tag": "", **SETTINGS, **changes})


def test_default_settings_leave_the_key_at_start_labels_lr_seed_and_tag() -> None:
    key = json.loads(cache_key(_args(), "runs/a", "1000", 3e-4, 0))
    assert key[1:] == ["1000", 3e-4, 0, ""]
    assert key[0].startswith("runs/a (")
    assert json.loads(cache_key(_args(), RANDOM, "all", 1e-3, 2))[0].startswith("random init of runs/a (")


def test_a_start_pretrained_again_under_the_same_path_does_not_reuse_its_results(runs: Path) -> None:
    before = cache_key(_args(), "runs/a", "1000", 3e-4, 0)
    twin_before = cache_key(_args(), RANDOM, "1000", 3e-4, 0)
    write_model(runs / "a", weights="weights of a, pretrained again")
    assert cache_key(_args(), "runs/a", "1000", 3e-4, 0) != before
    # random init takes the architecture and tokenizer only: new weights keep its results
    assert cache_key(_args(), RANDOM, "1000", 3e-4, 0) == twin_before
    write_model(runs / "a", weights="weights of a", config='{"hidden_size": 16}')
    assert cache_key(_args(), RANDOM, "1000", 3e-4, 0) != twin_before


def test_a_changed_setting_changes_the_key_and_names_itself() -> None:
    base = cache_key(_args(), "runs/a", "1000", 3e-4, 0)
    decayed = cache_key(_args(layer_decay=0.8), "runs/a", "1000", 3e-4, 0)
    assert decayed != base
    assert json.loads(decayed)[-1] == {"layer_decay": 0.8}
    assert cache_key(_args(pooling="cls"), "runs/a", "1000", 3e-4, 0) not in (base, decayed)


def test_random_of_names_the_random_twins_source_and_keeps_the_pretrained_keys() -> None:
    other = _args(run=["runs/b"], random_of="runs/a")
    # the twin of runs/a: the same key as when runs/a was the first --run, so its cached results are reused
    assert cache_key(other, RANDOM, "1000", 1e-3, 1) == cache_key(_args(), RANDOM, "1000", 1e-3, 1)
    assert cache_key(_args(run=["runs/b"]), RANDOM, "1000", 1e-3, 1) != cache_key(
        other, RANDOM, "1000", 1e-3, 1
    )
    assert cache_key(other, "runs/b", "1000", 1e-3, 1) == cache_key(
        _args(run=["runs/b"]), "runs/b", "1000", 1e-3, 1
    )


def test_best_lr_from_the_cache_takes_only_the_lrs_a_start_was_swept_over() -> None:
    from benchmarks.pretraining_value import best_lr, swept_lrs

    args = _args(lrs=[1e-4, 3e-4, 1e-3, 3e-3], seeds=[0, 1])
    vals = {"runs/a": {1e-4: 0.60, 3e-4: 0.70, 1e-3: 0.65}, "runs/b": {1e-4: 0.5, 1e-3: 0.6, 3e-3: 0.62}}
    cache = {
        cache_key(args, run, "1000", lr, seed): {"val": v, "test": v}
        for run, by_lr in vals.items()
        for lr, v in by_lr.items()
        for seed in args.seeds
    }
    del cache[cache_key(args, "runs/b", "1000", 1e-4, 1)]  # 1e-4 lacks a seed for runs/b: not swept
    assert swept_lrs(cache, "runs/a", "1000", args) == [1e-4, 3e-4, 1e-3]
    assert swept_lrs(cache, "runs/b", "1000", args) == [1e-3, 3e-3]
    assert best_lr(cache, "runs/a", "1000", args)[0] == 3e-4
    lr, results = best_lr(cache, "runs/b", "1000", args)
    assert lr == 3e-3 and [r["val"] for r in results] == [0.62, 0.62]
