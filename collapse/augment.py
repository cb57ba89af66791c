"""Batched affine views on the device.

Coordinates are continuous pixel coordinates everywhere (pixel k covers [k, k+1), its centre is k+0.5),
the convention of COCO boxes and of `grid_sample(..., align_corners=False)`, which is the one choice used
throughout. A view is a (B, 3, 3) matrix mapping source pixels to view pixels. Views are built in
pixel space, so a rotation is a true rotation on non-square crops (the original code rotated in
normalised coordinates, which shears 3:4 crops; see docs/design.md, "Design notes and deviations").

easy view   A_e = E o base           (E: rotation, scale, horizontal flip about the crop centre)
hard view   A_h = X o A_e            (X: an extra rotation + scale, no flip)
transport   X carries a heatmap predicted on the easy view into the hard view's frame.
"""
import functools
import math
from typing import NamedTuple

import torch
import torch.nn.functional as F

from .data.skeleton import for_channels
from .device import host_waits

MEAN = torch.tensor([0.485, 0.456, 0.406]) * 255
STD = torch.tensor([0.229, 0.224, 0.225]) * 255


def translate(tx, ty):
    m = torch.eye(3, device=tx.device).repeat(len(tx), 1, 1)
    m[:, 0, 2], m[:, 1, 2] = tx, ty
    return m


def about_centre(rotation_deg, scale, flip, hw):
    """(B,3,3): rotate by `rotation_deg`, shrink content by `scale`, mirror where `flip`, about the centre."""
    h, w = hw
    rad = rotation_deg * (math.pi / 180)
    cos, sin = torch.cos(rad) / scale, torch.sin(rad) / scale
    sign = 1 - 2 * flip.to(cos.dtype)
    lin = torch.zeros(len(cos), 3, 3, device=cos.device)
    lin[:, 0, 0], lin[:, 0, 1] = cos * sign, -sin
    lin[:, 1, 0], lin[:, 1, 1] = sin * sign, cos
    lin[:, 2, 2] = 1
    one = torch.ones_like(cos)
    return translate(one * w / 2, one * h / 2) @ lin @ translate(-one * w / 2, -one * h / 2)


def store_to_input(n, store_hw, input_hw, device):
    """The fixed map from a stored crop to the centred input crop: stores keep the input's pixel
    density and add a margin on every side, so it is a pure shift."""
    (hs, ws), (h, w) = store_hw, input_hw
    one = torch.ones(n, device=device)
    return translate(one * (w - ws) / 2, one * (h - hs) / 2)


def transform_points(A, pts):
    """Apply (B,3,3) to points (B,J,2)."""
    return pts @ A[:, :2, :2].transpose(1, 2) + A[:, None, :2, 2]


class View(NamedTuple):
    """One view of a batch: the network input, the (B,3,3) matrix from store pixels to view pixels, and
    which samples are mirrored (their joint channels are swapped)."""
    image: torch.Tensor
    A: torch.Tensor
    flip: torch.Tensor


@functools.lru_cache(maxsize=64)
def _normaliser(hw, device):
    """Pixels -> grid_sample's [-1, 1] coordinates for an image of size hw, and its inverse; made once per
    size and device (a tensor built from Python numbers is a host-to-device copy on CUDA)."""
    h, w = hw
    n = torch.tensor([[2 / w, 0, -1], [0, 2 / h, -1], [0, 0, 1]], device=device)
    return n, torch.linalg.inv(n)


def inverse(A):
    """Batched inverse of (B,3,3) view matrices without linalg.inv's error check, which waits for the device
    (same values as linalg.inv: the same LAPACK/cuSOLVER factorisation)."""
    return torch.linalg.inv_ex(A).inverse


