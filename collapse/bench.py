"""`collapse bench`: training speed on the current device; the batched data path against the per-sample
pipelines a user would otherwise write, on the same store and batch sizes; and image decoding for crop
stores, TorchCodec batched against PIL.

The per-sample peers run in DataLoader workers. `TransformsV2Crops` is torchvision.transforms.v2 with
tv_tensors.KeyPoints: per sample, the study's augmentation drawn (v2.RandomAffine draws uniform angles and
one set per call), one affine on image and keypoints, a centre crop, a flip that also swaps left and right
joints and their visibility (v2 does neither), visibility cleared outside the crop, Gaussian targets in
numpy. `PerSampleCrops` is the classical SimpleBaseline-style code: PIL's C warp and a per-joint loop.
"""
import copy
import math
import os
import resource
import tempfile
import time

import numpy as np
import torch
from PIL import Image
from torch.utils.flop_counter import FlopCounterMode
from torchvision import tv_tensors
from torchvision.transforms.v2 import functional as F

from .config import Config
from .data.skeleton import labeled
from .data.coco import image_dir
from .data.store import decode_images
from .train import Trainer

MEAN, STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]

# dense bf16 tensor-core peaks (vendor data sheets, SXM parts), for model FLOPs utilisation
PEAK_TFLOPS = {"H200": 989.0, "H100": 989.0, "A100": 312.0, "L40S": 362.0, "A10": 125.0}


def peak_tflops(device):
    """The device's dense bf16 peak in TFLOP/s, where known (None on a CPU or an unlisted GPU)."""
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((v for k, v in PEAK_TFLOPS.items() if k in name), None)


def _draw(a, rng):
    """One sample's augmentation, as the batched path draws it: rotation ~ clipped N(0, r^2) with probability
    rot_prob, scale ~ clipped N(1, s^2), a flip with probability `flip`."""
    rot = np.clip(rng.normal(0, a.rotation), -2 * a.rotation, 2 * a.rotation) if rng.random() < a.rot_prob else 0.0
    return float(rot), float(np.clip(rng.normal(1, a.scale), 1 - a.scale, 1 + a.scale)), rng.random() < a.flip


def _gaussians(pts, vis, hw, stride, sigma):
    """(J,h,w) Gaussian targets at pts (input pixels) and (J,) weights: visible joints inside the crop."""
    hh, ww = hw[0] // stride, hw[1] // stride
    p = pts / stride
    weight = (vis & (p[:, 0] >= 0) & (p[:, 0] < ww) & (p[:, 1] >= 0) & (p[:, 1] < hh)).astype(np.float32)
    ys, xs = np.arange(hh) + 0.5, np.arange(ww) + 0.5
    g = np.exp(-((xs[None, None] - p[:, 0, None, None]) ** 2 + (ys[None, :, None] - p[:, 1, None, None]) ** 2)
               / (2 * sigma ** 2)).astype(np.float32)
    return g * weight[:, None, None], weight


class _StoreRows(torch.utils.data.Dataset):
    """Rows of a crop store, one sample at a time: what a per-sample peer reads."""

    def __init__(self, cfg: Config, store, rows):
        self.cfg, self.store, self.rows = cfg, store, np.asarray(rows)
        self.hw = tuple(cfg.data.input_size)

    def __len__(self):
        return len(self.rows)


class TransformsV2Crops(_StoreRows):
    """Labeled crops with targets through torchvision.transforms.v2, one sample at a time."""

    def __getitem__(self, i):
        a, d = self.cfg.augment, self.cfg.data
        rot, scale, flip = _draw(a, np.random.default_rng())
        crop = torch.from_numpy(np.array(self.store.crops[self.rows[i]])).permute(2, 0, 1)  # a copy: the map is read-only
        kps = self.store.meta["keypoints"][self.rows[i]]
        img = tv_tensors.Image(crop)
        pts = tv_tensors.KeyPoints(torch.from_numpy(kps[:, :2].copy()), canvas_size=tuple(crop.shape[1:]))
        vis = labeled(kps[:, 2])
        args = dict(angle=rot, translate=[0, 0], scale=scale, shear=[0.0, 0.0])
        img, pts = F.affine(img, **args), F.affine(pts, **args)      # about the crop centre
        img, pts = F.center_crop(img, d.input_size), F.center_crop(pts, d.input_size)
        if flip:                                                    # v2 mirrors; swapping sides is ours
            img, pts = F.horizontal_flip(img), F.horizontal_flip(pts)
            pts, vis = pts[list(self.store.skeleton.flip_index)], vis[list(self.store.skeleton.flip_index)]
        x = F.normalize(F.to_dtype(img, torch.float32, scale=True), MEAN, STD)
        target, weight = _gaussians(pts.numpy(), vis, d.input_size, d.heatmap_stride, d.sigma)
        return x.as_subclass(torch.Tensor), torch.from_numpy(target), torch.from_numpy(weight)


