"""Batch streams: sample store rows, make views on the device, render targets. No per-sample Python."""
import torch

from ..augment import ViewMaker, normalise, store_to_input, swap_flipped, transform_points, warp
from ..heatmaps import gaussian_targets


class Batches:
    def __init__(self, cfg, labeled, unlabeled, device, generator):
        self.cfg, self.labeled_pool, self.unlabeled_pool = cfg, labeled, unlabeled
        self.device, self.gen = device, generator
        self.input_hw = tuple(cfg.data.input_size)
        self.stride = cfg.data.heatmap_stride
        self.heatmap_hw = (self.input_hw[0] // self.stride, self.input_hw[1] // self.stride)
        self.views = ViewMaker(cfg.augment, self.input_hw, generator)

    def _indices(self, pool, n):
        return torch.randint(len(pool), (n,), generator=self.gen)

    def base(self, n, pool):
        return store_to_input(n, pool.store.store_hw, self.input_hw, self.device)

    def targets(self, A, flip, keypoints):
        """Gaussian targets and weights for store keypoints (B,J,3) seen through view A."""
        pts = swap_flipped(transform_points(A, keypoints[..., :2]), flip)
        vis = swap_flipped(keypoints[..., 2], flip)
        h, w = self.input_hw
        inside = (pts[..., 0] >= 0) & (pts[..., 0] < w) & (pts[..., 1] >= 0) & (pts[..., 1] < h)
        weight = ((vis > 0) & inside).float()
        return gaussian_targets(pts / self.stride, weight, self.heatmap_hw, self.cfg.data.sigma), weight

    def labeled(self, n):
        """Easy-augmented labeled crops with their targets."""
        crops, kps = self.labeled_pool.fetch(self._indices(self.labeled_pool, n))
        E, flip = self.views.easy(n, self.device)
        A = E @ self.base(n, self.labeled_pool)
        x = warp(normalise(crops), A, self.input_hw)
        target, weight = self.targets(A, flip, kps)
        return dict(x=x, target=target, weight=weight)

    def unlabeled(self, n):
        """Easy-augmented unlabeled crops (labels kept only for probes), with the view that made them."""
        idx = self._indices(self.unlabeled_pool, n)
        crops, kps = self.unlabeled_pool.fetch(idx)
        E, flip = self.views.easy(n, self.device)
        A = E @ self.base(n, self.unlabeled_pool)
        return dict(x=warp(normalise(crops), A, self.input_hw), A=A, flip=flip, keypoints=kps, index=idx)
