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
