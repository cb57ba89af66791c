"""The one training loop. Methods supply loss terms; this file owns data, optimisation, logging,
evaluation, checkpoints and the run folder."""
import os
import time

import numpy as np
import pandas as pd
import torch
from tqdm import tqdm

from . import distributed, runs
from .board import Board
from .config import Config, ConfigError
from .data.batches import Batches
from .data.coco import DataError
from .data.splits import ensure_data, split_rows, val_set
from .data.store import Pool
from .errors import RunFailure
from .device import Stopwatch, resolve_device, use_bf16
from .draws import Draws
from .evaluate import evaluate
from .methods import Context, build_method, is_loss
from .models import Average, build_model, check_model
from .monitor import write_gallery
from .probes import PROBE_COLUMNS, Prober, detect, detector_series


class NonFiniteLoss(RunFailure):
    """The loss became NaN or infinite: the run fails, keeping its last good checkpoint."""


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
            if status not in ("done", "collapsed"):
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


class Trainer:
    """One run, in this process or as one rank of several (DDP: collapse/distributed.py). Every rank draws
    the global batch's random numbers and trains on its share; gradients are averaged, BatchNorm statistics
    made equal after each step; rank 0 alone evaluates, probes and writes the run folder."""

    def __init__(self, cfg: Config, out, progress=True, world=None):
        self.world = world or distributed.from_env()
        self.cfg, self.progress = cfg, progress and cfg.train.progress and self.world.main
        t = cfg.train
        if t.threads > 0:
            torch.set_num_threads(t.threads)
        self.device = start(self.world, t)
        self.local_batches = distributed.local_batches(t, self.world.size)
        self.method = build_method(cfg.method)
        self.bf16 = use_bf16(t.precision, self.device)  # autocast around network passes only (Context._pass)
        check_model(cfg.model, cfg.data.heatmap_stride)  # before any data work: a bad model name costs nothing
        train_store, val_store, *pool_store = ensure_data(cfg, self.progress)
        self.skeleton = train_store.skeleton  # the labeled split's: the nets' channels, the val split's joints
        torch.manual_seed(t.seed)
        # channels_last on every device: oneDNN (CPU) and cuDNN both run NHWC convolutions faster
        self.nets = [self.fresh_net().to(self.device, memory_format=torch.channels_last) for _ in range(self.method.nets)]
        if cfg.model.sync_bn and self.world.size > 1:
            self.nets = [distributed.sync_batchnorm(n) for n in self.nets]
        pool_store = pool_store[0] if pool_store else train_store
        lab, unl = split_rows(cfg, len(train_store), len(pool_store) if cfg.data.unlabeled_split else None)
        # every random draw of a step comes from this generator, on the run's device: no host-to-device
        # copies; on the CPU the same stream as ever (its state rides in the checkpoint: resume is exact)
        self.draws = Draws.seeded(t.seed, self.device, self.world.rank, self.world.size)
        # the unlabeled pool exists for every method: supervised runs are probed on it too
        resident = int(cfg.data.resident_gb * 2 ** 30)
        self.batches = Batches(cfg, Pool(train_store, lab, self.device, resident),
                               Pool(pool_store, unl, self.device, resident, self.skeleton) if len(unl) else None,
                               self.device, self.draws)
        if self.method.uses_unlabeled and self.batches.unlabeled_pool is None:
            raise DataError("this method needs unlabeled data but data.labeled leaves none")
        self.val = val_set(cfg, val_store, self.device, self.skeleton)

        for net, path in zip(self.nets, init_sources(t.init_from, len(self.nets))):
            load_net(net, path, self.device)
        if t.init_same:  # one initialisation for every net (a second net differs only by what it learns)
            for net in self.nets[1:]:
                net.load_state_dict(self.nets[0].state_dict())
        params = [p for n in self.nets for p in n.parameters()]
        self.opt = torch.optim.Adam(params, lr=t.lr, fused=self.device.type == "cuda")
        self.run = runs.RunDir(out)  # created only once the inputs proved good: no half-made run folders
        # DDP wraps the passes that train a net (gradients averaged over ranks); the nets themselves stay
        # plain modules for teachers, checkpoints and evaluation. Buffers are made equal after each step
        # (distributed.same_buffers) rather than broadcast before each of a step's several passes.
        trained = None if self.world.size == 1 else [torch.nn.parallel.DistributedDataParallel(
            n, broadcast_buffers=False) for n in self.nets]
        epoch = max(1, len(self.batches.unlabeled_pool) // t.batch_unlabeled) if self.batches.unlabeled_pool else 1
        self.ctx = Context(self.nets, self.batches, trained=trained, steps=t.steps, epoch=epoch, compile=t.compile,
                           compile_mode=t.compile_mode, bf16=self.bf16, on_artifact=self.save_artifact, on_restart=self.reset_net)
        self.method.setup(self.ctx)
        self.sched = torch.optim.lr_scheduler.MultiStepLR(self.opt, t.lr_steps, 0.1)
        self.prober = Prober(self.batches, {"unlabeled": self.batches.unlabeled_pool, "val": self.val.pool},
                             t.probe_size)
        self.probes = []
        self.metrics, self.step, self.timing = [], 0, dict(data=0.0, total=0.0, eval=0.0, probe=0.0)
        self.loss_sums, self.loss_count = None, 0  # loss terms summed since the last log line
        self.latest, self.t_start = {}, time.perf_counter()  # the last evaluation's metrics; the clock's zero
        self.board = None  # TensorBoard (train.tensorboard), opened once the run folder exists
        self.data_clock = Stopwatch(self.device)  # the data path's share of a step, honestly timed on a GPU

    def fresh_net(self):
        return build_model(self.cfg.model, self.skeleton.num_joints, self.cfg.data.heatmap_stride)

    def save_artifact(self, name, arrays):
        if not self.world.main:
            return
        runs.atomic_write_bytes_from(self.run.file(name), lambda f: np.savez(f, **arrays))

    def reset_net(self, i):
        """Re-initialise net i in place (a fresh student: new weights, empty optimizer state), with a seed
        derived from the run's and the step, so a resumed run draws the same weights."""
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.cfg.train.seed * 1_000_003 + self.step + i)
            fresh = self.fresh_net()
        self.nets[i].load_state_dict(fresh.state_dict())
        for p in self.nets[i].parameters():
            self.opt.state.pop(p, None)

    # -- checkpoints --------------------------------------------------------------------------
    def state(self):
        return dict(step=self.step, nets=[n.state_dict() for n in self.nets], opt=self.opt.state_dict(),
                    sched=self.sched.state_dict(), gen=self.draws.get_state(), torch_rng=torch.get_rng_state(),
                    teachers=[t.state_dict() for t in self.ctx.teachers],
                    metrics=self.metrics, probes=self.probes, timing=self.timing,
                    loss_sums=self.loss_sums, loss_count=self.loss_count,
                    method=self.method.state_dict(), unlabeled_subset=self.batches.unlabeled_subset,
                    batches=self.batches.state_dict(),
                    gallery=self.prober.gallery)

    def load_state(self, s):
        self.step = s["step"]
        for n, sd in zip(self.nets, s["nets"]):
            n.load_state_dict(sd)
        self.opt.load_state_dict(s["opt"])
        self.sched.load_state_dict(s["sched"])
        self.draws.set_state(s["gen"])
        torch.set_rng_state(s["torch_rng"].cpu())
        for t, sd in zip(self.ctx.teachers, s["teachers"]):
            t.load_state_dict(sd)
        self.metrics, self.probes, self.timing = s["metrics"], s["probes"], s["timing"]
        self.loss_sums, self.loss_count = s["loss_sums"], s["loss_count"]
        self.method.load_state_dict(self.ctx, s["method"])
        self.batches.unlabeled_subset = s["unlabeled_subset"]
        if "batches" in s:  # checkpoints from before the read-ahead have none (their pools were resident)
            self.batches.load_state_dict(s["batches"])
        self.prober.gallery = s.get("gallery", [])

    # -- the loop -------------------------------------------------------------------------------
    def due(self, every):
        """Whether a schedule of period `every` (0: never) falls on this step; the last step is always due."""
        return every > 0 and (self.step % every == 0 or self.step == self.cfg.train.steps)

    def fit(self):
        t = self.cfg.train
        self.begin()
        bar = tqdm(total=t.steps, initial=self.step, disable=not self.progress, desc=self.cfg.method.name,
                   dynamic_ncols=True, leave=False)
        collapsed = None
        while self.step < t.steps and collapsed is None:
            self.accumulate(self.train_step())
            bar.update(1)
            if self.due(t.log_every):
                self.log(bar)
            if self.due(t.probe_every):
                collapsed = self.probe()
            if collapsed is not None or self.due(t.eval_every):
                self.evaluate()
                self.save()
                bar.set_postfix(AP=f"{self.latest.get('AP', float('nan')):.3f}")
            elif self.due(t.checkpoint_every):
                self.save()
            else:
                continue
            distributed.barrier(self.world)  # the other ranks wait here for rank 0's evaluation and writes
        bar.close()
        return self.finish(collapsed)

    def begin(self):
        """Resume from the run's checkpoint if it has one; mark the run running; at step 0 the first probe
        and, for a warm start, an evaluation (where the run begins: its source's final AP)."""
        cfg = self.cfg
        path = self.run.file("checkpoint.pt")
        if self.world.size > 1:  # rank 0's checkpoint decides for every rank, whatever their disks hold
            state = distributed.checkpoint_from_main(path, self.device)
        else:
            state = torch.load(path, map_location=self.device, weights_only=False) if os.path.exists(path) else None
        if state is not None:
            self.load_state(state)
        resolved = cfg.to_dict()
        if self.world.main:
            self.run.write_config(resolved)
            self.run.update_manifest(status="running", run_id=runs.run_id(resolved), method=cfg.method.name,
                                     device=str(self.device), precision="bf16" if self.bf16 else "fp32",
                                     world_size=self.world.size, versions=runs.versions(),
                                     started=time.time())
        self.t_start = time.perf_counter() - self.timing["total"]
        if cfg.train.tensorboard and self.world.main:
            self.board = Board(self.run.file("tensorboard"), self.step)
        if self.step == 0 and cfg.train.probe_every:
            self.probe()
        if self.step == 0 and cfg.train.init_from:
            self.evaluate()

    def train_step(self):
        """One optimisation step; returns its loss terms (tensors on the device, never synchronised here)."""
        m = self.method
        n_lab, n_unl = self.local_batches
        self.data_clock.start()
        lab = self.batches.labeled(n_lab)
        unl = self.batches.unlabeled(n_unl) if m.uses_unlabeled else None
        self.data_clock.stop()
        self.ctx.step = self.step
        terms = m.losses(self.ctx, lab, unl)  # float32 but for the passes (bf16 autocast in ctx.forward)
        loss = sum(v for k, v in terms.items() if is_loss(k))
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()
        self.sched.step()
        if self.world.size > 1:  # teachers too: a train-mode EMA teacher keeps BatchNorm statistics of its own
            distributed.same_buffers(list({id(n): n for n in self.nets + self.ctx.teachers}.values()))
        m.after_step(self.ctx)
        self.step += 1
        return {k: v.detach() for k, v in terms.items()}

    def accumulate(self, terms):
        # a staged method's terms change between stages: a term absent at a step counts as 0 there
        sums = self.loss_sums
        self.loss_sums = terms if sums is None else {k: sums.get(k, 0) + terms.get(k, 0) for k in {**sums, **terms}}
        self.loss_count += 1

    def log(self, bar):
        """The mean of each loss term since the last log line, and the learning rate; .item() synchronises
        with the device: only here, once per log interval."""
        means = self.loss_means()
        self.timing["data"] += self.data_clock.read()  # here too, so a GPU's pending events stay few
        self.check_finite(means)
        self.metrics += [dict(step=self.step, split="train", name=f"loss/{k}" if is_loss(k) else k, value=v)
                         for k, v in means.items()]
        self.metrics.append(dict(step=self.step, split="train", name="lr", value=self.sched.get_last_lr()[0]))
        self.watch({("loss/" if is_loss(k) else "") + k: v for k, v in means.items()} | {"lr": self.sched.get_last_lr()[0]})
        bar.set_postfix(loss=f"{sum(v for k, v in means.items() if is_loss(k)):.2e}",
                        AP=f"{self.latest.get('AP', float('nan')):.3f}")
        self.loss_sums, self.loss_count = None, 0

    def loss_means(self):
        """The mean of each loss term since the last log line, over the global batch; .item() waits for
        the device: called once per log interval (and at saves) only."""
        means = {k: v / max(self.loss_count, 1) for k, v in self.loss_sums.items()}
        if self.world.size > 1:
            means = distributed.mean_over_ranks(means)
        return {k: float(v) for k, v in means.items()}

    def evaluate(self):
        if not self.world.main:  # evaluation is rank 0's: the nets are the same on every rank
            return
        t0 = time.perf_counter()
        rows = []
        named = [("", self.nets[0])] if len(self.nets) == 1 else \
            [(f"/net{i}", n) for i, n in enumerate(self.nets)] + [("/ens", Average(self.nets))]
        for suffix, net in named:
            metrics, results = evaluate(net, self.val, self.cfg)
            rows += [dict(step=self.step, split="val", name=k + suffix, value=v) for k, v in metrics.items()]
            runs.atomic_write_json(self.run.file("predictions", f"step{self.step:07d}{suffix.replace('/', '_')}.json"), results)
        self.metrics += rows
        self.timing["eval"] += time.perf_counter() - t0
        self.latest = {r["name"]: r["value"] for r in rows}
        self.watch({f"val/{k}": v for k, v in self.latest.items()})

    def probe(self):
        """Record the response probes; with train.stop_on_collapse, the step the run collapsed at (else None)."""
        t = self.cfg.train
        collapsed = None
        if self.world.main:  # probed on rank 0; its verdict is every rank's
            t0 = time.perf_counter()
            self.probes += self.prober(self.step, self.nets, self.ctx.teachers)
            self.timing["probe"] += time.perf_counter() - t0
            if self.board:
                self.board.probe(self.step, self.probes, self.prober.histograms, len(self.nets))
            if t.stop_on_collapse:
                collapsed, _ = detect(**detector_series(self.probes, self.metrics), ratio=t.collapse_ratio)
        if t.stop_on_collapse and self.world.size > 1:
            collapsed = distributed.from_main(collapsed, self.device)
        return collapsed

    def save(self):
        """metrics, probes and the checkpoint, each written atomically; never a checkpoint of a diverged net."""
        self.timing["total"] = time.perf_counter() - self.t_start
        self.timing["data"] += self.data_clock.read()
        if self.loss_sums is not None:
            self.check_finite(self.loss_means())
        if not self.world.main:
            return
        runs.atomic_write_parquet(self.run.file("metrics.parquet"), pd.DataFrame(
            self.metrics, columns=["step", "split", "name", "value"]))
        runs.atomic_write_parquet(self.run.file("probes.parquet"), pd.DataFrame(self.probes, columns=PROBE_COLUMNS))
        if self.prober.gallery:  # a few unlabeled crops' heatmaps at every probe: collapse you can see
            write_gallery(self.run.file("gallery.npz"), self.prober.gallery, self.batches.stride, self.prober.gallery_crops)
        runs.atomic_torch_save(self.run.file("checkpoint.pt"), self.state())

    def watch(self, values):
        if self.board:
            self.board.scalars(self.step, values)

    def check_finite(self, means):
        bad = {k: v for k, v in means.items() if not np.isfinite(v)}
        if bad:
            raise NonFiniteLoss(f"non-finite loss by step {self.step} ({', '.join(f'{k}={v}' for k, v in bad.items())}); "
                                "the last good checkpoint is kept")

    def finish(self, collapsed):
        """The last save, and the manifest's account: status, final metrics, timing."""
        t = self.cfg.train
        self.save()
        self.batches.close()
        if self.board:
            self.board.close()
        if not self.world.main:
            return {}
        final = {r["name"]: r["value"] for r in self.metrics if r["split"] == "val" and r["step"] == self.step}
        train_time = self.timing["total"] - self.timing["eval"] - self.timing["probe"]
        end = dict(status="done")
        if self.step < t.steps:
            end = dict(status="collapsed", collapse_step=collapsed, reason=(
                f"collapsed since step {collapsed}: its unlabeled response or pseudo-label quality and its "
                "pseudo-label quantity or AP fell together (collapse.monitor.detect)"))
        return self.run.update_manifest(
            **end, finished=time.time(), final=final, steps=self.step,
            timing=dict(self.timing, data_clock=self.data_clock.how, data_share=self.timing["data"] / max(train_time, 1e-9),
                        probe_share=self.timing["probe"] / max(self.timing["total"], 1e-9),
                        seconds_per_step=train_time / max(self.step, 1)))


