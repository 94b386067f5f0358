"""Memory of reading Parquet and Arrow files as they grow: masklm's reader against one `iter_batches` per file.

    python -m benchmarks.table_memory                       # 50, 200 and 400 MB of text
    python -m benchmarks.table_memory --sizes 50 1000 --no-docs

Only the reading is measured (no tokenizing), so the numbers show what the reader itself holds. The corpus is
corpus_scale's (IMDB sentences re-mixed into distinct documents), written once per size as Parquet (row groups of
10,000 documents, pyarrow's default compression) and as an Arrow IPC stream of 1,000-row record batches (the form
of a `datasets` `save_to_disk` file). Each run is a fresh process (this script with --worker) that reads every
document; it reports its peak resident set (VmHWM) and the largest `pyarrow.total_allocated_bytes()` seen,
sampled every 1,000 documents.

Readers:
- masklm: `masklm.data.readers.Corpus`, which reads a Parquet file one row group per `iter_batches` reader;
- one iter_batches: `ParquetFile(memory_map=False).iter_batches(batch_size=1024)` over the whole file, as masklm
  read it before (Parquet only).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks import common


def build(folder: Path, mb: int, pool: list[str]) -> dict[str, Path]:
    """The first `mb` MB of text of corpus_scale's document stream, as .parquet and as .arrow."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from benchmarks.corpus_scale import documents

    folder.mkdir(parents=True, exist_ok=True)
    paths = {"parquet": folder / "corpus.parquet", "arrow": folder / "corpus.arrow"}
    schema = pa.schema([("text", pa.string())])
    text_bytes, chunk = 0, []
    with (
        pq.ParquetWriter(paths["parquet"], schema) as parquet,
        pa.OSFile(str(paths["arrow"]), "wb") as sink,
        pa.ipc.new_stream(sink, schema) as arrow,
    ):
        for doc in documents(pool):
            chunk.append(doc)
            text_bytes += len(doc.encode("utf-8"))
            done = text_bytes >= mb * 10**6
            if len(chunk) == 10_000 or done:
                table = pa.table({"text": chunk}, schema=schema)
                parquet.write_table(table)
                for batch in table.to_batches(max_chunksize=1000):
                    arrow.write_batch(batch)
                chunk = []
            if done:
                return paths
    raise AssertionError("the document stream is endless")


def _texts(reader: str, path: Path):
    """The documents of `path`, read the way `reader` names."""
    if reader == "masklm":
        from masklm.config import DataConfig
        from masklm.data.readers import Corpus, find_input_files

        yield from Corpus(find_input_files([path]), DataConfig())
        return
    import pyarrow.parquet as pq

    for batch in pq.ParquetFile(path, memory_map=False).iter_batches(batch_size=1024, columns=["text"]):
        yield from batch.column("text").to_pylist()


def worker(reader: str, path: Path) -> None:
    """Read every document of `path`; print {"seconds", "documents", "pool_mib", "rss_mib"} as JSON."""
    import pyarrow as pa

    t0, pool, n = time.perf_counter(), 0, 0
    for n, _ in enumerate(_texts(reader, path), start=1):
        if n % 1000 == 0:
            pool = max(pool, pa.total_allocated_bytes())
    with open(
        "/proc/self/status"
    ) as status:  # VmHWM, not ru_maxrss: that one outlives exec, and the parent is large
        rss = next(int(line.split()[1]) for line in status if line.startswith("VmHWM:")) / 1024
    print(
        json.dumps(
            {"seconds": time.perf_counter() - t0, "documents": n, "pool_mib": pool / 2**20, "rss_mib": rss}
        )
    )


def measure(reader: str, path: Path) -> dict:
    cmd = [sys.executable, "-m", "benchmarks.table_memory", "--worker", reader, "--src", str(path)]
    out = subprocess.run(cmd, cwd=common.ROOT, capture_output=True, text=True, check=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[50, 200, 400], help="corpus sizes in MB of text")
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    ap.add_argument("--src", type=Path, help=argparse.SUPPRESS)
    common.add_common_args(ap)
    args = ap.parse_args()
    if args.worker:
        worker(args.worker, args.src)
        return
    from benchmarks.corpus_scale import sentences

    pool, rows = sentences(), []
    runs = [("parquet", "masklm"), ("parquet", "one iter_batches"), ("arrow", "masklm")]
    with tempfile.TemporaryDirectory(prefix="table-memory-") as tmp:
        for mb in args.sizes:
            paths = build(Path(tmp) / f"{mb}mb", mb, pool)
            for fmt, reader in runs:
                res = measure(reader, paths[fmt])
                size = paths[fmt].stat().st_size / 1e6
                rows.append([f"{mb} MB", f".{fmt} ({size:.0f} MB)", reader, f"{res['documents']:,}",
                             f"{res['seconds']:.1f}", f"{res['pool_mib']:,.0f}", f"{res['rss_mib']:,.0f}"])  # fmt: skip
                print(" | ".join(rows[-1]), file=sys.stderr)
            for path in paths.values():
                path.unlink()
    headers = ["corpus", "input (on disk)", "reader", "documents", "seconds", "pyarrow pool peak MiB",
               "peak RSS MiB"]  # fmt: skip
    tbl = common.table(headers, rows)
    print(tbl)
    if not args.no_docs:
        body = (
            "- Reading only (no tokenizing), fresh process per row; pool peak = largest "
            "`pyarrow.total_allocated_bytes()`, peak RSS = VmHWM of the process (Python, pyarrow and the reader)\n\n"
            + tbl
            + "\n"
        )
        common.append_docs("Parquet and Arrow reader memory by file size", body, args.shared, "one thread")


if __name__ == "__main__":
    main()
