"""Memory of a whole `masklm pretrain` command over a long run, and its peak against transformers' plain loop.

    python -m benchmarks.memory_long --minutes 60                 # the demo's command for an hour, RSS sampled
    python -m benchmarks.memory_long --minutes 6 --no-docs        # a quick look
    python -m benchmarks.memory_long --versus-hf --steps 300      # whole-process peaks, masklm vs HF loop

Long run: `masklm pretrain --input <the demo's IMDB reviews> --max-minutes M` (the small preset, data prepared in
the same process, evaluation, checkpoints and plots included, as a user runs it) is started as a child process.
Every `--every` seconds the resident set of its process tree is read from /proc, with its user and system CPU
time and minor page faults. The report gives the resident set after 5 minutes and at the end (the issue's target:
within 10%), the peak (the child's ru_maxrss, from wait4), the share of CPU time spent in the kernel (target:
under 3%), and a plot of resident memory against minutes.

--versus-hf: the L4/H256 BERT shape (vocab 30,522, batch 32, 15% masking, dropout 0.1, IMDB rows prepared
beforehand with the bert-base-uncased vocab, see common.prepared_imdb), `--steps` optimizer steps. Each side is
one whole process: `masklm pretrain --data ...` (bf16, its defaults otherwise) and transformers' plain loop
(`benchmarks.memory --worker loop`: BertForMaskedLM, float32, DataCollatorForLanguageModeling, AdamW). The
figure is each process's peak resident set (ru_maxrss); the target is masklm at most 0.5x.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks import common

TICK = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")


def tree(pid: int) -> list[int]:
    """pid and all its descendants (from /proc/PID/task/*/children)."""
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        for task in Path(f"/proc/{p}/task").glob("*"):
            with contextlib.suppress(OSError):
                todo += [int(c) for c in (task / "children").read_text().split()]
    return out


def sample(pid: int) -> dict[str, float] | None:
    """Resident MiB, user and system CPU seconds and minor faults of pid's process tree (None once it is gone)."""
    rss = user = system = faults = 0.0
    for p in tree(pid):
        try:
            stat = Path(f"/proc/{p}/stat").read_text()
            pages = int(Path(f"/proc/{p}/statm").read_text().split()[1])
        except OSError:
            if p == pid:
                return None
            continue
        fields = stat.rsplit(")", 1)[1].split()  # after "(comm)": state is fields[0] (field 3 of proc(5))
        faults += int(fields[7])
        user += int(fields[11]) / TICK
        system += int(fields[12]) / TICK
        rss += pages * PAGE / 2**20
    return {"rss_mib": rss, "user_s": user, "sys_s": system, "minflt": faults}


def run_sampled(cmd: list[str], every: float, log: Path) -> tuple[list[dict], dict[str, float]]:
    """Run cmd (output to log), sampling its tree every `every` s; (samples, its rusage from wait4)."""
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false"}
    with log.open("w") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, cwd=common.ROOT, env=env)
        t0, samples = time.monotonic(), []
        while True:
            done, status, usage = os.wait4(proc.pid, os.WNOHANG)  # reaped here: its rusage comes with it
            if done == proc.pid:
                proc.returncode = os.waitstatus_to_exitcode(status)
                break
            s = sample(proc.pid)
            if s is not None:
                samples.append({"minutes": (time.monotonic() - t0) / 60, **s})
            time.sleep(every)
    if proc.returncode:
        raise SystemExit(f"{' '.join(cmd)} failed ({proc.returncode}); see {log}")
    return samples, rusage_dict(usage)


def rusage_dict(usage: os.struct_rusage) -> dict[str, float]:
    return {
        "peak_mib": usage.ru_maxrss / 1024,
        "user_s": usage.ru_utime,
        "sys_s": usage.ru_stime,
        "minflt": usage.ru_minflt,
    }


def masklm_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "masklm", "pretrain", *args]


def at_minute(samples: list[dict], minute: float) -> dict:
    """The first sample at or after `minute` (the last one if the run was shorter)."""
    return next((s for s in samples if s["minutes"] >= minute), samples[-1])


def long_run(args: argparse.Namespace) -> None:
    from masklm.demo import demo_corpus

    work = Path(tempfile.mkdtemp(prefix="masklm-memlong-"))
    cmd = masklm_cmd("--input", demo_corpus(), "--data.where", "source=imdb", "--output", str(work / "run"))
    cmd += ["--max-minutes", str(args.minutes), *args.extra]
    samples, usage = run_sampled(cmd, args.every, work / "pretrain.log")
    (work / "samples.jsonl").write_text("".join(json.dumps(s) + "\n" for s in samples))
    early, last = at_minute(samples, args.early), samples[-1]
    cpu = last["user_s"] + last["sys_s"]
    steady_cpu = cpu - early["user_s"] - early["sys_s"]
    steady_min = max(last["minutes"] - early["minutes"], 1e-9)
    row = [
        f"{args.minutes:g}",
        f"{early['rss_mib']:,.0f}",
        f"{last['rss_mib']:,.0f} ({last['minutes']:.1f} min)",
        f"{100 * (last['rss_mib'] / early['rss_mib'] - 1):+.1f}%",
        f"{usage['peak_mib']:,.0f}",
        f"{100 * last['sys_s'] / cpu:.1f}% / {100 * (last['sys_s'] - early['sys_s']) / steady_cpu:.1f}%",
        f"{last['minflt'] / last['minutes'] / 1e3:,.0f}k / {(last['minflt'] - early['minflt']) / steady_min / 1e3:,.0f}k",
    ]
    headers = [
        "minutes",
        f"RSS MiB at {args.early:g} min",
        "RSS MiB at the end",
        "growth",
        "peak RSS MiB",
        f"kernel share of CPU time (whole run / after {args.early:g} min)",
        f"minor faults per minute (whole run / after {args.early:g} min)",
    ]
    tbl = common.table(headers, [row])
    print(tbl)
    png = Path(args.plot) if args.plot else work / "rss.png"
    plot(samples, png, args.early)
    print(
        f"samples: {work / 'samples.jsonl'}; plot: {png}; run log: {work / 'pretrain.log'}", file=sys.stderr
    )
    if not args.no_docs:
        body = (
            f"- Command: `python -m benchmarks.memory_long --minutes {args.minutes:g}`: the whole `{' '.join(cmd[2:4])}"
            f" --input <IMDB reviews> --max-minutes {args.minutes:g}` command (small preset, data prepared in the "
            f"same process), its process tree sampled every {args.every:g} s from /proc\n\n" + tbl + "\n"
        )
        if args.plot:
            body += f"\n![resident memory against minutes]({os.path.relpath(png, common.ROOT / 'docs')})\n"
        common.append_docs("Memory of a long pretraining run", body, args.shared, "default threads")


def plot(samples: list[dict], png: Path, early: float) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 3.5))
    ax.plot([s["minutes"] for s in samples], [s["rss_mib"] for s in samples], lw=1.2)
    ax.axvline(early, color="grey", ls=":", lw=1)
    ax.set_xlabel("minutes")
    ax.set_ylabel("resident MiB (process tree)")
    ax.set_ylim(bottom=0)
    ax.set_title("masklm pretrain: resident memory over the run")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(png, dpi=110)
    plt.close(fig)


def versus_hf(args: argparse.Namespace) -> None:
    data = common.prepared_imdb()  # once, here, outside the measured processes
    L, H, N, inter = common.SIZES["small"]
    hp = common.Hyper()
    work = Path(tempfile.mkdtemp(prefix="masklm-memhf-"))
    shape = {
        "model.num_hidden_layers": L,
        "model.hidden_size": H,
        "model.num_attention_heads": N,
        "model.intermediate_size": inter,
        "model.norm": "post",
        "model.position": "absolute",
        "model.ffn": "mlp",
        "model.bias": "true",
        "model.hidden_dropout_prob": 0.1,
        "model.attention_probs_dropout_prob": 0.1,
        "mask.rate": 0.15,
        "train.batch_size": 32,
        "train.lr": hp.lr,
        "train.precision": "bf16",
        "train.eval_every": 0,
    }
    flags = [x for k, v in shape.items() for x in (f"--{k}", str(v))]
    sides = {
        "masklm pretrain (bf16, whole command)": masklm_cmd(
            "--data", str(data), "--max-steps", str(args.steps), *flags, "--output", "RUN"
        ),
        "HF plain loop (fp32, whole process)": [sys.executable, "-m", "benchmarks.memory", "--worker", "loop"]
        + ["--size", "small", "--batch", "32", "--steps", str(args.steps)],
    }
    peaks: dict[str, list[float]] = {name: [] for name in sides}
    for r in range(args.rounds):
        for name, cmd in sides.items():
            cmd = [str(work / f"run{r}") if c == "RUN" else c for c in cmd]
            samples, usage = run_sampled(cmd, 1.0, work / f"{r}-{len(peaks[name])}.log")
            peaks[name].append(usage["peak_mib"])
            print(f"round {r + 1}: {name} peak {usage['peak_mib']:,.0f} MiB", file=sys.stderr)
    med = {name: common.median(v) for name, v in peaks.items()}
    hf = med["HF plain loop (fp32, whole process)"]
    rows = [[name, f"{m:,.0f}", f"{m / hf:.2f}x"] for name, m in med.items()]
    tbl = common.table(["side", "peak RSS MiB (median)", "vs HF loop"], rows)
    print(tbl)
    if not args.no_docs:
        body = (
            f"- Command: `python -m benchmarks.memory_long --versus-hf --steps {args.steps} --rounds {args.rounds}`"
            f"; model L{L} H{H} A{N} FFN{inter} (BERT-exact), vocab 30,522, seq 128, batch 32, 15% masking, "
            "dropout 0.1; each side one whole process, peak resident set from wait4 (ru_maxrss)\n\n"
            + tbl
            + "\n"
        )
        common.append_docs(
            "Peak memory of the whole pretraining command vs transformers",
            body,
            args.shared,
            "default threads",
        )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--minutes", type=float, default=60.0, help="length of the long run")
    ap.add_argument("--early", type=float, default=5.0, help="the minute the end is compared with")
    ap.add_argument("--every", type=float, default=10.0, help="seconds between samples")
    ap.add_argument("--plot", help="where to write the plot (default: beside the samples, in a temp folder)")
    ap.add_argument("--versus-hf", action="store_true", help="whole-process peaks, masklm vs transformers")
    ap.add_argument("--steps", type=int, default=300, help="--versus-hf: optimizer steps per side")
    ap.add_argument("--rounds", type=int, default=1, help="--versus-hf: alternating rounds (median)")
    ap.add_argument("extra", nargs="*", help="more `masklm pretrain` options for the long run (after --)")
    common.add_common_args(ap)
    args = ap.parse_args()
    versus_hf(args) if args.versus_hf else long_run(args)


if __name__ == "__main__":
    main()