class PerSampleCrops(_StoreRows):
    """Labeled crops with targets, one sample at a time (the classical pipeline)."""

    def __getitem__(self, i):
        a, d = self.cfg.augment, self.cfg.data
        rng = np.random.default_rng()
        row = self.rows[i]
        crop = np.asarray(self.store.crops[row])
        kps = self.store.meta["keypoints"][row].copy()
        h, w = self.hw
        sh, sw = crop.shape[:2]
        rot, scale, flip = _draw(a, rng)
        # store centre -> input centre, rotated and scaled about it, mirrored if flipped
        c, s = math.cos(math.radians(rot)) / scale, math.sin(math.radians(rot)) / scale
        fx = -1.0 if flip else 1.0
        M = np.array([[fx * c, fx * s, 0], [-s, c, 0], [0, 0, 1]])
        M[:2, 2] = np.array([w / 2, h / 2]) - M[:2, :2] @ np.array([sw / 2, sh / 2])
        inv = np.linalg.inv(M)
        img = Image.fromarray(crop).transform((w, h), Image.AFFINE, tuple(inv[:2].reshape(-1)), Image.BILINEAR)
        x = (np.asarray(img, dtype=np.float32) / 255 - MEAN) / STD
        pts = kps[:, :2] @ M[:2, :2].T + M[:2, 2]
        vis = labeled(kps[:, 2])
        if flip:
            pts, vis = pts[list(self.store.skeleton.flip_index)], vis[list(self.store.skeleton.flip_index)]
        stride = d.heatmap_stride
        hh, hw_ = h // stride, w // stride
        target = np.zeros((len(pts), hh, hw_), np.float32)
        weight = np.zeros(len(pts), np.float32)
        ys, xs = np.arange(hh) + 0.5, np.arange(hw_) + 0.5
        for j, ((px, py), v) in enumerate(zip(pts / stride, vis)):  # one joint at a time, as the classic code
            if not v or not (0 <= px < hw_ and 0 <= py < hh):
                continue
            weight[j] = 1
            target[j] = np.exp(-((xs[None] - px) ** 2 + (ys[:, None] - py) ** 2) / (2 * d.sigma ** 2))
        return torch.from_numpy(x.transpose(2, 0, 1).copy()).float(), torch.from_numpy(target), torch.from_numpy(weight)


def _loader_batches(ds, batch, workers, device):
    """A function returning the next collated batch of `ds` on the device (DataLoader with `workers`)."""
    loader = torch.utils.data.DataLoader(ds, batch_size=batch, shuffle=True, num_workers=workers, drop_last=True,
                                         persistent_workers=workers > 0, pin_memory=device.type == "cuda")
    it = iter(loader)

    def next_batch():
        nonlocal it
        try:
            x, target, weight = next(it)
        except StopIteration:
            it = iter(loader)
            x, target, weight = next(it)
        return x.to(device, non_blocking=True), target.to(device, non_blocking=True), weight
    return next_batch


def _race(paths, batches, rounds, sync):
    """ms per batch of each path: `rounds` alternating rounds of `batches` batches each (after one warm-up
    batch per path), the median round; alternating spreads a busy machine's noise over every path."""
    times = {name: [] for name in paths}
    for make in paths.values():
        make()
        sync()
    for _ in range(rounds):
        for name, make in paths.items():
            t0 = time.perf_counter()
            for _ in range(batches):
                make()
            sync()
            times[name].append(1000 * (time.perf_counter() - t0) / batches)
    return {name: float(np.median(t)) for name, t in times.items()}


