"""CUDA's rules, enforced on the CPU: what in a training step would make a GPU's host wait, and what
geometry would run in low precision there.

No GPU is needed to break CUDA's rules, and none is needed to catch it. `Recorder` watches every torch
call of this thread at two levels, the Python API (TorchFunctionMode: `.cpu()`, `.tolist()`, factories
without a device) and the operator level (TorchDispatchMode: `_local_scalar_dense` behind `.item()` and
`bool(t)`, `nonzero`, boolean-mask indexing, `masked_select`, `unique`, linalg error checks, tensors
built from host data), and records each rule broken with the line of this package that broke it.
`gpu_paths()` makes code that asks the device questions only on the CPU (where they are free) take its
GPU branch, so that branch is the one audited. `audit()` runs every registered method's real
`Trainer.train_step`, in variants that reach every code path, under the recorder; `collapse gpu-check`
and tests/test_cuda_rules.py call it. The same checks run on a GPU with torch.cuda.set_sync_debug_mode."""
import contextlib
import os
import traceback

import torch
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode

from . import device as _device

aten = torch.ops.aten
LOW = (torch.bfloat16, torch.float16)

# operators after which the host must wait for the device (their result's size or value is read on the host)
WAITS = {aten._local_scalar_dense.default: "reads a value on the host (.item(), bool(t), int(t))",
         aten.is_nonzero.default: "reads a value on the host (bool(t))",
         aten.nonzero.default: "nonzero (its size is read on the host)",
         aten.masked_select.default: "masked_select (its size is read on the host)",
         aten._linalg_check_errors.default: "a linalg error check (reads the info tensor on the host)",
         aten.equal.default: "torch.equal (reads its answer on the host)",
         aten._unique.default: "unique", aten._unique2.default: "unique", aten.unique_dim.default: "unique",
         aten.unique_consecutive.default: "unique_consecutive"}
HOST_DATA = "a tensor built from host data (a host-to-device copy on a GPU)"
# Python calls that move a tensor to the host, and factories that make one there when given no device
TO_HOST = {"cpu": ".cpu()", "numpy": ".numpy()", "tolist": ".tolist()"}  # .item(): _local_scalar_dense
FACTORIES = {"zeros", "ones", "empty", "full", "arange", "eye", "rand", "randn", "randint", "randperm",
             "linspace", "logspace", "scalar_tensor"}
# geometry: linear algebra, affine grids, and matrix products of 2x2 / 3x3 view matrices
MATMUL = {aten.mm.default, aten.bmm.default, aten.matmul.default, aten.addmm.default, aten.baddbmm.default}


_PLUMBING = ("contextlib.py", "torch/overrides.py", "torch/utils/_python_dispatch.py", "torch/_ops.py",
             "torch/_dynamo/eval_frame.py", "torch/_compile.py")


def _where():
    """Where a finding comes from: the innermost line of this package on the stack, and the innermost
    library line below it when the call is made inside a library."""
    here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    stack = [f for f in traceback.extract_stack() if f.filename != __file__ and not f.filename.endswith(_PLUMBING)]
    ours = [i for i, f in enumerate(stack) if f.filename.startswith(here) and "site-packages" not in f.filename]
    if not ours:
        return "(torch internals)"
    f = stack[ours[-1]]
    at = f"{os.path.relpath(f.filename, here)}:{f.lineno} {f.name}"
    if ours[-1] < len(stack) - 1:
        inner = stack[-1]
        at += f" (in {inner.filename.split('site-packages/')[-1]}:{inner.lineno} {inner.name})"
    return at


def _tensors(args, kwargs=None):
    for a in [*args, *(kwargs or {}).values()]:
        if isinstance(a, torch.Tensor):
            yield a
        elif isinstance(a, (list, tuple)):
            yield from (t for t in a if isinstance(t, torch.Tensor))


class _Functions(TorchFunctionMode):
    def __init__(self, rec):
        super().__init__()
        self.rec = rec

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = getattr(func, "__name__", "")
        if name in TO_HOST and args and isinstance(args[0], torch.Tensor):
            self.rec.sync(f"{TO_HOST[name]} (a device-to-host copy)")
        elif name == "to" and any(_is_host(a) for a in [*args[1:], kwargs.get("device")]):
            self.rec.sync(".to('cpu') (a device-to-host copy)")  # a literal host move (the run's device is an object)
        elif name in ("tensor", "as_tensor") and args and not isinstance(args[0], torch.Tensor):
            self.rec.sync(HOST_DATA)
        elif name in FACTORIES and getattr(func, "__module__", "") in ("torch", "torch._C._VariableFunctions") \
                and "device" not in kwargs:
            self.rec.sync(f"torch.{name} without a device (made on the host, then copied)")
        return func(*args, **kwargs)


def _is_host(d):
    return isinstance(d, str) and d.startswith("cpu")


