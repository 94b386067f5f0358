"""Small shared helpers: atomic writes, rank-0 logging (the rank is masklm.dist.rank), device selection."""

from __future__ import annotations

import glob
import math
import os
import re
import shutil
import sys
from pathlib import Path
from typing import Any

import torch

from masklm.dist import rank
from masklm.errors import UserError


def refuse_path_through_file(path: str | Path) -> None:
    """A UserError when a part of `path` above it is a file (corpus.txt/out): no folder can be made there.
    Outputs ask this before any work, so the refusal does not come as a traceback when the first file is written."""
    above = next((p for p in Path(path).parents if p.exists()), None)
    if above is not None and not above.is_dir():
        raise UserError(f"{above} is a file, so {path} cannot be made under it; choose another place for it")


def fsync_file(path: str | Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_dir(path: str | Path) -> None:
    """Make a rename inside `path` durable (no-op where directories cannot be opened)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write to a temporary name in the same folder, fsync, rename: readers see the old file or the new one."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as e:
        if e.filename is not None:
            raise
        raise OSError(e.errno, e.strerror, str(path)) from None  # a failed write names no file: say which
    finally:
        if tmp.exists():
            tmp.unlink()
    fsync_dir(path.parent)


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def replace_folder(new: Path, out: Path) -> None:
    """Rename the complete folder `new` to `out`. An existing `out` is first moved aside to a hidden sibling
    (`.OUT.old-PID`) and deleted only once `new` is in place; a kill between the two renames leaves no `out` but
    that sibling, which `restore_replaced` puts back the next time."""
    old = out.parent / f".{out.name}.old-{os.getpid()}"
    if out.exists():
        os.replace(out, old)
    try:
        os.replace(new, out)
    except OSError:
        if old.exists():
            os.replace(old, out)
        raise
    fsync_dir(out.parent)
    shutil.rmtree(old, ignore_errors=True)


def restore_replaced(out: Path) -> None:
    """After a kill between the two renames of `replace_folder` (or a power loss there): `out` is missing and
    its previous version waits in a hidden sibling; put the newest such sibling back, saying so."""
    if out.exists() or out.is_symlink():
        return
    olds = sorted(Path(p) for p in glob.glob(str(out.parent / f".{glob.escape(out.name)}.old-*")))
    olds = [p for p in olds if p.is_dir()]
    if olds:
        newest = max(olds, key=lambda p: p.stat().st_mtime)
        os.replace(newest, out)
        log(f"note: {out} was being replaced when a command stopped; its previous version is back in place")


def remove_dead_staging(out: Path, tag: str) -> None:
    """Delete the hidden `.OUT.TAG-PID...` folders beside `out` whose process is gone: what a command killed while
    it assembled `out` (prepare's `.data.tmp-PID-xxxx`, export's `.OUT.tmp-PID`) left behind. A folder of a process
    still running (another command writing the same output) is left alone."""
    pattern = re.compile(rf"\.{re.escape(out.name)}\.{re.escape(tag)}-(\d+)(-[0-9a-f]+)?")
    for path in out.parent.glob(f".{glob.escape(out.name)}.{tag}-*"):
        match = pattern.fullmatch(path.name)
        if match and path.is_dir() and not path.is_symlink() and not _alive(int(match.group(1))):
            shutil.rmtree(path, ignore_errors=True)


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def finite_json(value: Any) -> Any:
    """`value` with every float that is not finite (NaN, ±inf) replaced by None, through dicts and lists: json.dumps
    would write NaN / Infinity, which are not JSON (strict parsers, jq and browsers refuse them)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: finite_json(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [finite_json(v) for v in value]
    return value


def finite_number(text: str) -> float | None:
    """`text` as a finite number (surrounding spaces allowed), else None: not "nan" or "inf", and not "1_000",
    which Python's float() reads as 1000."""
    try:
        value = float(text)
    except ValueError:
        return None
    return value if math.isfinite(value) and "_" not in text else None


def plural(n: int, word: str) -> str:
    """ "1 step", "2 steps", "1,000 steps": a count with its noun (English's regular plural)."""
    return f"{n:,} {word}{'' if n == 1 else 's'}"


def log(*parts: object) -> None:
    """Print on rank 0 only (to stderr, so stdout stays for results)."""
    if rank() == 0:
        print(*parts, file=sys.stderr, flush=True)


# glibc's malloc tunables are left alone when the user set any of them (env vars MALLOC_*_ or GLIBC_TUNABLES)
_MALLOC_ENV = (
    "GLIBC_TUNABLES",
    "MALLOC_MMAP_THRESHOLD_",
    "MALLOC_TRIM_THRESHOLD_",
    "MALLOC_MMAP_MAX_",
    "MALLOC_TOP_PAD_",
)


def keep_large_blocks() -> bool:
    """Serve large CPU tensors from glibc's heap and keep freed memory there for the next step.

    By default glibc maps every block over its mmap threshold (at most 32 MB) afresh and unmaps it when freed, so
    a training step whose largest buffers ((rows, vocabulary) logits, their gradients) exceed it faults in new
    pages every step: millions of minor faults a minute and 10-15% of the CPU time in the kernel. With mmap off
    (M_MMAP_MAX 0) and the heap never trimmed (M_TRIM_THRESHOLD), a freed block is reused by the next step's
    buffer of the same size. That holds memory flat only where the sizes recur: pretraining pads its masked rows
    for that (masklm.model.heads.masked_rows). Returns whether the settings were applied (glibc only, and not
    when the user set glibc malloc variables of their own).
    """
    if any(name in os.environ for name in _MALLOC_ENV) or not sys.platform.startswith("linux"):
        return False
    try:
        import ctypes

        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):  # not glibc (musl, ...)
        return False
    m_trim_threshold, m_mmap_max = -1, -4  # from glibc's malloc.h
    return bool(mallopt(m_mmap_max, 0)) and bool(mallopt(m_trim_threshold, 2**30))


def pick_device(name: str = "auto") -> torch.device:
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        return torch.device("cpu")
    return torch.device(name)


def native_bf16(device: torch.device) -> bool:
    """Whether `device` multiplies bfloat16 in hardware: CUDA cards with bf16, CPUs with AVX512-BF16 or AMX.

    Plain AVX-512 CPUs also run bf16 matmuls, but emulated and slower than float32, so they answer False.
    """
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    if device.type != "cpu":
        return False
    cpu = getattr(torch, "cpu", None)
    checks = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")  # private helpers: guarded
    return any(bool(getattr(cpu, name, lambda: False)()) for name in checks)


# Byte-order marks of the wider Unicode encodings, longest first (UTF-32-LE's begins with UTF-16-LE's)
_WIDE_BOMS = [
    (b"\xff\xfe\x00\x00", "UTF-32"),
    (b"\x00\x00\xfe\xff", "UTF-32"),
    (b"\xff\xfe", "UTF-16"),
    (b"\xfe\xff", "UTF-16"),
]


def utf16_or_32(path: Path, head: bytes | None = None) -> str | None:
    """ "UTF-16" or "UTF-32" when the file (or its first bytes, `head`) starts with that encoding's byte-order
    mark, as Windows tools write "Unicode" text; else None."""
    if head is None:
        try:
            with open(path, "rb") as f:
                head = f.read(4)
        except OSError:
            return None
    return next((name for bom, name in _WIDE_BOMS if head.startswith(bom)), None)
