"""One run across several processes (DistributedDataParallel).

Two ways in, one code path: `collapse train CONFIG --nproc N` starts N processes on this machine
(torch.multiprocessing, spawn, a free local port), and any launcher that sets RANK, WORLD_SIZE,
LOCAL_RANK, MASTER_ADDR and MASTER_PORT works as it is, across machines included:
`torchrun --nproc-per-node N -m collapse train CONFIG ...`. NCCL on CUDA (process k on cuda:LOCAL_RANK),
gloo on the CPU.

What the ranks share and what only rank 0 does is the Trainer's business (collapse/train/loop.py); this file
holds the pieces: who this process is, joining and leaving the group, the launcher, and the few
collectives a step needs (buffers made equal, loss sums averaged, a decision broadcast)."""
import ctypes
import datetime
import io
import os
import signal
import socket
import sys
from dataclasses import dataclass

import torch
import torch.distributed as dist
import torch.nn as nn

from .errors import ConfigError, RunFailure, UserError


@dataclass(frozen=True)
class World:
    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def main(self):
        """Rank 0: the one that evaluates, probes and writes the run folder."""
        return self.rank == 0


def local_batches(train, size):
    """(labeled, unlabeled) per process: the config's batches are the global batch, divided evenly."""
    if size < 1:
        raise ConfigError(f"--nproc must be at least 1, got {size}")
    for key in ("batch_labeled", "batch_unlabeled"):
        if getattr(train, key) % size:
            raise ConfigError(f"config key 'train.{key}' ({getattr(train, key)}) must divide among {size} processes")
    return train.batch_labeled // size, train.batch_unlabeled // size


def from_env():
    """This process's place, as a launcher (torchrun, --nproc, SLURM via torchrun) described it; one process
    otherwise. Its rank on its own machine comes from LOCAL_RANK, or RANK mod LOCAL_WORLD_SIZE: RANK alone
    is wrong on any machine but the first, so a launcher that gives neither is refused."""
    size = int(os.environ.get("WORLD_SIZE", "1"))
    if size <= 1:
        return World()
    rank = int(os.environ["RANK"])
    if "LOCAL_RANK" in os.environ:
        return World(rank, size, int(os.environ["LOCAL_RANK"]))
    if "LOCAL_WORLD_SIZE" in os.environ:
        return World(rank, size, rank % int(os.environ["LOCAL_WORLD_SIZE"]))
    raise ConfigError("a run of several processes needs LOCAL_RANK (or LOCAL_WORLD_SIZE) from its launcher "
                      "(torchrun sets both)")


def rank_device(world, device):
    """The device of this rank: train.device's type, and on CUDA the GPU local_rank mod the GPUs this process
    sees (a launcher that gives each process one visible GPU, as SLURM and Kubernetes do, gives cuda:0)."""
    if device.type != "cuda" or world.size == 1:
        return device
    return torch.device("cuda", world.local_rank % torch.cuda.device_count())


def join(world, device, timeout_s=1800):
    """Join the process group. `timeout_s` (train.dist_timeout_s) bounds every collective, the barrier
    where ranks wait for rank 0's evaluation included: longer than the longest evaluation."""
    if world.size > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo", rank=world.rank,
                                world_size=world.size, device_id=device if device.type == "cuda" else None,
                                timeout=datetime.timedelta(seconds=timeout_s))


def barrier(world):
    """Every rank waits here until all arrive (after rank 0's evaluation, probes and writes), so the others
    wait in a barrier of train.dist_timeout_s, not inside the next step's collectives."""
    if world.size > 1:
        dist.barrier()


def leave():
    if dist.is_initialized():
        dist.destroy_process_group()


# -- the collectives of a run ---------------------------------------------------------------------
def same_buffers(nets):
    """Every rank takes rank 0's BatchNorm statistics (DDP's convention), one broadcast per dtype: after
    each step, so EMA teachers, checkpoints and evaluation see one model whatever rank reads it."""
    by_dtype = {}
    for net in nets:
        for b in net.buffers():
            by_dtype.setdefault(b.dtype, []).append(b)
    for bufs in by_dtype.values():
        flat = torch.cat([b.reshape(-1) for b in bufs])
        dist.broadcast(flat, 0)
        offset = 0
        for b in bufs:
            b.copy_(flat[offset:offset + b.numel()].view_as(b))
            offset += b.numel()


def mean_over_ranks(values):
    """{name: tensor} averaged over the ranks (one all-reduce); log lines and the finite check see the
    global batch's loss on every rank, so every rank stops alike on a non-finite loss."""
    names = sorted(values)
    flat = torch.stack([torch.as_tensor(values[k], dtype=torch.float32) for k in names])
    dist.all_reduce(flat)
    return dict(zip(names, flat / dist.get_world_size()))


def checkpoint_from_main(path, device):
    """Rank 0's checkpoint (None where rank 0 has none), loaded on every rank: rank 0 decides whether and from
    which step a run resumes, whatever the other ranks' disks hold (no shared filesystem needed)."""
    blob = [None]
    if dist.get_rank() == 0 and os.path.exists(path):
        with open(path, "rb") as f:
            blob = [f.read()]
    dist.broadcast_object_list(blob, 0, device=device if device.type == "cuda" else None)
    return None if blob[0] is None else torch.load(io.BytesIO(blob[0]), map_location=device, weights_only=False)