def warp(x, A, out_hw):
    """Resample images or heatmaps x (B,C,H,W) into the frame of A (source pixels -> output pixels)."""
    (n_src, _), (_, n_out_inv) = _normaliser(tuple(x.shape[-2:]), x.device), _normaliser(tuple(out_hw), x.device)
    theta = n_src @ inverse(A) @ n_out_inv
    grid = F.affine_grid(theta[:, :2].to(x.dtype), (len(x), x.shape[1], *out_hw), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


@functools.lru_cache(maxsize=8)
def _flip_index(joints, device):
    return torch.tensor(for_channels(joints).flip_index, device=device)


@functools.lru_cache(maxsize=8)
def stride_scale(stride, device):
    """Input pixels -> heatmap pixels (a view matrix), and back: made once per stride and device."""
    s = torch.diag(torch.tensor([1.0 / stride, 1.0 / stride, 1.0], device=device))
    return s, torch.linalg.inv(s)


def swap_flipped(t, flip):
    """Reorder joint channels (dim 1) of the samples that were mirrored, so channel j is joint j again
    (the skeleton's left/right pairs; its joint count names it)."""
    index = _flip_index(t.shape[1], t.device)
    return torch.where(flip.view(-1, *([1] * (t.dim() - 1))), t[:, index], t)


def normalise(crops_u8):
    """uint8 (B,H,W,3) on the device -> float (B,3,H,W), ImageNet-normalised (padding 0 = mean colour)."""
    return normalise_float(crops_u8.permute(0, 3, 1, 2).float())


def normalise_float(x):
    """float (B,3,H,W) in 0..255 -> ImageNet-normalised."""
    mean, std = _mean_std(x.device)
    return (x - mean) / std


@functools.lru_cache(maxsize=8)
def _mean_std(device):
    return MEAN.to(device).view(1, 3, 1, 1), STD.to(device).view(1, 3, 1, 1)


class ViewMaker:
    """Draws per-sample view parameters (collapse.draws.Draws) and builds the matrices."""

    def __init__(self, aug, input_hw, draws):
        self.aug, self.hw, self.draws = aug, tuple(input_hw), draws

    def _rotation(self, n, factor, prob, device):
        r = (self.draws.normal(n) * factor).clamp(-2 * factor, 2 * factor)
        keep = self.draws.uniform(n) < prob
        return torch.where(keep, r, torch.zeros_like(r)).to(device)

    def _scale(self, n, factor, device):
        return (1 + self.draws.normal(n) * factor).clamp(1 - factor, 1 + factor).to(device)

    def easy(self, n, device):
        """(matrix in the input frame, flip mask): the paper's easy augmentation."""
        a = self.aug
        rot = self._rotation(n, a.rotation, a.rot_prob, device)
        scale = self._scale(n, a.scale, device)
        flip = (self.draws.uniform(n) < a.flip).to(device)
        return about_centre(rot, scale, flip, self.hw), flip

    def extra(self, n, device):
        """The extra affine that turns an easy view into a hard one (no flip)."""
        a = self.aug
        rot = self._rotation(n, a.hard_rotation, a.hard_rot_prob, device)
        scale = self._scale(n, a.hard_scale, device)
        return about_centre(rot, scale, torch.zeros(n, dtype=torch.bool, device=device), self.hw)


# -- photometric "strong" augmentation and joint cutout -------------------------------------------

def _blend(a, b, factor):
    return (b + (a - b) * factor.view(-1, 1, 1, 1)).clamp(0, 255)


def _grey(x):
    return (0.299 * x[:, 0:1] + 0.587 * x[:, 1:2] + 0.114 * x[:, 2:3]).expand_as(x)


def randaugment(x, draws, n_ops=2, magnitude=20):
    """RandAugment's photometric ops on float crops (B,3,H,W) in 0..255, batched on the device.

    Each sample draws `n_ops` ops (with replacement); every op is computed for the whole batch and kept
    where chosen. Values follow the paper's code: v = M/30 * (max - min) + min; colour-type factors 1 +- v.
    Equalize is left out (no cheap batched form); the rest are as in the original op list."""
    b, device = len(x), x.device
    v = magnitude / 30
    ops = [
        lambda x: (x - x.amin((2, 3), keepdim=True)) * 255 / (x.amax((2, 3), keepdim=True) - x.amin((2, 3), keepdim=True)).clamp(min=1),
        lambda x: 255 - x,                                                        # invert
        lambda x: torch.floor(x / 2 ** (8 - int(8 - 4 * v))) * 2 ** (8 - int(8 - 4 * v)),  # posterize
        lambda x: torch.where(x >= 256 - 256 * v, 255 - x, x),                    # solarize
        lambda x: torch.where(x < 128, (x + 110 * v).clamp(max=255), x),          # solarize-add
        lambda x: _blend(x, _grey(x), sign),                                      # colour
        lambda x: _blend(x, _grey(x).mean((1, 2, 3), keepdim=True).expand_as(x), sign),  # contrast
        lambda x: _blend(x, torch.zeros_like(x), sign),                           # brightness
        lambda x: _blend(x, F.avg_pool2d(F.pad(x, (1, 1, 1, 1), mode="replicate"), 3, 1), sign),  # sharpness
        lambda x: cutout(x, (80 * v * x.shape[-1] / 192) * torch.ones(b, device=device), draws, (125.0, 123.0, 114.0)),
    ]
    for _ in range(n_ops):
        every_choice = draws.integers(0, len(ops), b, whole=True)  # the global batch's (under DDP)
        choice = draws.share(every_choice).to(device)
        sign = 1 + v * 0.9 * (2 * (draws.uniform(b) < 0.5).float() - 1).to(device)
        out = x
        for k, op in enumerate(ops):
            pick = (choice == k).view(-1, 1, 1, 1)
            # skipping an op no sample picked saves work on the CPU (and keeps its random stream as it was;
            # asked of the global batch, so every DDP rank skips alike); on a GPU asking would wait for
            # the device, so every op runs
            if host_waits(x.device) or (every_choice == k).any():
                out = torch.where(pick, op(x), out)
        x = out
    return x.clamp(0, 255)


def cutout(x, size, draws, fill):
    """One square of side `size` (B,) per sample at a random centre, filled with `fill`."""
    b, _, h, w = x.shape
    cx = draws.uniform(b).to(x.device) * w
    cy = draws.uniform(b).to(x.device) * h
    ys = torch.arange(h, device=x.device).view(1, h, 1) + 0.5
    xs = torch.arange(w, device=x.device).view(1, 1, w) + 0.5
    r = (size / 2).view(-1, 1, 1)
    box = ((xs - cx.view(-1, 1, 1)).abs() < r) & ((ys - cy.view(-1, 1, 1)).abs() < r)
    colour = _colour(tuple(fill), x.device)
    return torch.where(box[:, None], colour, x)


@functools.lru_cache(maxsize=8)
def _colour(fill, device):
    """A fill colour (1,3,1,1) on the device, made once (a tensor from Python numbers is a host copy)."""
    return torch.tensor(fill, device=device).view(1, 3, 1, 1)


def joint_cutout(x, joints, count, draws):
    """Blank `count` rectangles per sample around joints (B,J,2, pixels of x's frame), at 0 (the mean
    colour of normalised input). Sizes and jitter follow the paper's code, scaled from 256-pixel crops."""
    b, _, h, w = x.shape
    k = h / 256
    pick = draws.integers(0, joints.shape[1], b, count).to(x.device)
    centre = torch.gather(joints, 1, pick[..., None].expand(-1, -1, 2))
    centre = centre + draws.normal(b, count, 2).to(x.device) * 10 * k
    return x.masked_fill(box_mask(centre, box_half_sizes(draws, b, count, h, x.device), h, w).any(1, keepdim=True), 0.0)


def box_half_sizes(draws, b, k, h, device):
    """(B,k,2) box half-sizes: 10-19 px per axis at 256 rows (the papers' JC and cutout boxes), scaled to h."""
    return draws.integers(10, 20, b, k, 2).to(device) * (h / 256)


def box_mask(centre, half, h, w):
    """(B,K,H,W) bool: which pixel centres of an h x w image lie inside each of K boxes per sample, given
    their centres and half-sizes (B,K,2: x, y) in pixels."""
    ys = torch.arange(h, device=centre.device).view(1, 1, h, 1) + 0.5
    xs = torch.arange(w, device=centre.device).view(1, 1, 1, w) + 0.5
    return ((xs - centre[..., 0, None, None]).abs() < half[..., 0, None, None]) & \
           ((ys - centre[..., 1, None, None]).abs() < half[..., 1, None, None])


def strong_photometric(x, draws):
    """ST/ST++'s strong augmentation of unlabeled crops (B,3,H,W) in 0..255, batched on the device:
    colour jitter (brightness, contrast, saturation factors in [0.5, 1.5]) with p 0.8, grayscale p 0.2,
    Gaussian blur (sigma ~ U(0.1, 2) at 256-pixel height, scaled to the crop) p 0.5, and cutout p 0.5
    (area 2-40%, aspect 0.3-3.3, random noise fill). Hue jitter is left out (no cheap batched form)."""
    b, _, h, w = x.shape
    dev = x.device
    u = lambda *shape, dim=0: draws.uniform(*shape, dim=dim).to(dev)
    jitter = (u(b) < 0.8).view(-1, 1, 1, 1)
    f = 0.5 + u(3, b, dim=1)
    j = _blend(x, torch.zeros_like(x), f[0])                                       # brightness
    j = _blend(j, _grey(j).mean((1, 2, 3), keepdim=True).expand_as(j), f[1])      # contrast
    j = _blend(j, _grey(j), f[2])                                                  # saturation
    x = torch.where(jitter, j, x)
    x = torch.where((u(b) < 0.2).view(-1, 1, 1, 1), _grey(x), x)
    # blur: one separable Gaussian per sample, as a grouped convolution over the batch
    sigma = (0.1 + 1.9 * u(b)) * h / 256
    r = max(1, int(3 * 2.0 * h / 256 + 0.5))
    t = torch.arange(-r, r + 1, device=dev, dtype=x.dtype)
    k = torch.exp(-t[None] ** 2 / (2 * sigma[:, None] ** 2))
    k = (k / k.sum(1, keepdim=True)).repeat_interleave(3, 0)                      # (B*3, 2r+1)
    flat = x.reshape(1, b * 3, h, w)
    flat = F.conv2d(F.pad(flat, (r, r, 0, 0), mode="replicate"), k.view(b * 3, 1, 1, -1), groups=b * 3)
    flat = F.conv2d(F.pad(flat, (0, 0, r, r), mode="replicate"), k.view(b * 3, 1, -1, 1), groups=b * 3)
    x = torch.where((u(b) < 0.5).view(-1, 1, 1, 1), flat.view(b, 3, h, w), x)
    # cutout: a rectangle of random area and aspect, filled with uniform noise
    area = (0.02 + 0.38 * u(b)) * h * w
    aspect = torch.exp(math.log(0.3) + 2 * math.log(1 / 0.3) * u(b))
    bh, bw = (area * aspect).sqrt(), (area / aspect).sqrt()
    cy, cx = u(b) * h, u(b) * w
    ys = torch.arange(h, device=dev).view(1, h, 1) + 0.5
    xs = torch.arange(w, device=dev).view(1, 1, w) + 0.5
    box = ((ys - cy.view(-1, 1, 1)).abs() < bh.view(-1, 1, 1) / 2) & ((xs - cx.view(-1, 1, 1)).abs() < bw.view(-1, 1, 1) / 2)
    box = box & (u(b) < 0.5).view(-1, 1, 1)
    noise = u(b, 3, h, w) * 255
    return torch.where(box[:, None], noise, x).clamp(0, 255)
