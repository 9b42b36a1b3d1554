"""Fit the run to the machine: precision, memory format, CPU threads and DataLoader workers.

`trainer.precision=auto` picks bf16 autocast where the hardware runs it natively and it pays: CUDA with
bf16, or a CPU whose oneDNN reports native BF16 (AVX-512-BF16 or AMX) where a short timed probe of the
model finds bf16 faster than fp32 (runs too short to probe take the native answer untimed); fp32
elsewhere, with TF32 matmuls on Ampere and newer GPUs. `trainer.channels_last=auto` is on for CUDA; on a
CPU a short timed probe of the model, in the chosen precision, decides. On a CPU, torch threads plus
DataLoader workers never exceed the cores this process may use (`os.sched_getaffinity`).

Every decision can be forced: `SSLKIT_CPU_BF16=native|none` makes this process decide as on a CPU with
or without native BF16 (tests run both kinds of machine's paths on either), and each `trainer.*` value
given explicitly wins over `auto`. Measured ratios: docs/benchmarks.md.

It reads the resolved config and returns what it decided (`Machine`); it writes nothing into the
config: the app freezes the decisions into the run plan (sslkit.plan).
"""

from __future__ import annotations

import copy
import os
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial

import torch
from omegaconf import DictConfig
from torch import nn

from sslkit.config import PRECISIONS
from sslkit.errors import ConfigError

# bf16 autocast without native BF16 (AVX2 CPUs): the measured slowdown is in docs/benchmarks.md
# (benchmarks/bench_cpu_precision.py); this is the warning's wording of it.
EMULATED_BF16_SLOWDOWN = "about 10-50x slower than fp32"


def cpu_capability() -> str:
    """The SIMD level torch dispatches to on this CPU, e.g. "AVX2", "AVX512"."""
    try:
        return str(torch.backends.cpu.get_cpu_capability())
    except Exception:  # very old torch
        return "unknown"


#: "native": decide as on a CPU with native BF16; "none": as on one without; unset: ask oneDNN (issue 19)
CPU_BF16_ENV = "SSLKIT_CPU_BF16"


def cpu_has_native_bf16() -> bool:
    """True where oneDNN runs bf16 natively on this CPU (AVX-512-BF16 or AMX), not by emulation, or where
    `SSLKIT_CPU_BF16=native` says to decide as if it did (`none`: as if it did not)."""
    forced = os.environ.get(CPU_BF16_ENV, "").strip().lower()
    if forced in ("native", "none"):
        return forced == "native"
    if forced:
        raise ConfigError(f"{CPU_BF16_ENV}={forced!r} is invalid; valid: native, none (or unset it to detect)")
    try:
        if torch.ops.mkldnn._is_mkldnn_bf16_supported():
            return True
    except (AttributeError, RuntimeError):
        pass
    return "AMX" in cpu_capability().upper()


def cuda_has_bf16(device: torch.device) -> bool:
    return device.type == "cuda" and torch.cuda.is_available() and torch.cuda.is_bf16_supported()


def native_bf16(device: torch.device) -> bool:
    """Whether bf16 autocast runs natively (and so faster than fp32) on `device`."""
    if device.type == "cuda":
        return cuda_has_bf16(device)
    if device.type == "cpu":
        return cpu_has_native_bf16()
    return False


def resolve_precision(requested: str, device: torch.device, probe: Callable[[], bool] | None = None) -> str:
    """`trainer.precision` as run: "auto" becomes "bf16" where native (and, on a CPU, where `probe()`,
    the timed comparison, finds it faster; no probe: native is taken as faster), else "32"."""
    requested = str(requested)
    if requested not in PRECISIONS:
        raise ConfigError(f"trainer.precision={requested!r} is invalid; valid: {', '.join(PRECISIONS)}")
    if requested != "auto":
        return requested
    if not native_bf16(device):
        return "32"
    return "bf16" if device.type != "cpu" or probe is None or probe() else "32"


