"""Occlusions of an easy view before its hard affine: the later recipes' augmentations, batched on the device.

MultiAugs (Zhou et al. 2024) names them T_JC joint cutout, T_JO joint cut-occlusion, T_CO cutout, T_CM
cutmix, T_MU mixup, and the pairs it adds, T_JOCO (JO then CO) and T_JCCM (JC then CM); SSPCM's
keypoint-perception Cut-Occlude (SSCO) is T_JO. Inputs are normalised easy views (B,3,H,W), where 0 is
the mean colour, and joints (B,J,2) in their pixels; sizes are the published ones at 256x192 (box
half-sizes 10-19 px per axis, joint jitter N(0, 10 px)), scaled by the crop's height. What the released
code does by accident is not reproduced: its boxes swap rows and columns (the bottom quarter of a crop is
never occluded) and its JO patches sit at transposed joint positions; here boxes are where they are meant
to be, and joints are drawn from the 17 trained channels (not 24 with 7 untrained)."""
import torch

from .augment import box_half_sizes, box_mask, joint_cutout

PATHS = ("jc", "jo", "co", "cm", "mu", "joco", "jccm")


def _centres(draws, b, k, h, w, device):
    """k uniform box centres per image (B,k,2: x, y) in pixels (scaled by Python numbers: no host copy)."""
    u = draws.uniform(b, k, 2).to(device)
    return torch.stack([u[..., 0] * w, u[..., 1] * h], -1)


def _partner(draws, b, device):
    """A random permutation of the batch (its partner images), from the run's draws."""
    return draws.uniform(b).to(device).argsort()


def cutout_holes(x, draws, holes=5):
    """T_CO: `holes` boxes per image at uniform centres, filled with the mean colour."""
    b, _, h, w = x.shape
    centre = _centres(draws, b, holes, h, w, x.device)
    half = box_half_sizes(draws, b, holes, h, x.device)
    return x.masked_fill(box_mask(centre, half, h, w).any(1, keepdim=True), 0.0)


def cutmix_holes(x, draws, holes=2):
    """T_CM: boxes as T_CO's, filled from the same place of another image of the batch (targets unmixed)."""
    b, _, h, w = x.shape
    centre = _centres(draws, b, holes, h, w, x.device)
    half = box_half_sizes(draws, b, holes, h, x.device)
    other = x[_partner(draws, b, x.device)]
    return torch.where(box_mask(centre, half, h, w).any(1, keepdim=True), other, x)


def beta(draws, alpha, candidates=16):
    """One draw of Beta(alpha, alpha) on the device without waiting for it: Johnk's method on `candidates`
    pairs of uniforms at once, the first accepted kept (acceptance 0.95 at alpha 0.2: all 16 fail with
    probability 1e-21; then 0.5)."""
    u, v = draws.uniform(candidates, whole=True), draws.uniform(candidates, whole=True)  # one per batch, every rank alike
    x, y = u ** (1 / alpha), v ** (1 / alpha)
    ok = (x + y <= 1) & (x + y > 0)
    first = torch.argmax(ok.int()).view(1)  # gathered, not indexed: x[t] with a 0-dim tensor t reads t on the host
    xf, yf = x.gather(0, first)[0], y.gather(0, first)[0]
    return torch.where(ok.any(), xf / (xf + yf).clamp(min=1e-30), torch.full_like(x[0], 0.5))


def mixup(x, draws, alpha=0.2):
    """T_MU: one lambda ~ Beta(alpha, alpha) per batch; each image keeps weight 1 - lambda/4 (0.75..1) and
    takes the rest from a partner of the batch; targets unchanged."""
    lam = beta(draws, alpha).to(x.device)
    keep = 1 - lam / 4
    return keep * x + (1 - keep) * x[_partner(draws, len(x), x.device)]


def joint_cut_occlusion(x, joints, draws, pairs=2):
    """T_JO / SSCO: per image one source image of the batch (itself possibly) and `pairs` (target joint,
    source joint) pairs; the source's patch around its (jittered) joint is pasted centred on the target's
    (jittered) joint, box by box from the unoccluded batch; where the patch leaves the source image it
    is filled with the mean colour. Patches move by whole pixels: copied, not resampled."""
    b, _, h, w = x.shape
    dev = x.device
    k = h / 256
    src = draws.integers(0, b, b).to(dev)
    pick_t = draws.integers(0, joints.shape[1], b, pairs).to(dev)
    pick_s = draws.integers(0, joints.shape[1], b, pairs).to(dev)
    at = torch.gather(joints, 1, pick_t[..., None].expand(-1, -1, 2)) + draws.normal(b, pairs, 2).to(dev) * 10 * k
    come = torch.gather(joints[src], 1, pick_s[..., None].expand(-1, -1, 2)) + draws.normal(b, pairs, 2).to(dev) * 10 * k
    half = box_half_sizes(draws, b, pairs, h, dev)
    source = x[src]
    out = x
    rows, cols = torch.arange(h, device=dev), torch.arange(w, device=dev)
    for p in range(pairs):
        shift = (come[:, p] - at[:, p]).round().long()                      # (B,2): target pixel + shift = source pixel
        sy, sx = rows[None] + shift[:, 1:2], cols[None] + shift[:, 0:1]    # (B,H), (B,W)
        inside = ((sy >= 0) & (sy < h))[:, :, None] & ((sx >= 0) & (sx < w))[:, None, :]
        patch = source.gather(2, sy.clamp(0, h - 1)[:, None, :, None].expand(-1, source.shape[1], -1, w))
        patch = patch.gather(3, sx.clamp(0, w - 1)[:, None, None, :].expand(-1, source.shape[1], h, -1))
        box = box_mask(at[:, p:p + 1], half[:, p:p + 1], h, w)             # (B,1,H,W)
        out = torch.where(box, patch * inside[:, None], out)
    return out


def occlude(path, x, joints, draws, s):
    """One MultiAugs path on an easy view; `s` holds the counts (jc_count, jo_pairs, co_holes, cm_holes,
    mixup_alpha). Each call draws its own randomness."""
    if path == "jc":
        return joint_cutout(x, joints, s.jc_count, draws)
    if path == "jo":
        return joint_cut_occlusion(x, joints, draws, s.jo_pairs)
    if path == "co":
        return cutout_holes(x, draws, s.co_holes)
    if path == "cm":
        return cutmix_holes(x, draws, s.cm_holes)
    if path == "mu":
        return mixup(x, draws, s.mixup_alpha)
    if path == "joco":
        return cutout_holes(joint_cut_occlusion(x, joints, draws, s.jo_pairs), draws, s.co_holes)
    if path == "jccm":
        return cutmix_holes(joint_cutout(x, joints, s.jc_count, draws), draws, s.cm_holes)
    raise ValueError(f"unknown occlusion path '{path}'")