def start(world, t):
    """This process's device (train.device; under DDP, its rank's GPU) and, for several processes, the
    process group joined."""
    device = distributed.rank_device(world, resolve_device(t.device))
    if device.type == "cuda":
        torch.cuda.set_device(device)
    distributed.join(world, device, t.dist_timeout_s)
    return device


def train(cfg: Config, out, progress=True):
    """Train one run into folder `out`; resumes from its checkpoint; returns the manifest. Under DDP rank 0's
    folder decides (finished, another run's, or go on) for every rank."""
    world = distributed.from_env()
    m = runs.RunDir(out).manifest()
    rid = runs.run_id(cfg.to_dict())
    verdict = 2 if m.get("run_id") not in (None, rid) else 1 if m.get("status") in ("done", "collapsed") else 0
    try:
        if world.size > 1:
            verdict = distributed.from_main(verdict, start(world, cfg.train))
        if verdict == 2:
            raise ConfigError(f"{out} holds run {m.get('run_id')} of another config (this one is {rid}): "
                              "choose another --out")
        if verdict == 1:
            return m
        try:
            return Trainer(cfg, out, progress).fit()
        except Exception as e:
            run = runs.RunDir(out)
            if world.main and os.path.exists(run.file("manifest.json")):  # a started run: say why it ended
                run.update_manifest(status="failed", reason=f"{type(e).__name__}: {e}"[:500])
            raise
    finally:
        distributed.leave()
