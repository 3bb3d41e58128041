"""Shared helpers for the core benchmarks: environment info, interleaved timing, RSS sampling, result files.

Every benchmark script owns one top-level key of ``benchmarks/results/core.json`` ("overhead", "memory",
"global_alloc"). :func:`update_section` merges that key into the file (under a lock, written atomically through a
temporary file and ``os.replace``) and regenerates ``benchmarks/results/core.md`` from the whole JSON.

A section is a plain dict::

    {"title": str, "meta": env_info(), "tables": [{"caption", "columns", "rows"}], "goals": [...], "notes": [...],
     ...anything else the script wants to keep (raw numbers)...}
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import fcntl
import hashlib
import json
import math
import os
import platform
import re
import shlex
import statistics
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from prunekit.experiment.rundir import write_text_atomic

BENCH_DIR = Path(__file__).resolve().parent
REPO = BENCH_DIR.parent
RESULTS_DIR = BENCH_DIR / "results"
JSON_PATH = RESULTS_DIR / "core.json"
MD_PATH = RESULTS_DIR / "core.md"
SECTION_ORDER = ("overhead", "memory", "global_alloc", "enforcement_profile")

# ---------------------------------------------------------------------------------------------------------
# Environment
# ---------------------------------------------------------------------------------------------------------


def command_line() -> str:
    """The command that is running, relative to the repository root (``python benchmarks/x.py --flag``)."""
    script = Path(sys.argv[0]).resolve()
    with contextlib.suppress(ValueError):
        script = script.relative_to(REPO)
    return shlex.join(["python", str(script), *sys.argv[1:]])


def file_fingerprint(*relpaths: str) -> str:
    """Short hash of library files whose code a result depends on (results from other code are not mixed)."""
    h = hashlib.sha256()
    for rel in relpaths:
        p = REPO / rel
        h.update(rel.encode())
        h.update(p.read_bytes() if p.exists() else b"<missing>")
    return h.hexdigest()[:12]


def env_info() -> dict[str, Any]:
    return {
        "command": command_line(),
        "date": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "interop_threads": torch.get_num_interop_threads(),
        "cpu_count": os.cpu_count(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "loadavg_1m_at_start": round(os.getloadavg()[0], 2),
    }


# ---------------------------------------------------------------------------------------------------------
# Statistics and timing
# ---------------------------------------------------------------------------------------------------------


def quantile(xs: Sequence[float], q: float) -> float:
    """Linear-interpolated quantile (numpy's default), for small samples."""
    s = sorted(xs)
    if not s:
        return math.nan
    pos = (len(s) - 1) * q
    lo, hi = math.floor(pos), math.ceil(pos)
    return s[lo] + (s[hi] - s[lo]) * (pos - lo)


def summary(xs: Sequence[float]) -> dict[str, float]:
    return {
        "median": statistics.median(xs),
        "q1": quantile(xs, 0.25),
        "q3": quantile(xs, 0.75),
        "min": min(xs),
        "max": max(xs),
    }


def interleaved_rounds(
    steps: Mapping[str, Callable[[], None]], rounds: int, steps_per_round: int, warmup_steps: int
) -> dict[str, list[float]]:
    """Seconds per step of each variant, one sample per round; variants run round-robin within every round.

    The order rotates from round to round (and reverses every other round), so slow phases of a noisy machine and
    any position effect are spread evenly over the variants. Returns ``{name: [seconds per step, per round]}``.
    """
    names = list(steps)
    for name in names:  # warm-up: allocator, optimizer state, autograd caches
        for _ in range(warmup_steps):
            steps[name]()
    out: dict[str, list[float]] = {n: [] for n in names}
    for r in range(rounds):
        k = r % len(names)
        order = names[k:] + names[:k]
        if r % 2:
            order.reverse()
        for name in order:
            fn = steps[name]
            t0 = time.perf_counter()
            for _ in range(steps_per_round):
                fn()
            out[name].append((time.perf_counter() - t0) / steps_per_round)
    return out


# ---------------------------------------------------------------------------------------------------------
# Memory: resident set size of this process
# ---------------------------------------------------------------------------------------------------------


def proc_status_kb(field: str) -> int:
    """A ``kB`` field of ``/proc/self/status`` (VmRSS, VmHWM, VmSize, ...)."""
    with open("/proc/self/status", encoding="ascii") as f:
        m = re.search(rf"^{field}:\s+(\d+) kB", f.read(), re.MULTILINE)
    if m is None:
        raise RuntimeError(f"/proc/self/status has no {field}")
    return int(m.group(1))


def _cpu_ticks() -> tuple[int, int]:
    """(busy, total) jiffies of the whole machine from /proc/stat."""
    with open("/proc/stat", encoding="ascii") as f:
        vals = [int(v) for v in f.readline().split()[1:]]
    idle = vals[3] + (vals[4] if len(vals) > 4 else 0)
    return sum(vals) - idle, sum(vals)


class OthersCpu:
    """Share of the machine's CPU time used by *other* processes while the block runs (0..1).

    Busy time of the whole machine (/proc/stat) minus this process's and its children's CPU time. Large values mean
    the timings were taken under contention.
    """

    def __enter__(self) -> OthersCpu:
        self._m0 = _cpu_ticks()
        self._own0 = self._own()
        self.share = 0.0
        return self

    @staticmethod
    def _own() -> float:
        import resource

        a, b = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
        return a.ru_utime + a.ru_stime + b.ru_utime + b.ru_stime

    def __exit__(self, *exc: object) -> None:
        busy1, total1 = _cpu_ticks()
        hz = os.sysconf("SC_CLK_TCK")
        busy = (busy1 - self._m0[0]) / hz
        total = (total1 - self._m0[1]) / hz
        self.share = max(0.0, busy - (self._own() - self._own0)) / total if total > 0 else 0.0


def mem_available_bytes() -> int:
    with open("/proc/meminfo", encoding="ascii") as f:
        m = re.search(r"^MemAvailable:\s+(\d+) kB", f.read(), re.MULTILINE)
    return int(m.group(1)) * 1024 if m else 0


def _reset_hwm() -> bool:
    """Reset VmHWM (peak RSS) to the current RSS (Linux >= 4.0); False if the kernel does not allow it."""
    try:
        with open("/proc/self/clear_refs", "w", encoding="ascii") as f:
            f.write("5")
        return True
    except OSError:
        return False


class RssSampler:
    """Peak resident memory above the level at ``__enter__`` (or above a given ``baseline``, in bytes).

    A background thread samples ``VmRSS`` every ``interval`` seconds; the kernel's own high-water mark ``VmHWM`` is
    reset on entry (``/proc/self/clear_refs``) and read on exit, so short spikes between samples are not missed.
    (``tracemalloc`` does not see torch's allocations, hence RSS.)
    """

    def __init__(self, interval: float = 0.01, baseline: int | None = None) -> None:
        self.interval = interval
        self._fixed_baseline = baseline
        self.baseline = 0
        self.sampled_peak = 0
        self.hwm_peak: int | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _run(self) -> None:
        while not self._stop.is_set():
            self.sampled_peak = max(self.sampled_peak, proc_status_kb("VmRSS") * 1024)
            self._stop.wait(self.interval)

    def __enter__(self) -> RssSampler:
        self._hwm_ok = _reset_hwm()
        rss = proc_status_kb("VmRSS") * 1024
        self.baseline = rss if self._fixed_baseline is None else self._fixed_baseline
        self.sampled_peak = rss
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self.sampled_peak = max(self.sampled_peak, proc_status_kb("VmRSS") * 1024)
        self.hwm_peak = proc_status_kb("VmHWM") * 1024 if self._hwm_ok else None

    @property
    def peak(self) -> int:
        return max(self.sampled_peak, self.hwm_peak or 0)

    @property
    def extra(self) -> int:
        """Peak RSS minus RSS at entry, in bytes."""
        return self.peak - self.baseline


# ---------------------------------------------------------------------------------------------------------
# Results: core.json (merged per top-level key) and core.md (regenerated)
# ---------------------------------------------------------------------------------------------------------


@contextlib.contextmanager
def _locked() -> Iterator[None]:
    """Serialise read-merge-write of core.json between concurrently running scripts (flock on the directory)."""
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    fd = os.open(RESULTS_DIR, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the lock


def _atomic_write(path: Path, text: str) -> None:
    write_text_atomic(path, text)


def load_results() -> dict[str, Any]:
    if not JSON_PATH.exists():
        return {}
    with open(JSON_PATH, encoding="utf-8") as f:
        data: dict[str, Any] = json.load(f)
    return data


def update_section(key: str, build: Callable[[dict[str, Any] | None], dict[str, Any]]) -> dict[str, Any]:
    """Replace ``results[key]`` with ``build(previous value)``; write JSON atomically and regenerate the markdown.

    ``build`` runs under the lock, so a script that accumulates runs (core_overhead) sees the latest file.
    """
    with _locked():
        data = load_results()
        data[key] = build(data.get(key))
        _atomic_write(JSON_PATH, json.dumps(data, indent=2, sort_keys=False) + "\n")
        _atomic_write(MD_PATH, render_markdown(data))
    return data[key]  # type: ignore[no-any-return]


def _cell(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.3f}" if abs(v) < 1000 else f"{v:,.0f}"
    return str(v).replace("|", "\\|")


def markdown_table(columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    lines = ["| " + " | ".join(columns) + " |", "|" + "|".join("---" for _ in columns) + "|"]
    lines += ["| " + " | ".join(_cell(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def _verdict(met: bool | None) -> str:
    return "N/A" if met is None else "MET" if met else "NOT MET"


def render_section(sec: Mapping[str, Any], status: str = "**Status: {}**") -> list[str]:
    """The body of one results section as markdown lines: commands, machine line, status, goals, tables, notes.

    Every results file renders its sections with this (``core.md``, ``criteria_*.md``, ``structure_coverage.md``);
    ``status`` formats ``sec["status"]`` when present. A goal's ``met`` is True, False or None (not applicable).
    """
    meta = sec.get("meta", {})
    cmds = sec.get("commands") or [meta.get("command", "?")]
    out = ["Command" + ("s" if len(cmds) > 1 else "") + ":", "", "```", *cmds, "```", ""]
    out.append(
        f"Last run: {meta.get('date', '?')} · torch {meta.get('torch', '?')} · "
        f"torch threads {meta.get('threads', '?')} (interop {meta.get('interop_threads', '?')}) · "
        f"{meta.get('cpu_count', '?')} CPUs · load average at start {meta.get('loadavg_1m_at_start', '?')} · "
        f"Python {meta.get('python', '?')}"
    )
    out.append("")
    if sec.get("status"):
        out += [status.format(sec["status"]), ""]
    for goal in sec.get("goals", []):
        out.append(f"- **Goal {_verdict(goal.get('met'))}**: {goal['goal']} — measured {goal['measured']}")
    if sec.get("goals"):
        out.append("")
    for tab in sec.get("tables", []):
        if tab.get("caption"):
            out += [f"**{tab['caption']}**", ""]
        out += [markdown_table(tab["columns"], tab["rows"]), ""]
    for note in sec.get("notes", []):
        out.append(f"- {note}")
    if sec.get("notes"):
        out.append("")
    return out


def render_document(sec: Mapping[str, Any], generated_by: str, status: str = "**Status: {}**") -> str:
    """A results file holding one section: its title, a do-not-edit line naming ``generated_by``, the body."""
    out = [f"# {sec['title']}", "", f"Generated by {generated_by}; do not edit by hand.", "", *render_section(sec, status)]
    return "\n".join(out).rstrip() + "\n"


def render_markdown(data: Mapping[str, Any]) -> str:
    out = [
        "# prunekit core benchmarks",
        "",
        "Generated from `core.json` by the scripts in `benchmarks/` (see `benchmarks/README.md`); do not edit by hand.",
        "",
    ]
    keys = [k for k in SECTION_ORDER if k in data] + [k for k in data if k not in SECTION_ORDER]
    for key in keys:
        sec = data[key]
        out += [f"## {sec.get('title', key)}", "", *render_section(sec)]
    return "\n".join(out).rstrip() + "\n"


def fmt_mib(nbytes: float) -> str:
    return f"{nbytes / 2**20:,.1f} MiB"


def fmt_gib(nbytes: float) -> str:
    return f"{nbytes / 2**30:,.2f} GiB"


# ---------------------------------------------------------------------------------------------------------
# Models and the four variants compared by core_overhead and core_memory
# ---------------------------------------------------------------------------------------------------------

VARIANTS = ("dense", "prunekit-inplace", "prunekit-packed", "prunekit-reparam", "torch-prune")


def lenet_300_100() -> torch.nn.Module:
    """LeNet-300-100 (784-300-100-10 MLP), the library's registered builder."""
    from prunekit.models import lenet_300_100 as build

    return build()


def small_convnet() -> torch.nn.Module:
    """conv 1->32 3x3, pool, conv 32->64 3x3, pool, linear 64*7*7->10, on 1x28x28 inputs."""
    from torch import nn

    return nn.Sequential(
        nn.Conv2d(1, 32, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(32, 64, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(64 * 7 * 7, 10),
    )


MODELS: dict[str, Callable[[], torch.nn.Module]] = {"lenet-300-100": lenet_300_100, "convnet": small_convnet}


def build_variant(
    kind: str, base: torch.nn.Module, sparsity: float = 0.9, lr: float = 0.01, momentum: float = 0.9
) -> tuple[torch.nn.Module, torch.optim.Optimizer, Any]:
    """A copy of ``base`` pruned to ``sparsity`` the way ``kind`` does it, with its SGD optimizer.

    Returns ``(model, optimizer, pruner)`` (``pruner`` is None except for prunekit variants). All variants prune
    every Linear/Conv weight layer-wise by L1 magnitude, so they end with identical masks.
    """
    import copy

    from torch import nn
    from torch.nn.utils import prune as tprune

    from prunekit import Pruner, PruneRecipe

    model = copy.deepcopy(base)
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum)
    pruner = None
    if kind in ("prunekit-inplace", "prunekit-packed", "prunekit-reparam"):
        mode = kind.split("-")[1]
        pruner = Pruner(PruneRecipe(sparsity=sparsity, mode=mode)).attach(model, opt)  # type: ignore[arg-type]
        pruner.prune_()
    elif kind == "torch-prune":
        for mod in model.modules():
            if isinstance(mod, (nn.Linear, nn.Conv2d)):
                tprune.l1_unstructured(mod, "weight", amount=sparsity)
    elif kind != "dense":
        raise ValueError(f"unknown variant {kind!r}; expected one of {VARIANTS}")
    # Every variant must still optimise the model's own parameters (reparam and torch prune move them around).
    in_opt = {id(p) for g in opt.param_groups for p in g["params"]}
    if in_opt != {id(p) for p in model.parameters()}:
        raise RuntimeError(f"{kind}: optimizer parameters do not match the model's after pruning")
    return model, opt, pruner
