"""Batch streams: sample store rows, make views on the device, render targets. No per-sample Python."""
import torch

from ..augment import ViewMaker, normalise, normalise_float, store_to_input, swap_flipped, transform_points, warp
from ..heatmaps import gaussian_targets


class Batches:
    def __init__(self, cfg, labeled, unlabeled, device, generator):
        self.cfg, self.labeled_pool, self.unlabeled_pool = cfg, labeled, unlabeled
        self.device, self.gen = device, generator
        self.input_hw = tuple(cfg.data.input_size)
        self.stride = cfg.data.heatmap_stride
        self.heatmap_hw = (self.input_hw[0] // self.stride, self.input_hw[1] // self.stride)
        self.views = ViewMaker(cfg.augment, self.input_hw, generator)
        self.unlabeled_subset = None  # CPU tensor of pool rows to sample unlabeled crops from (None: all); set by staged methods

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
        """Unlabeled crops in the store frame (float 0..255) with their easy view; methods derive more views
        with `view`. Ground-truth keypoints ride along for probes only, never for losses."""
        if self.unlabeled_subset is None:
            idx = self._indices(self.unlabeled_pool, n)
        else:
            idx = self.unlabeled_subset[torch.randint(len(self.unlabeled_subset), (n,), generator=self.gen)]
        crops, kps = self.unlabeled_pool.fetch(idx)
        E, flip = self.views.easy(n, self.device)
        return dict(crops=crops.permute(0, 3, 1, 2).float(), base=self.base(n, self.unlabeled_pool),
                    easy=E, flip=flip, keypoints=kps, index=idx)

    def view(self, unl, kind="easy", photometric=None, extra=None):
        """One view of an unlabeled batch -> (image, A, flip). kind: easy (the batch's easy view), hard
        (extra affine o easy), fresh (an independent easy view of equal strength)."""
        n = len(unl["crops"])
        if kind == "fresh":
            E, flip = self.views.easy(n, self.device)
        else:
            E, flip = unl["easy"], unl["flip"]
            if kind == "hard":
                E = (self.views.extra(n, self.device) if extra is None else extra) @ E
        A = E @ unl["base"]
        crops = unl["crops"] if photometric is None else photometric(unl["crops"])
        return warp(normalise_float(crops), A, self.input_hw), A, flip

    def transport(self, heat, A_from, flip_from, A_to, flip_to):
        """Carry heatmaps predicted in one view's frame into another's (joint channels swapped where the
        two views differ by a mirror). Heatmaps and images share normalised coordinates."""
        rel = A_to @ torch.linalg.inv(A_from)
        s = torch.diag(torch.tensor([1.0 / self.stride, 1.0 / self.stride, 1.0], device=heat.device))
        moved = warp(heat, s @ rel @ torch.linalg.inv(s), self.heatmap_hw)
        return swap_flipped(moved, flip_from != flip_to)
