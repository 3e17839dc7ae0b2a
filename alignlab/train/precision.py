"""`train.precision: auto`, decided by measurement: bf16 autocast where it is clearly faster, float32 elsewhere.

Machines differ: a CPU with native bf16 units (Intel AMX, AVX512-BF16) multiplies bf16 matrices several times
faster than float32, one without them hundreds of times slower. So on a CPU `auto` runs a short matmul probe in
each dtype (once per machine, cached) and takes bf16 only when it is at least `BF16_MIN_SPEEDUP` times faster;
on a GPU it takes bf16 when the GPU supports it. The choice, the measured rates and the reason are printed once
and recorded in the run folder (``precision.json``); a resumed run keeps its recorded choice. A run's choice
(`choose_precision`) is made on the main process and sent to the others (`agreed_precision`).
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from alignlab.config import RunConfig
from alignlab.errors import ConfigError

BF16_MIN_SPEEDUP = 1.5
"""bf16 autocast is chosen on a CPU only when its measured matmul rate is at least this many times float32's."""
PROBE_SIZE = 512
PROBE_SECONDS = 0.25
"""Each dtype's probe multiplies PROBE_SIZE² matrices for about this long (a slow dtype stops after one)."""
MIXED_PRECISION = {"fp32": "no", "bf16": "bf16", "fp16": "fp16"}
"""alignlab's precision names → accelerate's mixed-precision setting."""


@dataclass(frozen=True)
class PrecisionChoice:
    precision: str
    """fp32, bf16 or fp16: what the run uses."""
    requested: str
    reason: str
    rates: dict | None = None
    """Measured matmul GFLOP/s per dtype (CPU probe), when measured."""

    @property
    def mixed_precision(self) -> str:
        return MIXED_PRECISION[self.precision]

    def as_dict(self) -> dict:
        return asdict(self)


def matmul_rate(dtype: torch.dtype, device: torch.device | str = "cpu", size: int = PROBE_SIZE,
                seconds: float = PROBE_SECONDS) -> float:
    """GFLOP/s of `size`² matrix products in `dtype` on `device`, after one warm-up product."""
    generator = torch.Generator().manual_seed(0)
    a = torch.randn(size, size, generator=generator).to(device, dtype)
    b = torch.randn(size, size, generator=generator).to(device, dtype)
    (a @ b).sum().item()  # warm-up (and a sync on accelerators)
    runs, started = 0, time.perf_counter()
    while True:
        (a @ b).sum().item()
        runs += 1
        elapsed = time.perf_counter() - started
        if elapsed >= seconds:
            return 2 * size**3 * runs / elapsed / 1e9


def cpu_fingerprint() -> str:
    """What the probe's answer depends on: the CPU model and its flags, and torch's version."""
    name, flags = platform.processor() or platform.machine(), ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name") and name in ("", platform.machine()):
                name = line.split(":", 1)[1].strip()
            if line.startswith("flags"):
                flags = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    digest = hashlib.sha256(flags.encode()).hexdigest()[:12]
    return f"{name} | flags {digest} | torch {torch.__version__}"


def cache_file() -> Path:
    """Where probe results are kept: ``$ALIGNLAB_CACHE`` or ``~/.cache/alignlab``, ``precision_probe.json``."""
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return Path(os.environ.get("ALIGNLAB_CACHE") or base / "alignlab") / "precision_probe.json"


def cpu_rates(path: Path | None = None) -> tuple[dict, bool]:
    """Matmul GFLOP/s in fp32 and bf16 on this CPU, from the cache when this machine was probed before (and then
    True), otherwise measured now and cached (a cache that cannot be written is only a lost shortcut)."""
    path = path or cache_file()
    key = cpu_fingerprint()
    try:
        cached = json.loads(path.read_text())
    except (OSError, ValueError):
        cached = {}
    if isinstance(cached, dict) and isinstance(cached.get(key), dict):
        return cached[key], True
    rates = {"fp32": matmul_rate(torch.float32), "bf16": matmul_rate(torch.bfloat16)}
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps({**(cached if isinstance(cached, dict) else {}), key: rates}, indent=1) + "\n")
    except OSError:
        pass
    return rates, False


