"""`collapse bench`: training speed on the current device, and the batched data path against a
per-sample CPU pipeline of the classical kind, on the same store and the same batch sizes.

The classical pipeline is what SimpleBaseline-style code does in DataLoader workers: per sample, draw
the augmentation, warp the crop with one affine resample on the CPU (PIL's C warp, as cv2.warpAffine),
normalise, and render each joint's Gaussian target with numpy; then collate and copy to the device.
"""
import math
import os
import tempfile
import time

import numpy as np
import torch
from PIL import Image

from .config import Config
from .data.skeleton import FLIP_INDEX, labeled
from .train import Trainer


class PerSampleCrops(torch.utils.data.Dataset):
    """Labeled crops with targets, one sample at a time (the classical pipeline)."""

    def __init__(self, cfg: Config, store, rows):
        self.cfg, self.store, self.rows = cfg, store, np.asarray(rows)
        self.hw = tuple(cfg.data.input_size)

    def __len__(self):
        return len(self.rows)

    def __getitem__(self, i):
        a, d = self.cfg.augment, self.cfg.data
        rng = np.random.default_rng()
        row = self.rows[i]
        crop = np.asarray(self.store.crops[row])
        kps = self.store.meta["keypoints"][row].copy()
        h, w = self.hw
        sh, sw = crop.shape[:2]
        rot = np.clip(rng.normal(0, a.rotation), -2 * a.rotation, 2 * a.rotation) if rng.random() < a.rot_prob else 0.0
        scale = np.clip(rng.normal(1, a.scale), 1 - a.scale, 1 + a.scale)
        flip = rng.random() < a.flip
        # store centre -> input centre, rotated and scaled about it, mirrored if flipped
        c, s = math.cos(math.radians(rot)) / scale, math.sin(math.radians(rot)) / scale
        fx = -1.0 if flip else 1.0
        M = np.array([[fx * c, fx * s, 0], [-s, c, 0], [0, 0, 1]])
        M[:2, 2] = np.array([w / 2, h / 2]) - M[:2, :2] @ np.array([sw / 2, sh / 2])
        inv = np.linalg.inv(M)
        img = Image.fromarray(crop).transform((w, h), Image.AFFINE, tuple(inv[:2].reshape(-1)), Image.BILINEAR)
        x = (np.asarray(img, dtype=np.float32) / 255 - [0.485, 0.456, 0.406]) / [0.229, 0.224, 0.225]
        pts = kps[:, :2] @ M[:2, :2].T + M[:2, 2]
        vis = labeled(kps[:, 2])
        if flip:
            pts, vis = pts[list(FLIP_INDEX)], vis[list(FLIP_INDEX)]
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


def _time_batches(make, n):
    make()  # warm-up
    t0 = time.perf_counter()
    for _ in range(n):
        make()
    return (time.perf_counter() - t0) / n


def bench(cfg: Config, steps=50, batches=30, workers=None, echo=print):
    """Print and return the figures: steps/s, images/s, data-path share, batched vs per-sample data path."""
    with tempfile.TemporaryDirectory() as tmp:
        tr = Trainer(cfg, os.path.join(tmp, "bench"), progress=False)
        dev = tr.device
        sync = (lambda: torch.cuda.synchronize()) if dev.type == "cuda" else (lambda: None)
        for _ in range(5):
            tr.train_step()
        sync()
        tr.timing["data"] = 0.0
        t0 = time.perf_counter()
        for _ in range(steps):
            tr.train_step()
        sync()
        step_s = (time.perf_counter() - t0) / steps
        data_share = tr.timing["data"] / steps / step_s
        t = cfg.train
        images = t.batch_labeled + (t.batch_unlabeled if tr.method.uses_unlabeled else 0)

        def batched():
            out = tr.batches.labeled(t.batch_labeled)
            sync()
            return out
        batched_s = _time_batches(batched, batches)

        workers = workers if workers is not None else max(1, (os.cpu_count() or 1))
        ds = PerSampleCrops(cfg, tr.batches.labeled_pool.store, tr.batches.labeled_pool.rows)
        loader = torch.utils.data.DataLoader(ds, batch_size=t.batch_labeled, shuffle=True, num_workers=workers,
                                             drop_last=True, persistent_workers=workers > 0,
                                             pin_memory=dev.type == "cuda")
        it = iter(loader)

        def per_sample():
            nonlocal it
            try:
                x, target, weight = next(it)
            except StopIteration:
                it = iter(loader)
                x, target, weight = next(it)
            x = x.to(dev, non_blocking=True)
            sync()
            return x, target, weight
        per_sample_s = _time_batches(per_sample, batches)
    figures = dict(device=str(dev), method=cfg.method.name, model=cfg.model.name, step_ms=1000 * step_s,
                   steps_per_s=1 / step_s, images_per_s=images / step_s, data_share=data_share,
                   batched_batch_ms=1000 * batched_s, per_sample_batch_ms=1000 * per_sample_s,
                   per_sample_workers=workers, speedup=per_sample_s / batched_s)
    echo(f"device {figures['device']}, {cfg.method.name}, {cfg.model.name} {cfg.data.input_size[0]}x{cfg.data.input_size[1]}, "
         f"batch {t.batch_labeled}+{t.batch_unlabeled if tr.method.uses_unlabeled else 0}")
    echo(f"  training   {figures['step_ms']:.1f} ms/step   {figures['steps_per_s']:.2f} steps/s   "
         f"{figures['images_per_s']:.0f} images/s   data path {100 * data_share:.1f}% of a step")
    echo(f"  data path  batched on the device {figures['batched_batch_ms']:.2f} ms/batch   per-sample CPU pipeline "
         f"({workers} workers) {figures['per_sample_batch_ms']:.2f} ms/batch   -> batched is {figures['speedup']:.1f}x faster")
    return figures
