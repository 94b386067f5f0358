"""benchmarks.pretraining_value's result cache: a result is reused only for the settings that produced it."""

import argparse
import json

from benchmarks.pretraining_value import RANDOM, SETTINGS, cache_key


def _args(**changes: object) -> argparse.Namespace:
    return argparse.Namespace(run=["runs/a"], tag="", **{**SETTINGS, **changes})


def test_default_settings_keep_the_key_of_results_cached_before_settings_were_keyed() -> None:
    assert cache_key(_args(), "runs/a", "1000", 3e-4, 0) == json.dumps(["runs/a", "1000", 3e-4, 0, ""])
    assert json.loads(cache_key(_args(), RANDOM, "all", 1e-3, 2))[0] == "random init of runs/a"


def test_a_changed_setting_changes_the_key_and_names_itself() -> None:
    base = cache_key(_args(), "runs/a", "1000", 3e-4, 0)
    decayed = cache_key(_args(layer_decay=0.8), "runs/a", "1000", 3e-4, 0)
    assert decayed != base
    assert json.loads(decayed)[-1] == {"layer_decay": 0.8}
    assert cache_key(_args(pooling="cls"), "runs/a", "1000", 3e-4, 0) not in (base, decayed)
