"""Atomic file writes (a crash leaves either the old file or the new one, never half of one),
whole files on local or remote (``s3://``) storage, and the names of the files a run writes,
which the trainer, the CLI, the evaluator and the mixture all read."""

from __future__ import annotations

import io
import json
import math
import os
import re
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

EXPERIMENT_FILE = "experiment.yaml"  # <experiment>/: the whole config, written by the first run
DATA_SPLIT_FILE = "data_split.json"  # <experiment>/: a user's data: how it was split (raygan.userdata)
TRAINER_FILE = "trainer.pt"  # in each checkpoint: the trainer's latest state, for resuming
GENERATOR_FILE = "generator.pt"  # in each checkpoint (and best/): the generator as last scored
SCORES_FILE = "scores.json"  # beside it: that generator's scores
DATASET_FILE = "dataset.npz"  # <experiment>/: a data set given in memory, for the evaluator replicas to read back
CHECKPOINT_DIR = re.compile(r"checkpoint_\d+")  # <experiment>/<trial>/checkpoint_000012/: Tune's name for one


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file in the same directory and a rename.

    Args:
        path: destination; its parent directory is created if missing.
        data: the whole file's content.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # os.open with mode 0o666 lets the umask decide the permissions, as for any program's output
    # (mkstemp would make every result 0600, unreadable to a teammate sharing the results folder).
    tmp = path.parent / f".{path.name}.{secrets.token_hex(6)}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)  # atomic on POSIX within one file system
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def atomic_write_text(path: str | Path, text: str) -> None:
    """Atomically write a text file (UTF-8)."""
    atomic_write_bytes(path, text.encode())


def atomic_write_json(path: str | Path, obj: Any) -> None:
    """Atomically write ``obj`` as indented JSON."""
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")


def atomic_torch_save(obj: Any, path: str | Path) -> None:
    """Atomically ``torch.save`` a state dict (tensors and plain containers only)."""
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    atomic_write_bytes(path, buffer.getvalue())


def is_uri(path: str | Path) -> bool:
    """Whether ``path`` is a storage URI (``s3://...``) rather than a local path."""
    return "://" in str(path)


def write_bytes_anywhere(path: str, data: bytes) -> None:
    """Write a whole file to a local path (atomically) or a storage URI (``s3://...``, via pyarrow)."""
    if not is_uri(path):
        atomic_write_bytes(Path(path).expanduser(), data)
        return
    import pyarrow.fs

    fs, inner = pyarrow.fs.FileSystem.from_uri(path)
    fs.create_dir(inner.rsplit("/", 1)[0], recursive=True)
    with fs.open_output_stream(inner) as f:
        f.write(data)


def read_bytes_anywhere(path: str) -> bytes | None:
    """A whole file from a local path or a storage URI, or None where there is no such file."""
    if not is_uri(path):
        local = Path(path).expanduser()
        return local.read_bytes() if local.is_file() else None
    import pyarrow.fs

    fs, inner = pyarrow.fs.FileSystem.from_uri(path)
    if fs.get_file_info(inner).type != pyarrow.fs.FileType.File:
        return None
    with fs.open_input_stream(inner) as f:
        return f.read()


def write_scores(directory: str | Path, scores: dict[str, Any]) -> None:
    """Atomically write ``directory``/scores.json; inf and NaN (which JSON lacks) as strings."""
    plain = {k: str(v) if isinstance(v, float) and not math.isfinite(v) else v for k, v in scores.items()}
    atomic_write_json(Path(directory) / SCORES_FILE, plain)


def read_scores(directory: str | Path) -> dict[str, Any]:
    """What :func:`write_scores` wrote, with inf and NaN as floats again.

    Raises:
        OSError, ValueError: the file is missing or not JSON.
    """
    raw = json.loads((Path(directory) / SCORES_FILE).read_text())
    return {k: float(v) if isinstance(v, str) and v in ("inf", "-inf", "nan") else v for k, v in raw.items()}


@dataclass(frozen=True)
class CheckpointUsage:
    """What an experiment's checkpoints take on its storage."""

    trials: int  # trial directories holding at least one checkpoint
    checkpoints: int
    bytes: int
    most_per_trial: int  # the most checkpoints any one trial holds


def checkpoint_usage(experiment_path: str) -> CheckpointUsage:
    """Count the checkpoints (``<experiment>/<trial>/checkpoint_*/``) and their bytes, on a local
    path or a storage URI.

    Args:
        experiment_path: the experiment's directory.
    """
    import pyarrow.fs

    if is_uri(experiment_path):
        fs, root = pyarrow.fs.FileSystem.from_uri(experiment_path)
    else:
        fs, root = pyarrow.fs.LocalFileSystem(), str(Path(experiment_path).expanduser().resolve())
    files = fs.get_file_info(pyarrow.fs.FileSelector(root, recursive=True, allow_not_found=True))
    per_trial: dict[str, set[str]] = {}
    total = 0
    for info in files:
        parts = info.path[len(root):].strip("/").split("/")
        if len(parts) >= 3 and CHECKPOINT_DIR.fullmatch(parts[1]) and info.type == pyarrow.fs.FileType.File:
            per_trial.setdefault(parts[0], set()).add(parts[1])
            total += info.size
    counts = [len(c) for c in per_trial.values()]
    return CheckpointUsage(len(per_trial), sum(counts), total, max(counts, default=0))