def decode_race(files, rounds=3):
    """ms per image decoding `files` to RGB uint8 tensors: TorchCodec in one batched call (the crop stores'
    way, collapse.data.store.decode_images) against PIL one by one (open, convert, to array); the median of
    alternating rounds. Also checks that both give the same pixels (max abs difference)."""
    def pil():
        return [np.asarray(Image.open(f).convert("RGB")) for f in files]
    times = {"torchcodec": [], "pil": []}
    for _ in range(rounds):
        for name, run in (("torchcodec", lambda: decode_images(files)), ("pil", pil)):
            t0 = time.perf_counter()
            run()
            times[name].append(1000 * (time.perf_counter() - t0) / len(files))
    diff = max(int(np.abs(a.permute(1, 2, 0).numpy().astype(int) - b.astype(int)).max())
               for a, b in zip(decode_images(files), pil()))
    return dict(decode_ms_torchcodec=float(np.median(times["torchcodec"])), decode_ms_pil=float(np.median(times["pil"])),
                decode_images=len(files), decode_max_abs_diff=diff)


def bench(cfg: Config, steps=50, batches=30, workers=None, rounds=3, decode=256, echo=print):
    """Print and return the figures: steps/s, images/s, data-path share; the batched data path against the
    transforms.v2 per-sample pipeline (`workers` workers, default 2, and 1) and the classical one, as ratios;
    and the decoding race on the first `decode` images of the train split (0: none)."""
    with tempfile.TemporaryDirectory() as tmp:
        tr = Trainer(cfg, os.path.join(tmp, "bench"), progress=False)
        dev = tr.device
        sync = (lambda: torch.cuda.synchronize()) if dev.type == "cuda" else (lambda: None)
        for _ in range(5):
            tr.train_step()
        sync()
        tr.data_clock.read()
        t0 = time.perf_counter()
        for _ in range(steps):
            tr.train_step()
        sync()
        step_s = (time.perf_counter() - t0) / steps
        data_share = tr.data_clock.read() / steps / step_s  # CUDA events on a GPU
        peak_gib = (torch.cuda.max_memory_allocated(dev) if dev.type == "cuda" else
                    resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024) / 2 ** 30  # the process's peak on a CPU
        with FlopCounterMode(display=False) as flops:  # forward and backward of every pass of one step
            tr.train_step()
        tflops = flops.get_total_flops() / step_s / 1e12
        t = cfg.train
        images = t.batch_labeled + (t.batch_unlabeled if tr.method.uses_unlabeled else 0)
        workers = workers if workers is not None else 2
        pool = tr.batches.labeled_pool
        paths = {"batched": lambda: tr.batches.labeled(t.batch_labeled)}
        for n in sorted({workers, 1}, reverse=True):
            paths[f"v2 x{n}"] = _loader_batches(TransformsV2Crops(cfg, pool.store, pool.rows), t.batch_labeled, n, dev)
        paths[f"classic x{workers}"] = _loader_batches(PerSampleCrops(cfg, pool.store, pool.rows), t.batch_labeled,
                                                        workers, dev)
        ms = _race(paths, batches, rounds, sync)
        folder = image_dir(cfg.data.root, cfg.data.train_split)
        decode_files = sorted(os.path.join(folder, f) for f in os.listdir(folder))[:decode]
    figures = dict(device=str(dev), method=cfg.method.name, model=cfg.model.name, step_ms=1000 * step_s,
                   steps_per_s=1 / step_s, images_per_s=images / step_s, data_share=data_share, peak_memory_gib=peak_gib,
                   step_gflop=flops.get_total_flops() / 1e9, tflops=tflops, mfu=tflops / peak_tflops(dev) if peak_tflops(dev) else None,
                   batch_ms=ms, ratios={k: v / ms["batched"] for k, v in ms.items() if k != "batched"})
    if decode_files:
        figures.update(decode_race(list(decode_files), rounds))
    echo(f"device {figures['device']}, {cfg.method.name}, {cfg.model.name} {cfg.data.input_size[0]}x{cfg.data.input_size[1]}, "
         f"batch {t.batch_labeled}+{t.batch_unlabeled if tr.method.uses_unlabeled else 0}")
    echo(f"  training   {figures['step_ms']:.1f} ms/step   {figures['steps_per_s']:.2f} steps/s   "
         f"{figures['images_per_s']:.0f} images/s   data path {100 * data_share:.1f}% of a step")
    mfu = f", MFU {100 * figures['mfu']:.1f}% of {peak_tflops(dev):.0f} TFLOP/s bf16" if figures["mfu"] else ""
    echo(f"  model      {figures['step_gflop']:.1f} GFLOP/step (forward + backward, every pass), "
         f"{figures['tflops']:.3f} TFLOP/s achieved{mfu}; peak memory {peak_gib:.2f} GiB "
         f"({'allocated on the GPU' if dev.type == 'cuda' else 'resident set of the process'})")
    echo(f"  data path (labeled batch of {t.batch_labeled}, median of {rounds} alternating rounds of {batches} batches): "
         f"batched on the device {ms['batched']:.2f} ms")
    for name, value in figures["ratios"].items():
        echo(f"    {name:<12} {ms[name]:8.2f} ms/batch   {value:6.1f}x the batched path's time")
    if decode_files:
        echo(f"  decoding {figures['decode_images']} images: TorchCodec batched {figures['decode_ms_torchcodec']:.2f} "
             f"ms/image, PIL {figures['decode_ms_pil']:.2f} ms/image -> PIL takes "
             f"{figures['decode_ms_pil'] / figures['decode_ms_torchcodec']:.2f}x as long "
             f"(max pixel difference {figures['decode_max_abs_diff']})")
    return figures


