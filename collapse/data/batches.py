"""Batch streams: sample store rows, make views on the device, render targets. No per-sample Python."""
import torch

from ..augment import (View, ViewMaker, inverse, normalise, normalise_float, store_to_input, stride_scale, swap_flipped,
                       transform_points, warp)
from ..draws import Draws
from ..heatmaps import gaussian_targets
from .read_ahead import ReadAhead
from .skeleton import labeled


FIELD_MIN = 0.99  # a carried heatmap pixel is inside the teacher's field when all its bilinear neighbours are


class Batches:
    def __init__(self, cfg, labeled, unlabeled, device, draws):
        self.cfg, self.labeled_pool, self.unlabeled_pool = cfg, labeled, unlabeled
        self.device, self.draws = device, draws  # collapse.draws.Draws: every random number of a step
        self.input_hw = tuple(cfg.data.input_size)
        self.stride = cfg.data.heatmap_stride
        self.skeleton = labeled.skeleton  # the run's (the labeled split's): its joints, OKS sigmas
        self.heatmap_hw = (self.input_hw[0] // self.stride, self.input_hw[1] // self.stride)
        self.views = ViewMaker(cfg.augment, self.input_hw, draws)
        self._subset = None
        # a pool read from its memory map draws its rows ahead, from a generator of its own (seeded by the
        # run and the pool) so its thread can run ahead of the step's draws
        self.read_ahead = {name: ReadAhead(pool, Draws.seeded(cfg.train.seed * 1_000_003 + k + 1, "cpu", draws.rank, draws.world))
                           for k, (name, pool) in enumerate([("labeled", labeled), ("unlabeled", unlabeled)])
                           if pool is not None and not pool.resident}

    @property
    def unlabeled_subset(self):
        """Pool rows to sample unlabeled crops from (None: all), on the draws' device; set by staged methods."""
        return self._subset

    @unlabeled_subset.setter
    def unlabeled_subset(self, subset):
        self._subset = subset
        if "unlabeled" in self.read_ahead:  # its host copy is made now, at the stage change, not in a later step
            self.read_ahead["unlabeled"].use_subset(subset)

    def _sample(self, name, pool, n, subset=None):
        """n rows of a pool (drawn from `subset`'s positions when given) -> (uint8 crops, keypoints,
        positions) on the device."""
        if name in self.read_ahead:
            return self.read_ahead[name].next(n, subset)
        idx = self.draws.integers(0, len(pool), n) if subset is None else subset[self.draws.integers(0, len(subset), n)]
        return (*pool.fetch(idx), idx)

    def state_dict(self):
        return dict(read_ahead={k: r.state_dict() for k, r in self.read_ahead.items()})

    def load_state_dict(self, state):
        for k, r in self.read_ahead.items():
            r.load_state_dict(state["read_ahead"][k])

    def close(self):
        for r in self.read_ahead.values():
            r.stop()

    def base(self, n, pool):
        return store_to_input(n, pool.store.store_hw, self.input_hw, self.device)

    def targets(self, A, flip, keypoints):
        """Gaussian targets and weights for store keypoints (B,J,3) seen through view A."""
        pts = swap_flipped(transform_points(A, keypoints[..., :2]), flip)
        vis = swap_flipped(keypoints[..., 2], flip)
        h, w = self.input_hw
        inside = (pts[..., 0] >= 0) & (pts[..., 0] < w) & (pts[..., 1] >= 0) & (pts[..., 1] < h)
        weight = (labeled(vis) & inside).float()
        return gaussian_targets(pts / self.stride, weight, self.heatmap_hw, self.cfg.data.sigma), weight

    def labeled(self, n):
        """Easy-augmented labeled crops with their targets."""
        crops, kps, _ = self._sample("labeled", self.labeled_pool, n)
        E, flip = self.views.easy(n, self.device)
        A = E @ self.base(n, self.labeled_pool)
        x = warp(normalise(crops), A, self.input_hw)
        target, weight = self.targets(A, flip, kps)
        return dict(x=x, target=target, weight=weight)

    def unlabeled(self, n):
        """Unlabeled crops in the store frame (float 0..255) with their easy view; methods derive more views
        with `view`. Ground-truth keypoints ride along for probes only, never for losses."""
        crops, kps, idx = self._sample("unlabeled", self.unlabeled_pool, n, self.unlabeled_subset)
        E, flip = self.views.easy(n, self.device)
        return dict(crops=crops.permute(0, 3, 1, 2).float(), base=self.base(n, self.unlabeled_pool),
                    easy=E, flip=flip, keypoints=kps, index=idx)

    def view(self, unl, kind="easy", photometric=None, extra=None):
        """One view of an unlabeled batch -> View(image, A, flip). kind: easy (the batch's easy view), hard
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
        return View(warp(normalise_float(crops), A, self.input_hw), A, flip)

    def transport(self, heat, A_from, flip_from, A_to, flip_to):
        """Carry heatmaps predicted in one view's frame into another's -> (heatmaps, field).

        Joint channels are swapped where the two views differ by a mirror. `field` (B,1,h,w) is 1 where the
        pixel lies inside the source view (the teacher's field of view) and 0 where the source view saw
        nothing: there the carried heatmap is 0 by padding, not by prediction, and must carry no loss
        (the student's view is resampled from the stored crop with its margin, so it can show real
        content, joints included, that the teacher never saw). Heatmaps and images share normalised
        coordinates."""
        moved = self._carry(torch.cat([heat, torch.ones_like(heat[:, :1])], 1), A_from, A_to)
        return swap_flipped(moved[:, :-1], flip_from != flip_to), (moved[:, -1:] > FIELD_MIN).to(heat.dtype)

    @staticmethod
    def reorder(t, v_from, v_to):
        """Per-joint values t (B,J,...) in view v_from's channel order, put in view v_to's (a mirror between
        the two views swaps left and right joints, as `transport` does for heatmaps)."""
        return swap_flipped(t, v_from.flip != v_to.flip)

    def field(self, A_from, A_to):
        """View A_from's field of view in A_to's heatmap frame (B,1,h,w), as `transport` returns it."""
        ones = torch.ones(len(A_from), 1, *self.heatmap_hw, device=A_from.device)
        return (self._carry(ones, A_from, A_to) > FIELD_MIN).float()

    def _carry(self, maps, A_from, A_to):
        rel = A_to @ inverse(A_from)
        s, s_inv = stride_scale(self.stride, maps.device)
        return warp(maps, s @ rel @ s_inv, self.heatmap_hw)


