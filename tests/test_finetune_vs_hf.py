"""benchmarks/finetune_vs_hf.py's bookkeeping, without training: a stopped benchmark goes on from its --json file."""

import json

import pytest

import benchmarks.finetune_vs_hf as fv


@pytest.fixture
def fake_task(monkeypatch):
    """A task whose two sides only count their calls and return a score from the seed."""
    calls = []

    def side(name):
        def run(*args):
            run_args = args[1] if name == "transformers" else args[2]
            calls.append((name, run_args.seed))
            return {
                "wall_s": 1.0,
                "test_eval_s": 0.1,
                "val": 0.5,
                "test": {"accuracy": 0.6 + run_args.seed / 100},
            }

        return run

    spec = fv.TaskSpec(
        "fake",
        "classification",
        "accuracy",
        load=lambda seed: ([{"x": i} for i in range(6)], [{"x": 0}] * 2, [{"x": 0}] * 2),
        write=lambda work, splits: {"train": work / "t", "val": work / "v", "test": work / "e"},
        run_hf=side("transformers"),
        settings={"epochs": 1, "lr": 1e-4, "batch_size": 2, "max_length": 16},
        sizes=(4, 2, 2),
        run_masklm=side("masklm"),
    )
    monkeypatch.setitem(fv.TASKS, "fake", spec)
    return calls


def test_a_stopped_benchmark_goes_on_from_its_json_file(tmp_path, fake_task):
    out = tmp_path / "runs.jsonl"
    argv = ["--tasks", "fake", "--seeds", "0", "1", "--no-write", "--json", str(out), "--threads", "1"]
    assert fv.main(argv) == 0
    assert sorted(fake_task) == [("masklm", 0), ("masklm", 1), ("transformers", 0), ("transformers", 1)]
    records = [json.loads(line) for line in out.read_text().splitlines()]
    settings = {"epochs": 1, "lr": 1e-4, "batch_size": 2, "max_length": 16, "threads": 1}
    assert len(records) == 4 and all(r["settings"] == settings for r in records)
    # masklm's records hold the settings the variant resolved to, attention dropout included
    ours = [r for r in records if r["side"] == "masklm default"]
    assert [r["masklm_settings"]["train.attention_dropout"] for r in ours] == [0.0, 0.0]

    # stopped after three runs: only the missing one runs again, and the file ends with all four
    out.write_text("".join(json.dumps(r) + "\n" for r in records[:3]))
    fake_task.clear()
    assert fv.main(argv) == 0
    missing = (records[3]["side"].split()[0], records[3]["seed"])
    assert fake_task == [missing]

    def runs(rows):
        return sorted((r["seed"], r["side"], r["test"]["accuracy"]) for r in rows)

    assert runs(map(json.loads, out.read_text().splitlines())) == runs(records)

    # other settings are other runs: nothing is reused
    fake_task.clear()
    assert fv.main([*argv, "--lr", "3e-4"]) == 0
    assert len(fake_task) == 4
    assert len(out.read_text().splitlines()) == 8
    # another thread count (the wall-time columns depend on it) runs both sides again
    fake_task.clear()
    assert fv.main([*argv[:-2], "--threads", "2"]) == 0
    assert len(fake_task) == 4
    # a masklm run with other settings than its record's (an older default) runs masklm again, not transformers
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    for r in lines:
        if "masklm_settings" in r:
            r["masklm_settings"]["train.attention_dropout"] = None
    out.write_text("".join(json.dumps(r) + "\n" for r in lines))
    fake_task.clear()
    assert fv.main(argv) == 0
    assert sorted(fake_task) == [("masklm", 0), ("masklm", 1)]


def test_sizes_override_the_tasks_own(tmp_path, fake_task):
    out = tmp_path / "runs.jsonl"
    assert (
        fv.main(
            ["--tasks", "fake", "--seeds", "0", "--no-write", "--json", str(out), "--sizes", "5", "1", "2"]
        )
        == 0
    )
    assert {tuple(json.loads(line)["sizes"]) for line in out.read_text().splitlines()} == {(5, 1, 2)}


def test_the_report_pairs_the_sides_seed_by_seed(fake_task):
    """The Δ per seed cell: masklm minus transformers on each seed, mean ± standard error, seeds ahead."""
    records = []
    for seed, (hf, ours) in enumerate([(0.60, 0.62), (0.70, 0.66), (0.50, 0.55)]):
        for side, value in (("transformers", hf), ("masklm default", ours)):
            records.append(
                {
                    "task": "fake",
                    "seed": seed,
                    "side": side,
                    "sizes": [4, 2, 2],
                    "wall_s": 1.0,
                    "val": 0.5,
                    "test": {"accuracy": value},
                }
            )
    args = fv.parse_args(["--tasks", "fake", "--seeds", "0", "1", "2", "--no-write"])
    table = fv.report(records, args, "cmd")
    # the header says how the masklm variant ran, attention dropout included (transformers keeps the checkpoint's)
    assert "`default` (bucketed batches, auto, attention dropout 0)" in table
    ours_row = next(line for line in table.splitlines() if "| masklm default |" in line and "fake" in line)
    cells = [c.strip() for c in ours_row.split("|")]
    # differences in points: +2, -4, +5 -> mean +1.00, sd 4.58, SE 2.65; ahead on 2 of 3
    assert "+1.00 ± 2.65; 2/3" in cells
    hf_row = next(line for line in table.splitlines() if "| transformers |" in line and "fake" in line)
    assert "±" not in hf_row.split("|")[7]
