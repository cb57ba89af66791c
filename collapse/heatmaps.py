"""Gaussian heatmap targets and decoding, batched on the device.

Heatmap pixel k covers input pixels [k*stride, (k+1)*stride); a point at continuous input coordinate u
sits at u/stride in heatmap coordinates and pixel k's centre is k+0.5. Targets are unnormalised Gaussians
centred at the exact sub-pixel location (peak 1 when the point falls on a pixel centre).
"""
import torch

CONFIDENT = 0.2  # a decoded joint whose peak exceeds this counts as found (SimpleBaseline's in_vis_thre): in the
                 # instance score of its results, ST++'s agreement gate, the gallery's drawn joints



def gaussian_targets(points, weight, hw, sigma):
    """points (B,J,2) in heatmap coords, weight (B,J) -> (B,J,H,W) targets, zero where weight is 0."""
    h, w = hw
    ys = torch.arange(h, device=points.device, dtype=points.dtype) + 0.5
    xs = torch.arange(w, device=points.device, dtype=points.dtype) + 0.5
    # separable: exp(-(dx^2 + dy^2) / 2s^2) = exp(-dx^2 / 2s^2) exp(-dy^2 / 2s^2), so only B*J*(H+W)
    # exponentials, then one broadcast product (10x fewer transcendental ops than the full grid)
    gx = torch.exp(-((xs - points[..., 0, None]) ** 2) / (2 * sigma ** 2)) * weight[..., None]   # (B,J,W)
    gy = torch.exp(-((ys - points[..., 1, None]) ** 2) / (2 * sigma ** 2))                       # (B,J,H)
    return gy[..., :, None] * gx[..., None, :]


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


def decode_dark(heatmaps, sigma):
    """DARK decoding (Zhang et al., CVPR 2020): smooth each heatmap with a Gaussian of the target's sigma
    (rescaled to keep its peak), then refine the integer argmax by one Newton step on the log-heatmap,
    offset = -H^-1 grad, using central differences. Falls back to the argmax where the Hessian is not
    negative definite or the peak lies on the border. Returns (coords (B,J,2) heatmap coords, maxvals)."""
    b, j, h, w = heatmaps.shape
    maxval = heatmaps.reshape(b, j, -1).amax(-1)
    r = max(1, int(3 * sigma + 0.5))
    t = torch.arange(-r, r + 1, device=heatmaps.device, dtype=heatmaps.dtype)
    k = torch.exp(-t ** 2 / (2 * sigma ** 2))
    k = k / k.sum()
    x = heatmaps.reshape(b * j, 1, h, w)
    x = torch.nn.functional.conv2d(torch.nn.functional.pad(x, (r, r, 0, 0), mode="replicate"), k.view(1, 1, 1, -1))
    x = torch.nn.functional.conv2d(torch.nn.functional.pad(x, (0, 0, r, r), mode="replicate"), k.view(1, 1, -1, 1))
    x = x.reshape(b, j, h, w)
    peak = x.reshape(b, j, -1).amax(-1).clamp(min=1e-10)
    x = x * (maxval.clamp(min=1e-10) / peak)[..., None, None]
    logh = torch.log(x.clamp(min=1e-10)).reshape(b * j, h, w)
    idx = heatmaps.reshape(b * j, -1).argmax(-1)
    px, py = idx % w, torch.div(idx, w, rounding_mode="floor")
    at = lambda dx, dy: logh[torch.arange(b * j, device=x.device), (py + dy).clamp(0, h - 1), (px + dx).clamp(0, w - 1)]
    gx, gy = 0.5 * (at(1, 0) - at(-1, 0)), 0.5 * (at(0, 1) - at(0, -1))
    hxx = at(1, 0) - 2 * at(0, 0) + at(-1, 0)
    hyy = at(0, 1) - 2 * at(0, 0) + at(0, -1)
    hxy = 0.25 * (at(1, 1) - at(1, -1) - at(-1, 1) + at(-1, -1))
    det = hxx * hyy - hxy ** 2
    ok = (det > 1e-12) & (hxx < 0) & (px > 0) & (px < w - 1) & (py > 0) & (py < h - 1)
    safe = torch.where(ok, det, torch.ones_like(det))
    ox = torch.where(ok, -(hyy * gx - hxy * gy) / safe, torch.zeros_like(det)).clamp(-1, 1)
    oy = torch.where(ok, -(hxx * gy - hxy * gx) / safe, torch.zeros_like(det)).clamp(-1, 1)
    coords = torch.stack([px.to(x.dtype) + 0.5 + ox, py.to(x.dtype) + 0.5 + oy], -1)
    return coords.reshape(b, j, 2), maxval