def precision_warning(precision: str, device: torch.device) -> str | None:
    """A one-line warning for an explicit choice that runs slowly (or not at all) on `device`."""
    if precision == "bf16" and device.type == "cpu" and not cpu_has_native_bf16():
        return (f"warning: trainer.precision=bf16 on a CPU without native BF16 ({cpu_capability()}): "
                f"emulated bf16 is {EMULATED_BF16_SLOWDOWN}; use trainer.precision=auto")
    if precision == "fp16" and device.type != "cuda":
        return "warning: trainer.precision=fp16 has no effect off CUDA (runs in fp32); use trainer.precision=auto"
    return None


def enable_tf32(device: torch.device) -> bool:
    """TF32 matmuls and convolutions on Ampere and newer GPUs (fp32 runs); True if turned on."""
    if device.type != "cuda" or not torch.cuda.is_available():
        return False
    index = device.index if device.index is not None else torch.cuda.current_device()
    if torch.cuda.get_device_capability(index)[0] < 8:
        return False
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    return True


def _seconds(model: nn.Module, x: torch.Tensor, bf16: bool) -> float:
    start = time.perf_counter()
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        out = model(x)
    out.float().sum().backward()
    return time.perf_counter() - start


_PROBED: dict[tuple[object, ...], bool] = {}


def _probe_key(kind: str, model: nn.Module, image_size: int, batch: int, precision: str) -> tuple[object, ...]:
    return (kind, type(model).__name__, tuple((n, tuple(p.shape)) for n, p in model.named_parameters()),
            image_size, batch, precision, torch.get_num_threads())


def probe_channels_last(model: nn.Module, image_size: int, batch: int = 32, rounds: int = 3,
                        margin: float = 0.05, precision: str = "32") -> bool:
    """Time forward+backward of a copy of `model` on the CPU in NCHW and NHWC (under bf16 autocast when
    `precision` is bf16), interleaved (best of `rounds`); True if NHWC is faster by more than `margin`.
    The answer is kept for the process, so runs of the same model in one process (tests, batch-compare,
    resumes) agree."""
    key = _probe_key("layout", model, image_size, batch, precision)
    if key not in _PROBED:
        probe = copy.deepcopy(model).cpu().train()
        x = torch.randn(batch, 3, image_size, image_size)
        probe_cl = copy.deepcopy(probe).to(memory_format=torch.channels_last)
        x_cl = x.contiguous(memory_format=torch.channels_last)
        bf16 = precision == "bf16"
        _PROBED[key] = _faster(lambda: _seconds(probe, x, bf16), lambda: _seconds(probe_cl, x_cl, bf16),
                               rounds, margin)
    return _PROBED[key]


def probe_bf16(model: nn.Module, image_size: int, batch: int = 32, rounds: int = 3, margin: float = 0.05) -> bool:
    """Time forward+backward of a copy of `model` on the CPU in fp32 and under bf16 autocast, interleaved
    (best of `rounds`); True if bf16 is faster by more than `margin`. Native BF16 is not always faster:
    a narrow model at a small batch can lose more to the casts than it gains (docs/benchmarks.md).
    Kept for the process, as the layout probe."""
    key = _probe_key("bf16", model, image_size, batch, "auto")
    if key not in _PROBED:
        probe = copy.deepcopy(model).cpu().train()
        x = torch.randn(batch, 3, image_size, image_size)
        _PROBED[key] = _faster(lambda: _seconds(probe, x, False), lambda: _seconds(probe, x, True), rounds, margin)
    return _PROBED[key]


def _faster(base: Callable[[], float], other: Callable[[], float], rounds: int, margin: float) -> bool:
    """Whether `other` runs faster than `base` by more than `margin` (best of `rounds`, after a warm-up
    of each that pays oneDNN's primitive creation)."""
    base(), other()
    t_base, t_other = float("inf"), float("inf")
    for _ in range(rounds):
        t_base = min(t_base, base())
        t_other = min(t_other, other())
    return t_other < t_base * (1.0 - margin)