def _geometry(func, args, low):
    """Whether an operator on low-precision tensors computes geometry: linear algebra, affine grids, a
    resampling grid, or a product of 2x2 / 3x3 (2x3) view matrices and points."""
    if str(func).startswith("aten.linalg") or func is aten.affine_grid_generator.default:
        return True
    if func is aten.grid_sampler_2d.default:
        return args[1].dtype in LOW
    return func in MATMUL and any(t.shape[-2:] in ((2, 2), (3, 3), (2, 3)) for t in low)


class _Operators(TorchDispatchMode):
    def __init__(self, rec):
        super().__init__()
        self.rec = rec

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        rec = self.rec
        if func is aten.lift_fresh.default and args[0].dim() > 0:  # from_numpy, torch.tensor(list); a 0-dim one
            rec.sync(HOST_DATA)  # is a Python number put into a tensor by t[i] = 1, made on the device on a GPU
        elif func in WAITS:
            rec.sync(WAITS[func])
        elif func in (aten.index.Tensor, aten.index_put.default, aten.index_put_.default, aten._index_put_impl_.default) \
                and any(t is not None and t.dtype in (torch.bool, torch.uint8) for t in args[1]):
            rec.sync("boolean-mask indexing (nonzero under the hood)")
        elif func in (aten.repeat_interleave.Tensor, aten.repeat_interleave.self_Tensor) and kwargs.get("output_size") is None:
            rec.sync("repeat_interleave without output_size")
        low = [t for t in _tensors(args, kwargs) if t.dtype in LOW]
        if low and _geometry(func, args, low):
            rec.low_precision.append(f"{_where()}: {func} on {low[0].dtype} (geometry in low precision)")
        out = func(*args, **kwargs)
        if rec.keep is not None and func in rec.keep:
            rec.kept.append(out.detach().clone() if isinstance(out, torch.Tensor) else [o.detach().clone() for o in out])
        return out


class Recorder:
    """with Recorder() as r: ... -> r.syncs (what would make a GPU's host wait) and r.low_precision
    (geometry computed in bf16/fp16), each '<file:line function>: what'. `keep`: operators whose outputs
    to keep, in order (r.kept), e.g. to compare a step's geometry across precisions."""

    def __init__(self, keep=None):
        self.keep, self.kept = keep, []
        self.syncs, self.low_precision = [], []
        self._stack = contextlib.ExitStack()

    def sync(self, what):
        self.syncs.append(f"{_where()}: {what}")

    def __enter__(self):
        self._stack.enter_context(_Functions(self))
        self._stack.enter_context(_Operators(self))
        return self

    def __exit__(self, *exc):
        self._stack.close()
        return False


@contextlib.contextmanager
def gpu_paths():
    """Code that branches on collapse.device.host_waits takes its GPU branch (on the CPU, for audits)."""
    before, _device._GPU_PATHS = _device._GPU_PATHS, True
    try:
        yield
    finally:
        _device._GPU_PATHS = before


# -- the audit of every method's step --------------------------------------------------------------
# variants that, together, reach every code path of a step: every registered method, RandAugment, joint
# cutout, every MultiAugs path (mu included), SSPCM's corrections, ST/ST++/PseudoPose through their stage
# changes, GuidedMix's pairings and directions, pools read ahead from the memory map
VARIANTS = {
    "supervised": [],
    "consistency": ["method.randaugment=true"],
    "mean_teacher": ["method.joint_cutout=3"],
    "threshold": ["method.tau=0.2"],
    "reweight": [],
    "easy_hard": ["method.joint_cutout=3", "method.randaugment=true"],
    "easy_hard/hard_easy": ["method.name=easy_hard", "method.pair=hard_easy"],
    "dual": ["method.joint_cutout=3", "method.randaugment=true"],
    "dual/read_ahead": ["method.name=dual", "data.resident_gb=0"],
    "pseudo_label": ["method.teacher_steps=2"],
    "pseudo_label/datadistill": ["method.name=pseudo_label", "method.teacher_steps=2", "method.ensemble=transforms"],
    "self_training": ["method.teacher_steps=3", "method.st_plus=true"],
    "self_training/read_ahead": ["method.name=self_training", "method.teacher_steps=3", "method.st_plus=true",
                                 "data.resident_gb=0"],
    "guided_mix": ["method.mix_pairing=nearest"],
    "guided_mix/mixed_teaches_clean": ["method.name=guided_mix", "method.mix_direction=mixed_teaches_clean"],
    "multi_augs": ["method.paths=[jc,jo,co,cm,mu,joco,jccm]"],
    "multi_augs/single": ["method.name=multi_augs", "method.nets=1", "method.paths=[mu,jo]"],
    "sspcm": ["method.snapshot_every=2"],
    "sspcm/average": ["method.name=sspcm", "method.correction=average", "method.snapshot_bn=running"],
}
# precision auto: bf16 autocast on a GPU, as a user's run there (configs/demo.yaml pins fp32 for its tables)
SMALL = ["model.width=8", "train.steps=8", "train.batch_labeled=4", "train.batch_unlabeled=4",
         "train.progress=false", "train.threads=0", "train.precision=auto"]


