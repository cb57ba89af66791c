"""One run across several processes (DistributedDataParallel).

Two ways in, one code path: `collapse train CONFIG --nproc N` starts N processes on this machine
(torch.multiprocessing, spawn, a free local port), and any launcher that sets RANK, WORLD_SIZE,
LOCAL_RANK, MASTER_ADDR and MASTER_PORT works as it is, across machines included:
`torchrun --nproc-per-node N -m collapse train CONFIG ...`. NCCL on CUDA (process k on cuda:LOCAL_RANK),
gloo on the CPU.

What the ranks share and what only rank 0 does is the Trainer's business (collapse/train.py); this file
holds the pieces: who this process is, joining and leaving the group, the launcher, and the few
collectives a step needs (buffers made equal, loss sums averaged, a decision broadcast)."""
import ctypes
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
    """This process's place, as a launcher (torchrun, or --nproc) described it; one process otherwise."""
    size = int(os.environ.get("WORLD_SIZE", "1"))
    if size <= 1:
        return World()
    return World(int(os.environ["RANK"]), size, int(os.environ.get("LOCAL_RANK", os.environ["RANK"])))


def join(world, device):
    if world.size > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo", rank=world.rank,
                                world_size=world.size, device_id=device if device.type == "cuda" else None)


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
    """Synchronised BatchNorm where torch's SyncBatchNorm cannot run (it needs a GPU): batch statistics
    of the global batch, summed over ranks with a differentiable all-reduce. Running statistics as
    BatchNorm2d keeps them (unbiased variance, momentum)."""

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


def sync_batchnorm(net, device):
    """model.sync_bn: every BatchNorm of `net` computes its statistics over the global batch."""
    if device.type == "cuda":
        return nn.SyncBatchNorm.convert_sync_batchnorm(net)
    for name, child in net.named_children():
        if type(child) is nn.BatchNorm2d:
            new = CrossRankBatchNorm(child.num_features, child.eps, child.momentum, child.affine,
                                     child.track_running_stats).to(child.weight.device)
            new.load_state_dict(child.state_dict())
            setattr(net, name, new)
        else:
            sync_batchnorm(child, device)
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
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(size), LOCAL_RANK=str(rank),
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


def launch(nproc, target, *args):
    """target(*args) in `nproc` processes on this machine; a process that fails ends the others."""
    if torch.cuda.is_available() and nproc > torch.cuda.device_count():
        raise ConfigError(f"--nproc {nproc} asks for more processes than the {torch.cuda.device_count()} visible GPUs")
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
