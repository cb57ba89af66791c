"""The Trainer's probes: fixed probe sets (the first `train.probe_size` unlabeled and validation crops,
un-augmented) drawn from the run's pools; the statistics themselves and the gallery are collapse/monitor.py's,
the one implementation shared with other people's trainers (the detector: collapse/detector.py)."""
import torch

from .augment import normalise, store_to_input, transform_points, warp
from .monitor import GALLERY, HIST_EDGES, PL_TAUS, PROBE_COLUMNS, TAUS, ProbeRow, ProbeSet, probe_statistics


__all__ = ["GALLERY", "HIST_EDGES", "PL_TAUS", "PROBE_COLUMNS", "ProbeRow", "TAUS", "Prober"]


class Prober:
    def __init__(self, batches, pools, size):
        """pools: {split: Pool}; the probe set of each is its first `size` rows, fixed for the run."""
        self.batches = batches
        self.sets = {}
        for split, pool in pools.items():
            if pool is None or len(pool) == 0:
                continue
            idx = torch.arange(min(size, len(pool)))
            crops, kps = pool.fetch(idx)
            A = store_to_input(len(idx), pool.store.store_hw, batches.input_hw, batches.device)
            target, weight = batches.targets(A, torch.zeros(len(idx), dtype=torch.bool, device=A.device), kps)
            points = transform_points(A, kps[..., :2].float())  # input pixels
            self.sets[split] = ProbeSet(warp(normalise(crops), A, batches.input_hw), target, weight, points)
            if split == "unlabeled":
                self.gallery_crops = warp(crops[:GALLERY].permute(0, 3, 1, 2).float(), A[:GALLERY], batches.input_hw)
        self.gallery = []  # (step, max-over-joints heatmaps (K,h,w) fp16, decoded joints (K,J,3)) per probe
        self.histograms = {}  # (split, net) -> the last probe's pixel-response counts per HIST_EDGES bin and moments

    def __call__(self, step, nets, teachers):
        rows, self.histograms, gallery = probe_statistics(step, self.sets, nets, teachers, self.batches.stride,
                                                          self.batches.input_hw[0])
        if gallery is not None:
            self.gallery.append(gallery)
        return rows
