"""Run directories: layout, status, atomic writes, a per-run lock and the run's log file.

``<out>/<name>-<hash>/``::

    experiment.yaml   the concrete experiment (load_experiment reads it back; same hash)
    metrics.json      final metrics, per-phase results (final-epoch metric; best_seen labelled as such), sparsity,
                      parameter counts, FLOPs, bytes
    sparsity.json     per-layer sparsity, parameters and FLOPs
    checkpoint/       the final model with its masks (prunekit checkpoint)
    log.txt           the run's log (appended to when a run resumes)
    DONE              written last; a run with DONE is never run again
    work/             while running: phase checkpoints and progress (removed once DONE is written)
    .lock             flock target: one process per run directory at a time

``<out>/.shared/<key>/`` holds a finished dense prefix (the leading train phases before any pruning: checkpoint/
and state.json), which runs of a sweep that differ only later (sparsity, protocol) load instead of retraining it.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

EXPERIMENT_FILE = "experiment.yaml"
METRICS_FILE = "metrics.json"
SPARSITY_FILE = "sparsity.json"
CHECKPOINT_DIR = "checkpoint"
LOG_FILE = "log.txt"
DONE_FILE = "DONE"
WORK_DIR = "work"
LOCK_FILE = ".lock"
SHARED_DIR = ".shared"

RunStatus = Literal["done", "partial", "new"]


def run_status(run_dir: Path) -> RunStatus:
    """``done`` (DONE written), ``partial`` (started, not finished: it will resume) or ``new``."""
    if (run_dir / DONE_FILE).exists():
        return "done"
    if (run_dir / WORK_DIR).exists():
        return "partial"
    return "new"


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _open_temp(path: Path) -> tuple[int, str]:
    """A temporary file beside ``path`` with the permissions a plain ``open`` would give (mkstemp uses 0600)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    with contextlib.suppress(OSError):
        os.fchmod(fd, 0o666 & ~_umask())
    return fd, tmp


def write_text_atomic(path: Path, text: str) -> None:
    """Write ``text`` to a temporary file beside ``path``, then rename it into place."""
    fd, tmp = _open_temp(path)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def write_json_atomic(path: Path, data: Any) -> None:
    write_text_atomic(path, json.dumps(data, indent=2, default=str) + "\n")


def read_json(path: Path) -> Any:
    return json.loads(path.read_text(encoding="utf-8"))


@contextlib.contextmanager
def run_lock(run_dir: Path) -> Iterator[bool]:
    """Hold an exclusive lock on the run directory; yields False if another process holds it.

    ``flock`` locks are released by the kernel when their process dies, so a killed run never leaves a stale lock.
    Several ``prunekit run`` processes can therefore share one sweep: each skips the runs the others hold.
    """
    try:
        import fcntl
    except ImportError:  # pragma: no cover - not POSIX: no locking
        yield True
        return
    fd = os.open(run_dir / LOCK_FILE, os.O_CREAT | os.O_RDWR, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield False
            return
        yield True
    finally:
        os.close(fd)


class _Forward(logging.Handler):
    """Passes records on to ``target``'s handlers, as propagation would have (used while propagation is off)."""

    def __init__(self, target: logging.Logger, level: int) -> None:
        super().__init__(level)
        self.target = target

    def emit(self, record: logging.LogRecord) -> None:
        self.target.handle(record)


@contextlib.contextmanager
def run_log(path: Path, level: int = logging.INFO, logger_name: str = "prunekit") -> Iterator[None]:
    """Send ``prunekit`` log records at ``level`` and above to the file ``path`` (appending) while inside.

    If the caller's configuration lets fewer records through (the usual WARNING), the file still gets ``level``,
    and the caller's handlers still see only what they saw before.
    """
    logger = logging.getLogger(logger_name)
    handler = logging.FileHandler(path, encoding="utf-8")
    handler.setLevel(level)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    prev_level, prev_propagate = logger.level, logger.propagate
    effective = logger.getEffectiveLevel()
    forward: _Forward | None = None
    if effective > level:
        if logger.propagate and logger.parent is not None:
            forward = _Forward(logger.parent, effective)
            logger.addHandler(forward)
        logger.propagate = False
        logger.setLevel(level)
    logger.addHandler(handler)
    try:
        yield
    finally:
        logger.removeHandler(handler)
        if forward is not None:
            logger.removeHandler(forward)
        logger.setLevel(prev_level)
        logger.propagate = prev_propagate
        handler.close()