def decide(requested: str, device_type: str, gpu_bf16: bool = False, rates: dict | None = None,
           min_speedup: float = BF16_MIN_SPEEDUP) -> PrecisionChoice:
    """The precision a run uses. Anything but ``auto`` is taken as asked. ``auto``: on a GPU, bf16 when it supports
    bf16, else fp32; on a CPU, bf16 when the measured bf16 matmul rate is at least `min_speedup` × float32's."""
    if requested != "auto":
        return PrecisionChoice(requested, requested, "as configured")
    if device_type != "cpu":
        if gpu_bf16:
            return PrecisionChoice("bf16", requested, f"{device_type} with bf16 support")
        return PrecisionChoice("fp32", requested, f"{device_type} without bf16 support")
    if not rates or not rates.get("fp32"):
        return PrecisionChoice("fp32", requested, "no measurement")
    ratio = rates.get("bf16", 0.0) / rates["fp32"]
    measured = f"bf16 matmul {ratio:.2f}× float32 on this CPU ({rates['bf16']:.0f} vs {rates['fp32']:.0f} GFLOP/s)"
    if ratio >= min_speedup:
        return PrecisionChoice("bf16", requested, f"{measured}: native bf16", rates)
    return PrecisionChoice("fp32", requested, f"{measured}: no fast bf16 (bf16 needs ≥ {min_speedup}×)", rates)


FORCE_VARIABLE = "ALIGNLAB_AUTO_PRECISION"
"""Set to fp32 or bf16 to make ``auto`` take that without measuring (the test suite pins fp32 so)."""


def resolve_precision(requested: str, device: torch.device, probe=cpu_rates) -> PrecisionChoice:
    """`decide` for this machine: the GPU's bf16 support, or the CPU's probe (`probe()` → (rates, cached)).
    ``$ALIGNLAB_AUTO_PRECISION`` (fp32 or bf16) overrides what ``auto`` measures."""
    if requested != "auto":
        return decide(requested, device.type)
    forced = os.environ.get(FORCE_VARIABLE, "").strip()
    if forced:
        if forced not in ("fp32", "bf16"):
            raise ConfigError(f"${FORCE_VARIABLE} must be fp32 or bf16, got {forced!r}")
        return PrecisionChoice(forced, requested, f"${FORCE_VARIABLE}={forced}")
    if device.type == "cuda":
        return decide(requested, "cuda", torch.cuda.is_bf16_supported())
    if device.type != "cpu":
        return decide(requested, device.type)
    rates, _ = probe()
    return decide(requested, "cpu", rates=rates)


def recorded_choice(run_dir: Path) -> PrecisionChoice | None:
    """The choice an earlier run in `run_dir` recorded (``precision.json``), if any."""
    try:
        data = json.loads((run_dir / "precision.json").read_text())
        return PrecisionChoice(data["precision"], data["requested"], data["reason"], data.get("rates"))
    except (OSError, ValueError, KeyError, TypeError):
        return None


def release_other_precision(mixed_precision: str) -> None:
    """accelerate keeps one mixed-precision setting per process: a later run in the same process (a notebook, a
    script training twice) with another precision clears it first (the process group itself is kept)."""
    from accelerate.state import AcceleratorState

    state = AcceleratorState._shared_state
    if state and state.get("_mixed_precision") not in (None, mixed_precision):
        AcceleratorState._reset_state(reset_partial_state=False)


def agreed_precision(choose, log) -> PrecisionChoice:
    """`choose(say)` on the main process only, its answer sent to the others: every process of a distributed run
    trains in the same precision (and only one runs the probe)."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return choose(log)
    import torch.distributed as dist
    from accelerate import PartialState

    state = PartialState(cpu=not torch.cuda.is_available())  # the process group
    box = [choose(log) if state.is_main_process else None]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def choose_precision(config: RunConfig, resume: bool, say) -> PrecisionChoice:
    """`train.precision` for this run: as configured, or (``auto``) measured for this machine
    (`alignlab.train.precision`); a resumed run keeps the choice its folder recorded, so its steps stay the same."""
    recorded = recorded_choice(Path(config.out_dir)) if resume else None
    if recorded is not None and recorded.requested == config.train.precision:
        if recorded.requested == "auto":
            say(f"precision: {recorded.precision}, as the run recorded ({recorded.reason})")
        return recorded
    gpu = torch.cuda.is_available()
    earlier = (Path(config.out_dir) / "config.yaml").is_file()
    if resume and recorded is None and config.train.precision == "auto" and earlier:
        # a run from before `auto` measured: its steps ran under the old rule, and keep doing so
        legacy = "bf16" if gpu and torch.cuda.is_bf16_supported() else "fp32"
        say(f"precision: {legacy}, as runs began before auto measured (float32 on a CPU, bf16 on a GPU with it)")
        return PrecisionChoice(legacy, "auto", "the rule of the run's first steps (no precision.json)")
    device = torch.device("cuda" if gpu else "cpu")
    choice = resolve_precision(config.train.precision, device)
    if choice.requested == "auto":
        say(f"precision: auto → {choice.precision} ({choice.reason})")
    return choice
