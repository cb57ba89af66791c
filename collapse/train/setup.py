"""What a run is built from before its loop starts: its device (and process group), its data (stores, rows,
batch streams, validation set, skeleton) and the checkpoints it starts from (train.init_from)."""
import os

import torch

from .. import distributed, runs
from ..data.batches import Batches
from ..data.splits import ensure_data, split_rows, val_set
from ..data.store import Pool
from ..device import resolve_device
from ..errors import ConfigError, DataError
from ..models import build_model


def start(world, t):
    """This process's device (train.device; under DDP, its rank's GPU; train.threads CPU threads) and, for
    several processes, the process group joined."""
    if t.threads > 0:
        torch.set_num_threads(t.threads)
    device = distributed.rank_device(world, resolve_device(t.device))
    if device.type == "cuda":
        torch.cuda.set_device(device)
    distributed.join(world, device, t.dist_timeout_s)
    return device


def assemble_data(cfg, device, draws, method, progress):
    """(skeleton, Batches, ValSet): the stores prepared (once, shared by every run), the labeled and unlabeled
    rows, their batch streams and the validation set, in the labeled split's skeleton."""
    train_store, val_store, *pool_store = ensure_data(cfg, progress)
    skeleton = train_store.skeleton  # the nets' channels; the val split must share it
    pool_store = pool_store[0] if pool_store else train_store
    lab, unl = split_rows(cfg, len(train_store), len(pool_store) if cfg.data.unlabeled_split else None)
    resident = int(cfg.data.resident_gb * 2 ** 30)
    # the unlabeled pool exists for every method: supervised runs are probed on it too
    batches = Batches(cfg, Pool(train_store, lab, device, resident),
                      Pool(pool_store, unl, device, resident, skeleton) if len(unl) else None, device, draws)
    if method.uses_unlabeled and batches.unlabeled_pool is None:
        raise DataError("this method needs unlabeled data but data.labeled leaves none")
    return skeleton, batches, val_set(cfg, val_store, device, skeleton)


def fresh_net(cfg, skeleton):
    return build_model(cfg.model, skeleton.num_joints, cfg.data.heatmap_stride)


def reset_net(net, opt, fresh, seed):
    """Net `net` re-initialised in place as `fresh` (built under `seed`: a resumed run draws the same weights),
    its optimizer state dropped: a fresh student."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        net.load_state_dict(fresh().state_dict())
    for p in net.parameters():
        opt.state.pop(p, None)


def build_nets(cfg, count, skeleton, device, world):
    """(nets, optimizer, DDP-wrapped nets or None): `count` nets seeded by train.seed, started from
    train.init_from where set; Adam over all of them. DDP wraps the passes that train a net (gradients averaged
    over ranks); the nets stay plain modules for teachers, checkpoints and evaluation."""
    t = cfg.train
    torch.manual_seed(t.seed)
    # channels_last on every device: oneDNN (CPU) and cuDNN both run NHWC convolutions faster
    nets = [fresh_net(cfg, skeleton).to(device, memory_format=torch.channels_last) for _ in range(count)]
    if cfg.model.sync_bn and world.size > 1:
        nets = [distributed.sync_batchnorm(n) for n in nets]
    for net, path in zip(nets, init_sources(t.init_from, len(nets))):
        load_net(net, path, device)
    if t.init_same:  # one initialisation for every net (a second net differs only by what it learns)
        for net in nets[1:]:
            net.load_state_dict(nets[0].state_dict())
    opt = torch.optim.Adam([p for n in nets for p in n.parameters()], lr=t.lr, fused=device.type == "cuda")
    # buffers are made equal after each step (distributed.same_buffers), not broadcast before each pass
    trained = None if world.size == 1 else [torch.nn.parallel.DistributedDataParallel(
        n, broadcast_buffers=False) for n in nets]
    return nets, opt, trained


def init_sources(text, n_nets):
    """train.init_from -> a checkpoint file per net: none (''), one source for every net, or one per net
    (comma-separated). A source is a finished run folder (its final checkpoint) or a checkpoint file."""
    if not text:
        return []
    parts = [p.strip() for p in text.split(",")]
    if len(parts) not in (1, n_nets):
        raise ConfigError(f"config key 'train.init_from' names {len(parts)} sources for {n_nets} net(s)")
    paths = []
    for p in parts:
        if os.path.isdir(p):
            status = runs.RunDir(p).manifest().get("status")
            if status not in runs.FINISHED:
                raise ConfigError(f"train.init_from: {p} is not a finished run (status {status or 'missing'})")
            p = os.path.join(p, "checkpoint.pt")
        if not os.path.isfile(p):
            raise ConfigError(f"train.init_from: no run folder or checkpoint file at {p}")
        paths.append(p)
    return paths * n_nets if len(paths) == 1 else paths


def load_net(net, path, device):
    """Net 0 of a run checkpoint (or a bare state dict) into `net`: weights and BatchNorm statistics."""
    try:
        state = torch.load(path, map_location=device, weights_only=False)
        net.load_state_dict(state["nets"][0] if isinstance(state, dict) and "nets" in state else state)
    except (RuntimeError, KeyError, IndexError, TypeError, EOFError) as e:
        raise ConfigError(f"train.init_from: {path} does not hold this network ({str(e).splitlines()[0][:200]})")
