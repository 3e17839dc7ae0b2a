"""`train.precision: auto`, decided by measurement: bf16 autocast where it is clearly faster, float32 elsewhere.

Machines differ: a CPU with native bf16 units (Intel AMX, AVX512-BF16) multiplies bf16 matrices several times
faster than float32, one without them hundreds of times slower. So on a CPU `auto` runs a short matmul probe in
each dtype (once per machine, cached) and takes bf16 only when it is at least `BF16_MIN_SPEEDUP` times faster;
on a GPU it takes bf16 when the GPU supports it. The choice, the measured rates and the reason are printed once
and recorded in the run folder (``precision.json``); a resumed run keeps its recorded choice.
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
            from alignlab.errors import ConfigError

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
