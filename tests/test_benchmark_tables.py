"""The comparison tables of benchmarks/: a difference between two sides is taken over the seeds both ran."""

from __future__ import annotations

from typing import Any

from benchmarks import multiple_choice_vs_hf, qa_vs_hf


def _diff_row(table: str) -> list[str]:
    row = next(line for line in table.splitlines() if "− transformers" in line)
    return [cell.strip() for cell in row.strip("|").split("|")]


def test_multiple_choice_difference_uses_the_seeds_both_sides_ran() -> None:
    # transformers ran seeds 0-2, masklm seed 0 only, and tied there: the difference is 0, not seed 0 against
    # the mean of three
    rows: list[dict[str, Any]] = [
        {"side": "hf", "seed": s, "val": v, "test": v, "wall_s": 10.0}
        for s, v in ((0, 0.5), (1, 0.4), (2, 0.45))
    ] + [{"side": "masklm", "seed": 0, "val": 0.5, "test": 0.5, "wall_s": 5.0}]
    side, seeds, val, test, speed = _diff_row(multiple_choice_vs_hf.results_table(rows))
    assert (seeds, val, test, speed) == ("0", "+0.00", "+0.00", "speed-up 2.00x")


def test_qa_difference_uses_the_seeds_both_sides_ran() -> None:
    def run(side: str, seed: int, f1: float) -> dict[str, Any]:
        return {"side": side, "seed": seed, "val": f1, "test": {"exact_match": f1, "f1": f1}, "wall_s": 1.0}

    rows = [run("hf", 0, 50.0), run("hf", 1, 40.0), run("masklm", 1, 43.0), run("masklm", 2, 90.0)]
    side, seeds, val, em, f1, wall = _diff_row(qa_vs_hf.results_table(rows))
    assert (seeds, val, em, f1) == ("1", "+3.00", "+3.00", "+3.00")
