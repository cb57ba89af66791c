"""Where a run computes: the device named by train.device, and whether bf16 autocast pays there."""
import time

import torch

from .errors import DeviceError  # noqa: F401  (re-exported)


def resolve_device(name):
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise DeviceError(f"device '{name}' is not available on this machine")
    try:
        return torch.device(name)
    except RuntimeError:
        raise DeviceError(f"unknown device '{name}'")


_GPU_PATHS = False  # set by collapse.cuda_rules.gpu_paths(): CPU code takes the paths it takes on a GPU


def host_waits(device):
    """Whether asking a tensor on `device` a question (bool, item, nonzero) makes the host wait for the
    device: on any accelerator, not on the CPU. Code that asks only where it costs nothing branches on
    this; the suite audits the GPU branch on the CPU (collapse.cuda_rules.gpu_paths)."""
    return _GPU_PATHS or torch.device(device).type != "cpu"


def cpu_has_bf16():
    """Whether this CPU computes bf16 natively (AVX512-BF16 or AMX), where bf16 autocast is faster."""
    try:
        with open("/proc/cpuinfo") as f:
            flags = next((l for l in f if l.startswith("flags")), "").split()
        return "avx512_bf16" in flags or "amx_bf16" in flags
    except OSError:
        return False


def use_bf16(precision, device):
    if precision == "auto":
        return device.type == "cuda" or (device.type == "cpu" and cpu_has_bf16())
    return precision == "bf16"


class Stopwatch:
    """Time spent in one section of every step (the data path): CUDA events on a GPU, where the host only
    queues work and a host clock would time the queueing; perf_counter on the CPU. `read()` returns the
    seconds since the last read; on a GPU it waits for the device, so it is called at log, evaluation
    and checkpoint steps only, never inside a step."""

    def __init__(self, device):
        self.cuda = device.type == "cuda"
        self.how = "cuda events" if self.cuda else "perf_counter"
        self.pending, self.seconds, self.t0 = [], 0.0, None

    def start(self):
        if self.cuda:
            self.pending.append([torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)])
            self.pending[-1][0].record()
        else:
            self.t0 = time.perf_counter()

    def stop(self):
        if self.cuda:
            self.pending[-1][1].record()
        else:
            self.seconds += time.perf_counter() - self.t0

    def read(self):
        if self.pending:  # CUDA raises on elapsed_time of an event not yet complete; one stream's events
            self.pending[-1][1].synchronize()  # complete in order, so waiting for the last one is enough
        seconds = self.seconds + sum(a.elapsed_time(b) for a, b in self.pending) / 1000
        self.pending, self.seconds = [], 0.0
        return seconds
