"""Gaussian heatmap targets and decoding, batched on the device.

Heatmap pixel k covers input pixels [k*stride, (k+1)*stride); a point at continuous input coordinate u
sits at u/stride in heatmap coordinates and pixel k's centre is k+0.5. Targets are unnormalised Gaussians
centred at the exact sub-pixel location (peak 1 when the point falls on a pixel centre).
"""
import torch


def gaussian_targets(points, weight, hw, sigma):
    """points (B,J,2) in heatmap coords, weight (B,J) -> (B,J,H,W) targets, zero where weight is 0."""
    h, w = hw
    ys = torch.arange(h, device=points.device, dtype=points.dtype) + 0.5
    xs = torch.arange(w, device=points.device, dtype=points.dtype) + 0.5
    dx2 = (xs.view(1, 1, 1, w) - points[..., 0, None, None]) ** 2
    dy2 = (ys.view(1, 1, h, 1) - points[..., 1, None, None]) ** 2
    return torch.exp(-(dx2 + dy2) / (2 * sigma ** 2)) * weight[..., None, None]


def decode(heatmaps):
    """Argmax + quarter-pixel shift toward the larger neighbour -> (coords (B,J,2) heatmap coords, maxvals (B,J))."""
    b, j, h, w = heatmaps.shape
    flat = heatmaps.reshape(b, j, -1)
    maxval, idx = flat.max(-1)
    x, y = idx % w, torch.div(idx, w, rounding_mode="floor")
    hm = heatmaps.reshape(b * j, h, w)
    bj = torch.arange(b * j, device=heatmaps.device)
    xf, yf = x.reshape(-1), y.reshape(-1)
    dx = hm[bj, yf, (xf + 1).clamp(max=w - 1)] - hm[bj, yf, (xf - 1).clamp(min=0)]
    dy = hm[bj, (yf + 1).clamp(max=h - 1), xf] - hm[bj, (yf - 1).clamp(min=0), xf]
    inner_x = (xf > 0) & (xf < w - 1)
    inner_y = (yf > 0) & (yf < h - 1)
    sx = torch.where(inner_x, 0.25 * torch.sign(dx), torch.zeros_like(dx))
    sy = torch.where(inner_y, 0.25 * torch.sign(dy), torch.zeros_like(dy))
    coords = torch.stack([xf.to(heatmaps.dtype) + 0.5 + sx, yf.to(heatmaps.dtype) + 0.5 + sy], -1)
    return coords.reshape(b, j, 2), maxval
