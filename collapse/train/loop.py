"""The one training loop: methods supply loss terms; the loop owns optimisation, logging, evaluation, probes,
checkpoints and the run folder. Step by step: begin(), train_step(), save(), finish(); fit(): on train.*'s schedules."""
import time

import torch
from tqdm import tqdm

from .. import detector, distributed, runs
from ..board import Board
from ..device import Stopwatch, use_bf16
from ..draws import Draws
from ..evaluate import evaluate_nets
from ..methods import Context, build_method, is_loss
from ..models import check_model
from ..monitor import write_gallery
from ..probes import PROBE_COLUMNS, Prober, ProbeRow
from . import checkpoint
from .losses import LossLog, NonFiniteLoss  # noqa: F401  (NonFiniteLoss: re-exported, the run's failure)
from .setup import assemble_data, build_nets, fresh_net, reset_net, start


class Trainer:
    """One run, in this process or as one rank of several (DDP: collapse/distributed.py). Every rank draws
    the global batch's random numbers and trains on its share; gradients are averaged, BatchNorm statistics
    made equal after each step; rank 0 alone evaluates, probes and writes the run folder."""

    def __init__(self, cfg, out, progress=True, world=None):
        self.world = world or distributed.from_env()
        self.cfg, self.progress = cfg, progress and cfg.train.progress and self.world.main
        t = cfg.train
        self.device = start(self.world, t)
        self.local_batches = distributed.local_batches(t, self.world.size)
        self.method = build_method(cfg.method)
        self.bf16 = use_bf16(t.precision, self.device)  # autocast around network passes only (Context._pass)
        check_model(cfg.model, cfg.data.heatmap_stride)  # before any data work: a bad model name costs nothing
        # every random draw of a step comes from this generator, on the run's device: no host-to-device copies
        self.draws = Draws.seeded(t.seed, self.device, self.world.rank, self.world.size)
        self.skeleton, self.batches, self.val = assemble_data(cfg, self.device, self.draws, self.method, self.progress)
        self.nets, self.opt, trained = build_nets(cfg, self.method.nets, self.skeleton, self.device, self.world)
        self.run = runs.RunDir(out)  # created only once the inputs proved good: no half-made run folders
        pool = self.batches.unlabeled_pool
        restart = lambda i: reset_net(self.nets[i], self.opt, lambda: fresh_net(cfg, self.skeleton),
                                      t.seed * 1_000_003 + self.step + i)  # the same weights on a resumed run
        self.ctx = Context(self.nets, self.batches, trained=trained, steps=t.steps, compile=t.compile,
                           epoch=max(1, len(pool) // t.batch_unlabeled) if pool else 1, compile_mode=t.compile_mode,
                           bf16=self.bf16, on_artifact=self.run.write_npz if self.world.main else None, on_restart=restart)
        self.method.setup(self.ctx)
        self.sched = torch.optim.lr_scheduler.MultiStepLR(self.opt, t.lr_steps, 0.1)
        self.prober = Prober(self.batches, {"unlabeled": pool, "val": self.val.pool}, t.probe_size)
        self.metrics, self.probes, self.step, self.timing = [], [], 0, dict(data=0.0, total=0.0, eval=0.0, probe=0.0)
        self.losses = LossLog()  # loss terms summed since the last log line
        self.latest, self.t_start, self.board = {}, time.perf_counter(), None  # last evaluation, clock, TensorBoard
        self.data_clock = Stopwatch(self.device)  # the data path's share of a step, honestly timed on a GPU

    def parts(self):
        """The checkpoint's parts, in loading order (the method after the nets and teachers it refers to)."""
        F, E = checkpoint.Field, checkpoint.Each
        return dict(step=F(self, "step"), nets=E(self.nets), opt=self.opt, sched=self.sched,
                    gen=checkpoint.Part(self.draws.get_state, self.draws.set_state), torch_rng=checkpoint.TORCH_RNG,
                    teachers=E(self.ctx.teachers), metrics=F(self, "metrics"),
                    probes=checkpoint.Rows(self, "probes", ProbeRow),
                    timing=F(self, "timing"), loss_sums=F(self.losses, "sums"), loss_count=F(self.losses, "count"),
                    method=checkpoint.Part(self.method.state_dict, lambda s: self.method.load_state_dict(self.ctx, s)),
                    unlabeled_subset=F(self.batches, "unlabeled_subset"), batches=self.batches,
                    gallery=F(self.prober, "gallery"))

    def due(self, every):
        """Whether a schedule of period `every` (0: never) falls on this step; the last step is always due."""
        return every > 0 and (self.step % every == 0 or self.step == self.cfg.train.steps)

    def fit(self):
        t = self.cfg.train
        self.begin()
        bar, collapsed = tqdm(total=t.steps, initial=self.step, disable=not self.progress, desc=self.cfg.method.name,
                              dynamic_ncols=True, leave=False), None
        while self.step < t.steps and collapsed is None:
            self.train_step()
            bar.update(1)
            if self.due(t.log_every):
                self.log(bar)
            if self.due(t.probe_every):
                collapsed = self.probe()
            if collapsed is not None or self.due(t.eval_every):
                self.evaluate(final=collapsed is not None or self.step == t.steps)
                self.save()
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
        cfg, path = self.cfg, self.run.file("checkpoint.pt")
        # under DDP rank 0's checkpoint decides for every rank, whatever their disks hold
        state = (distributed.checkpoint_from_main if self.world.size > 1 else checkpoint.read)(path, self.device)
        if state is not None:
            checkpoint.load(state, self.parts())
        if self.world.main:
            self.run.start(cfg.to_dict(), device=str(self.device), precision="bf16" if self.bf16 else "fp32",
                           world_size=self.world.size)
        self.t_start = time.perf_counter() - self.timing["total"]
        if cfg.train.tensorboard and self.world.main:
            self.board = Board(self.run.file("tensorboard"), self.step)
        if self.step == 0 and cfg.train.probe_every:
            self.probe()
        if self.step == 0 and cfg.train.init_from:
            self.evaluate()

    def train_step(self):
        """One optimisation step; its loss terms (tensors on the device, never synchronised here) are summed
        for the next log line and returned."""
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
        terms = {k: v.detach() for k, v in terms.items()}
        self.losses.add(terms)
        return terms

    def log(self, bar):
        """The mean of each loss term since the last log line, and the learning rate: the one place a step's
        numbers reach the host, once per log interval."""
        means = self.losses.means(self.world, self.step)
        self.timing["data"] += self.data_clock.read()  # here too, so a GPU's pending events stay few
        values = {("loss/" if is_loss(k) else "") + k: v for k, v in means.items()}
        values["lr"] = self.sched.get_last_lr()[0]
        self.metrics += [dict(step=self.step, split="train", name=k, value=v) for k, v in values.items()]
        self.board and self.board.scalars(self.step, values)
        bar.set_postfix(loss=f"{sum(v for k, v in means.items() if is_loss(k)):.2e}",
                        AP=f"{self.latest.get('AP', float('nan')):.3f}")
        self.losses.reset()

    def evaluate(self, final=False):
        """Rank 0's (the same nets on every rank); the final one per body part too (joints.parquet: joint errors)."""
        if not self.world.main:
            return
        t0 = time.perf_counter()
        self.latest = evaluate_nets(self.nets, self.val, self.cfg, self.run.path, self.step, parts=final)
        self.metrics += [dict(step=self.step, split="val", name=k, value=v) for k, v in self.latest.items()]
        self.timing["eval"] += time.perf_counter() - t0
        self.board and self.board.scalars(self.step, {f"val/{k}": v for k, v in self.latest.items()})

    def probe(self):
        """Record the response probes; with train.stop_on_collapse, the step the run collapsed at (else None)."""
        t, collapsed = self.cfg.train, None
        if self.world.main:  # probed on rank 0; its verdict is every rank's
            t0 = time.perf_counter()
            self.probes += self.prober(self.step, self.nets, self.ctx.teachers)
            self.timing["probe"] += time.perf_counter() - t0
            if self.board:
                self.board.probe(self.step, self.probes, self.prober.histograms, len(self.nets))
            if t.stop_on_collapse:
                collapsed, _ = detector.detect(**detector.detector_series(self.probes, self.metrics), ratio=t.collapse_ratio)
        if t.stop_on_collapse and self.world.size > 1:
            collapsed = distributed.from_main(collapsed, self.device)
        return collapsed

    def save(self):
        """metrics, probes, gallery and the checkpoint, each written atomically; never a diverged net's checkpoint."""
        self.timing["total"] = time.perf_counter() - self.t_start
        self.timing["data"] += self.data_clock.read()
        if self.losses.sums is not None:
            self.losses.means(self.world, self.step)
        if not self.world.main:
            return
        self.run.write_tables(self.metrics, self.probes, PROBE_COLUMNS)
        if self.prober.gallery:  # a few unlabeled crops' heatmaps at every probe: collapse you can see
            write_gallery(self.run.file("gallery.npz"), self.prober.gallery, self.batches.stride,
                          self.prober.gallery_crops)
        checkpoint.save(self.run.file("checkpoint.pt"), self.parts())

    def finish(self, collapsed=None):
        """The last save, and the manifest's account: status, final metrics, timing."""
        self.save()
        self.batches.close()
        if self.board:
            self.board.close()
        if not self.world.main:
            return {}
        end = dict(status="done") if self.step == self.cfg.train.steps else runs.collapsed_end(collapsed)
        final = {r["name"]: r["value"] for r in self.metrics if r["split"] == "val" and r["step"] == self.step}
        return self.run.update_manifest(**end, finished=time.time(), final=final, steps=self.step,
                                        timing=runs.timing_account(self.timing, self.step, self.data_clock.how))
