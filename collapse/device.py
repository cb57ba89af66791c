"""Where a run computes: the device named by train.device, and whether bf16 autocast pays there."""
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