def resolve_channels_last(requested: object, device: torch.device,
                          probe: Callable[[], bool] | None = None) -> bool:
    """`trainer.channels_last` as run: "auto" is on for CUDA and, on a CPU, what `probe()` says."""
    if isinstance(requested, bool):
        return requested
    if str(requested).lower() in ("true", "false"):
        return str(requested).lower() == "true"
    if str(requested) != "auto":
        raise ConfigError(f"trainer.channels_last={requested!r} is invalid; valid: auto, true, false")
    if device.type == "cuda":
        return True
    return bool(probe()) if probe is not None else False


# ---- threads and workers -------------------------------------------------------------------------

def usable_cores() -> int:
    """The cores this process may run on (taskset and cpusets count, unlike os.cpu_count)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


def cores_per_process(nproc: int) -> int:
    """The usable cores each of `nproc` processes on this machine gets (torchrun's OMP_NUM_THREADS,
    and the cores a rank splits between threads and workers)."""
    return max(1, usable_cores() // max(1, int(nproc)))


def env_threads() -> int | None:
    """OMP_NUM_THREADS when the user set it (a thread count chosen outside sslkit), else None."""
    value = os.environ.get("OMP_NUM_THREADS", "")
    return int(value) if value.isdigit() and int(value) > 0 else None


@dataclass(frozen=True)
class CpuSplit:
    threads: int  # torch intra-op threads of the main process
    workers: int  # DataLoader worker processes (each runs one torch thread)


def cpu_split(cores: int, wants_workers: bool, threads: int | None = None, workers: int | None = None) -> CpuSplit:
    """Share `cores` between torch threads and DataLoader workers so that threads + workers <= cores.

    Explicit `threads` (trainer.threads, else OMP_NUM_THREADS) and `workers` (data.num_workers) win.
    Otherwise a loader that decodes images (`wants_workers`) gets half the cores as workers when there
    are more than two, and the main process keeps the rest for the model. On one or two cores the main
    process decodes and every core runs the model, which measured faster than one worker + one thread
    (docs/benchmarks.md: benchmarks/bench_train_split.py, bench_threads.py). In-memory data needs no workers.
    """
    cores = max(1, int(cores))
    if workers is None:
        workers = cores // 2 if wants_workers and cores > 2 else 0
        if threads is not None:
            workers = min(workers, max(0, cores - int(threads)))
    if threads is None:
        threads = max(1, cores - int(workers))
    return CpuSplit(threads=max(1, int(threads)), workers=max(0, int(workers)))


def apply_cpu_split(device: torch.device, wants_workers: bool, threads: int | str | None = None,
                    workers: int | str | None = None, cores: int | None = None) -> CpuSplit:
    """Set torch's thread count for this process and return the split (workers as the loader should use).

    On CUDA the model runs on the GPU: only `threads`/`workers` given explicitly change anything, and
    workers default to what was asked (`workers`) or half the cores."""
    explicit_threads = int(threads) if threads is not None and threads not in ("", 0) else env_threads()
    explicit_workers = int(workers) if workers is not None else None
    cores = cores or usable_cores()
    if device.type == "cpu":
        split = cpu_split(cores, wants_workers, explicit_threads, explicit_workers)
    else:
        default_workers = max(1, cores // 2) if wants_workers else 0
        split = CpuSplit(explicit_threads or torch.get_num_threads(),
                         explicit_workers if explicit_workers is not None else default_workers)
    if split.threads != torch.get_num_threads():
        try:
            torch.set_num_threads(split.threads)
        except RuntimeError:  # pragma: no cover - set after parallel work started
            warnings.warn(f"could not set torch threads to {split.threads}", stacklevel=2)
    return split


# ---- one call for a training run -----------------------------------------------------------------

@dataclass(frozen=True)
class Machine:
    """What a run resolved to; `config.yaml` holds the same precision and channels_last."""

    precision: str
    channels_last: bool
    threads: int
    workers: int
    how: str = ""  # why, for the first printed line
    warning: str | None = None

    def describe(self) -> str:
        fmt = "channels_last" if self.channels_last else "NCHW"
        return (f"precision {self.precision}, {fmt}{f' ({self.how})' if self.how else ''}, "
                f"{self.threads} torch threads + {self.workers} loader workers")


PROBE_MIN_STEPS = 50  # runs shorter than this keep NCHW on a CPU without timing a probe


def _probe_batch(image_size: int, batch: int) -> int:
    """The run's own per-process batch, capped at 256 images of 32 px (fewer for larger images), so the
    probe costs a few steps at most. The faster format depends on the batch (docs/benchmarks.md,
    benchmarks/bench_probe_batch.py), so the probe times the run's own batch."""
    return max(2, min(int(batch), int(256 * (32 / max(1, image_size)) ** 2)))