def variant_config(data_root, variant, *more, device="cpu"):
    from .config import load
    name = variant.split("/")[0]
    return load("configs/demo.yaml", [f"data.root={data_root}", f"method.name={name}", *SMALL, f"train.device={device}",
                                      *VARIANTS[variant], *more])


def audit_variant(trainer, warmup=2, steps=None, gpu_branch=True):
    """Run `trainer`'s steps (after `warmup` unrecorded ones: first calls build caches) under the recorder
    -> (syncs, low_precision), each a sorted list of distinct findings. Steps after which the method
    changes stage (Method.stage_steps: allowed to wait; docs/speed_and_gpus.md, "What may wait") are run but not held
    against it."""
    stages = set(trainer.method.stage_steps())
    # on a GPU, Adam is fused (collapse/train/setup.py): its step counters live on the device and nothing of it
    # is read on the host; the CPU's foreach Adam keeps them on the host, where reading them is free
    host_optimizer = not trainer.opt.defaults.get("fused")
    syncs, low = set(), set()
    with gpu_paths() if gpu_branch else contextlib.nullcontext():
        for _ in range(warmup):
            trainer.train_step()
        while trainer.step < (steps or trainer.cfg.train.steps):
            with Recorder() as r:
                trainer.train_step()
            low.update(r.low_precision)
            if trainer.step not in stages:
                syncs.update(s for s in r.syncs if not (host_optimizer and "(in torch/optim/" in s))
    return sorted(syncs), sorted(low)


def audit(data_root, out_dir, variants=None, precision="bf16", echo=None):
    """Every variant's step audited -> {variant: {"syncs": [...], "low_precision": [...]}}."""
    from .train import Trainer
    report = {}
    for v in variants or VARIANTS:
        cfg = variant_config(data_root, v, f"train.precision={precision}")
        tr = Trainer(cfg, os.path.join(out_dir, v.replace("/", "_")), progress=False)
        try:
            syncs, low = audit_variant(tr)
        finally:
            tr.batches.close()
        report[v] = dict(syncs=syncs, low_precision=low)
        if echo:
            echo(f"  {v:32s} {len(syncs)} waits, {len(low)} low-precision geometry sites")
    return report


# -- bf16 changes the passes, not the geometry ---------------------------------------------------------
GEOMETRY_OPS = {aten.affine_grid_generator.default, aten.linalg_inv_ex.default}


def _keep_calls(batches, name, into, part):
    """Keep part(output) of every call of batches.<name> in `into`."""
    real = getattr(batches, name)

    def kept(*args):
        out = real(*args)
        into.append(part(out))
        return out
    setattr(batches, name, kept)


def step_geometry(data_root, out_dir, variant, precision, steps=3):
    """A fresh run's first `steps` steps in `precision` -> {part: [tensors]}: the view matrices' inverses and
    the sampling grids (every affine_grid), the labeled targets and weights, the field masks."""
    from .train import Trainer
    tr = Trainer(variant_config(data_root, variant, f"train.precision={precision}"),
                 os.path.join(out_dir, f"{variant.replace('/', '_')}-{precision}"), progress=False)
    seen = {"geometry": [], "targets": [], "fields": []}
    _keep_calls(tr.batches, "targets", seen["targets"], lambda out: out)
    _keep_calls(tr.batches, "transport", seen["fields"], lambda out: out[1])
    _keep_calls(tr.batches, "field", seen["fields"], lambda out: out)
    try:
        for _ in range(steps):
            with Recorder(keep=GEOMETRY_OPS) as r:
                tr.train_step()
            seen["geometry"] += r.kept
    finally:
        tr.batches.close()
    flat = lambda xs: [t for x in xs for t in (x if isinstance(x, (tuple, list)) else [x])]
    return {k: flat(v) for k, v in seen.items()}, tr.bf16


def geometry_across_precisions(data_root, out_dir, variant, steps=3):
    """Same seed, same weights, bf16 against float32 -> {part: (tensors compared, all bit-equal and float32)}."""
    (a, bf16_a), (b, bf16_b) = (step_geometry(data_root, out_dir, variant, p, steps) for p in ("fp32", "bf16"))
    assert not bf16_a and bf16_b
    return {part: (len(a[part]), len(a[part]) == len(b[part]) and all(
        u.dtype == v.dtype and u.dtype in (torch.float32, torch.int32) and torch.equal(u, v)
        for u, v in zip(a[part], b[part]))) for part in a}