def step_race(cfg: Config, variants, steps=30, rounds=3, warmup=5, echo=print):
    """ms per training step of config variants ({name: function changing a copy of cfg}), one trainer each
    in one process, alternating rounds of `steps` steps after `warmup` steps each (compiling, reading
    ahead and caches settle there), the median round."""
    sync = (lambda: torch.cuda.synchronize()) if torch.cuda.is_available() and cfg.train.device != "cpu" else (lambda: None)
    with tempfile.TemporaryDirectory() as tmp:
        trainers = {}
        for name, change in variants.items():
            c = copy.deepcopy(cfg)
            change(c)
            trainers[name] = Trainer(c, os.path.join(tmp, name), progress=False)
            t0 = time.perf_counter()
            for _ in range(warmup):
                trainers[name].train_step()
            sync()
            echo(f"  {name}: {warmup} warm-up steps in {time.perf_counter() - t0:.1f} s")
        times = {name: [] for name in trainers}
        for _ in range(rounds):
            for name, tr in trainers.items():
                t0 = time.perf_counter()
                for _ in range(steps):
                    tr.train_step()
                sync()
                times[name].append(1000 * (time.perf_counter() - t0) / steps)
        for tr in trainers.values():
            tr.batches.close()
    return {name: float(np.median(t)) for name, t in times.items()}, times


def compile_race(cfg: Config, steps=30, rounds=3, warmup=5, echo=print):
    """Eager against train.compile; every pass a method makes goes through ctx.forward, so compiling covers
    all of them. Returns both times and their ratio."""
    ms, times = step_race(cfg, {"eager": lambda c: setattr(c.train, "compile", False),
                                "compiled": lambda c: setattr(c.train, "compile", True)}, steps, rounds, warmup, echo)
    echo(f"  {cfg.method.name}: eager {ms['eager']:.1f} ms/step, compiled {ms['compiled']:.1f} ms/step -> compiled takes "
         f"{ms['compiled'] / ms['eager']:.2f}x the eager time (median of {rounds} alternating rounds of {steps} steps)")
    return dict(ms, ratio=ms["compiled"] / ms["eager"], rounds=times)


def memmap_race(cfg: Config, steps=30, rounds=3, warmup=5, echo=print):
    """The store resident on the device against the memory-map path read ahead by its thread
    (data.resident_gb 0): ms/step of each and their ratio."""
    ms, times = step_race(cfg, {"resident": lambda c: setattr(c.data, "resident_gb", 1e6),
                                "memory map": lambda c: setattr(c.data, "resident_gb", 0.0)}, steps, rounds, warmup, echo)
    echo(f"  {cfg.method.name}: resident {ms['resident']:.1f} ms/step, memory map read ahead {ms['memory map']:.1f} "
         f"ms/step -> {ms['memory map'] / ms['resident']:.2f}x (median of {rounds} alternating rounds of {steps} steps)")
    return dict(ms, ratio=ms["memory map"] / ms["resident"], rounds=times)