def from_main(value, device):
    """An integer (or None) decided on rank 0, the same on every rank."""
    t = torch.tensor([-1 if value is None else value], device=device)
    dist.broadcast(t, 0)
    return None if t.item() < 0 else int(t.item())


class _SumOverRanks(torch.autograd.Function):
    """all-reduce (sum) whose gradient is the all-reduced gradient: every rank's loss depends on every
    rank's batch statistics."""

    @staticmethod
    def forward(ctx, x):
        x = x.clone()
        dist.all_reduce(x)
        return x

    @staticmethod
    def backward(ctx, grad):
        grad = grad.clone()
        dist.all_reduce(grad)
        return grad


class CrossRankBatchNorm(nn.BatchNorm2d):
    """Synchronised BatchNorm on every device: batch statistics of the global batch, summed over ranks with a
    differentiable all-reduce (one per layer forward, one backward). Running statistics as BatchNorm2d
    keeps them (unbiased variance, momentum). Used on CUDA too, in place of torch's SyncBatchNorm, whose
    forward indexes by a boolean mask in every layer (the host waits for the device) and which cannot run
    on the CPU; the price is an unfused normalisation in float32."""

    def forward(self, x):
        if not self.training:
            return super().forward(x)
        x32 = x.float()
        count = torch.full((1,), x32.numel() / x32.shape[1], device=x.device)
        stats = _SumOverRanks.apply(torch.cat([x32.sum((0, 2, 3)), (x32 * x32).sum((0, 2, 3)), count]))
        c = x.shape[1]
        n = stats[-1]
        mean = stats[:c] / n
        var = (stats[c:2 * c] / n - mean * mean).clamp(min=0)
        with torch.no_grad():
            self.num_batches_tracked += 1
            self.running_mean.lerp_(mean.detach(), self.momentum)
            self.running_var.lerp_(var.detach() * n / (n - 1).clamp(min=1), self.momentum)
        scale = self.weight * torch.rsqrt(var + self.eps)
        y = (x32 - mean.view(1, -1, 1, 1)) * scale.view(1, -1, 1, 1) + self.bias.view(1, -1, 1, 1)
        return y.to(x.dtype)


def sync_batchnorm(net):
    """model.sync_bn: every BatchNorm of `net` computes its statistics over the global batch."""
    for name, child in net.named_children():
        if type(child) is nn.BatchNorm2d:
            new = CrossRankBatchNorm(child.num_features, child.eps, child.momentum, child.affine,
                                     child.track_running_stats).to(child.weight.device)
            new.load_state_dict(child.state_dict())
            setattr(net, name, new)
        else:
            sync_batchnorm(child)
    return net


# -- the launcher -----------------------------------------------------------------------------------
def die_with_parent():
    """Linux: this process is killed with its parent. For a grid's `collapse train` subprocess (it calls
    this itself when COLLAPSE_DIE_WITH_PARENT=1: a preexec_fn is not safe with the executor's threads), so
    a claim that turns stale never hides a trainer still writing the run folder; and for the ranks of
    `--nproc`, so a killed launcher leaves no rank behind."""
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _entry(rank, size, port, parent, target, args):
    die_with_parent()  # a killed launcher takes its ranks with it: no orphan goes on writing the run folder
    if os.getppid() != parent:  # it died before we asked
        sys.exit(1)
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(size), LOCAL_RANK=str(rank), LOCAL_WORLD_SIZE=str(size),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    try:
        target(*args)
    except UserError as e:  # a mistake is one line (from rank 0), as in one process
        if rank == 0:
            print(f"collapse: error: {e}", file=sys.stderr)
        sys.exit(2)
    except RunFailure as e:
        if rank == 0:
            print(f"collapse: run failed: {e}", file=sys.stderr)
        sys.exit(1)
    finally:
        leave()


def check_nproc(nproc, device):
    """--nproc N: one GPU per process on CUDA; on the CPU any number, whatever GPUs the machine has."""
    if device.type == "cuda" and nproc > torch.cuda.device_count():
        raise ConfigError(f"--nproc {nproc} asks for more processes than the {torch.cuda.device_count()} visible GPUs")


def launch(nproc, device, target, *args):
    """target(*args) in `nproc` processes on this machine (on `device`, the run's); a process that fails
    ends the others."""
    check_nproc(nproc, device)
    import torch.multiprocessing as mp
    try:
        mp.start_processes(_entry, (nproc, free_port(), os.getpid(), target, args), nprocs=nproc, join=True, start_method="spawn")
    except mp.ProcessExitedException as e:
        if e.exit_code in (1, 2):  # a mistake or a failed run: rank 0 has said why in one line
            raise SystemExit(e.exit_code) from None
        raise RunFailure(f"process {e.error_index} of {nproc} ended with exit code {e.exit_code}") from None
    except mp.ProcessRaisedException as e:
        last = [l for l in str(e).strip().splitlines() if l.strip()][-1]
        raise RunFailure(f"a process of {nproc} failed: {last}") from None