def fit_to_machine(cfg: DictConfig, device: torch.device, encoder: nn.Module, wants_workers: bool,
                   probe: Callable[[], bool] | None = None, precision_probe: Callable[[], bool] | None = None,
                   world_size: int = 1) -> Machine:
    """Resolve trainer.precision/channels_last ("auto") and split the CPU between threads and
    workers; `cfg` is only read (the app records the result in the run plan and config.yaml).
    `world_size`: the training processes (the World's size), which share the global batch.
    `probe` / `precision_probe` replace the timed layout / bf16 probes (tests)."""
    trainer, data = cfg.trainer, cfg.data
    local = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))  # torchrun: processes sharing this machine
    split = apply_cpu_split(device, wants_workers, trainer.get("threads"), data.get("num_workers"),
                            cores_per_process(local))
    asked_precision, asked_layout = str(trainer.precision), trainer.channels_last
    size = int(data.image_size)
    max_steps = trainer.get("max_steps")
    short = bool(max_steps) and int(max_steps) < PROBE_MIN_STEPS and trainer.get("time_budget") is None
    batch = _probe_batch(size, max(1, int(data.batch_size) // max(1, int(world_size))))
    if precision_probe is None and not short:  # a probe costs a few steps; a short run takes native untimed
        precision_probe = partial(probe_bf16, encoder, size, batch)
    precision = str(_agree(resolve_precision(asked_precision, device, precision_probe), device))
    if probe is None:  # a short run keeps NCHW untimed
        probe = (lambda: False) if short else partial(probe_channels_last, encoder, size, batch, precision=precision)
    channels_last = bool(_agree(resolve_channels_last(asked_layout, device, probe), device))
    how = []
    if asked_precision == "auto":
        native = native_bf16(device)
        where = device.type if device.type != "cpu" else cpu_capability()
        forced = f" ({CPU_BF16_ENV}={os.environ[CPU_BF16_ENV]})" if os.environ.get(CPU_BF16_ENV) else ""
        winner = "bf16" if precision == "bf16" else "fp32"
        timed = "" if not native or device.type != "cpu" else (
            ", run too short to time it" if short else f", timed probe: {winner} faster")
        how.append(f"auto precision: {'native' if native else 'no native'} bf16 on {where}{forced}{timed}")
    if precision == "32" and enable_tf32(device):
        how.append("TF32 matmuls")
    if str(asked_layout) == "auto":
        how.append("auto layout: " + ("CUDA" if device.type == "cuda" else
                                      "run too short to probe" if short else "timed probe"))
    return Machine(precision, channels_last, split.threads, split.workers, "; ".join(how),
                   precision_warning(precision, device))


def _agree(choice: str | bool, device: torch.device) -> str | bool:
    """Rank 0's choice on every rank: timed probes can differ between ranks, and DDP needs one precision
    and one memory format."""
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return choice
    holder = [choice]
    torch.distributed.broadcast_object_list(holder, src=0)
    return holder[0]
