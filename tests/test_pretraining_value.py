"""benchmarks.pretraining_value's result cache: a result is reused only for the settings that produced it."""

import argparse
import json

from benchmarks.pretraining_value import RANDOM, SETTINGS, cache_key


def _args(**changes: object) -> argparse.Namespace:
    return argparse.Namespace(**{"run": ["runs/a"], "random_of": None, "tag": "", **SETTINGS, **changes})


def test_default_settings_keep_the_key_of_results_cached_before_settings_were_keyed() -> None:
    assert cache_key(_args(), "runs/a", "1000", 3e-4, 0) == json.dumps(["runs/a", "1000", 3e-4, 0, ""])
    assert json.loads(cache_key(_args(), RANDOM, "all", 1e-3, 2))[0] == "random init of runs/a"


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
