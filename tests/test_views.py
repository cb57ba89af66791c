"""Geometry: a keypoint pushed through a view's matrix lands at the argmax of the warped target."""
import torch

from collapse.augment import ViewMaker, about_centre, swap_flipped, transform_points, warp
from collapse.config import AugmentConfig
from collapse.data.skeleton import COCO17
from collapse.draws import Draws
from collapse.heatmaps import decode, gaussian_targets

HW, STRIDE, SIGMA = (64, 48), 2, 1.5
HM = (HW[0] // STRIDE, HW[1] // STRIDE)


def _points(n, gen):
    # joints well inside the crop so that no view pushes them out
    return torch.stack([12 + 24 * torch.rand(n, 17, generator=gen), 18 + 28 * torch.rand(n, 17, generator=gen)], -1)


def _argmax_xy(h):
    xy, _ = decode(h)
    return xy


def _random_views(seed, n=64):
    """Joints, unit weights, an easy view (with its flips) and an extra affine, all rotations on."""
    gen = torch.Generator().manual_seed(seed)
    vm = ViewMaker(AugmentConfig(rot_prob=1.0, flip=0.5, hard_rot_prob=1.0), HW, Draws(gen))
    pts = _points(n, gen)
    E, flip = vm.easy(n, "cpu")
    return pts, torch.ones(n, 17), E, flip, vm.extra(n, "cpu")


def _inside(expect):
    return (expect > 1).all(-1) & (expect[..., 0] < HM[1] - 1) & (expect[..., 1] < HM[0] - 1)


def test_easy_and_hard_views_put_targets_where_matrices_say():
    pts, ones, E, flip, X = _random_views(0)
    base = gaussian_targets(pts / STRIDE, ones, HM, SIGMA)  # targets in the source frame
    assert flip.any() and (~flip).any()
    for A in (E, X @ E):
        # warp the source heatmap into the view, swap joints where mirrored
        Ah = torch.diag(torch.tensor([1 / STRIDE, 1 / STRIDE, 1.0])) @ A @ torch.diag(torch.tensor([STRIDE, STRIDE, 1.0]))
        warped = swap_flipped(warp(base, Ah, HM), flip)
        expect = swap_flipped(transform_points(A, pts), flip) / STRIDE
        # and the target rendered directly in the view
        direct = gaussian_targets(expect, ones, HM, SIGMA)
        inside = _inside(expect)
        assert inside.float().mean() > 0.8
        for h in (warped, direct):
            err = (_argmax_xy(h) - expect).norm(dim=-1)
            assert err[inside].max() < 1.0, err[inside].max()


def test_easy_to_hard_transport_matches_hard_view():
    pts, ones, E, flip, X = _random_views(1)
    n = len(pts)
    easy_pts = swap_flipped(transform_points(E, pts), flip)
    easy_heat = gaussian_targets(easy_pts / STRIDE, ones, HM, SIGMA)
    hard_pts = swap_flipped(transform_points(X @ E, pts), flip)
    # the relative transform is X in input pixels; images and heatmaps share normalised coordinates
    S = torch.diag(torch.tensor([1 / STRIDE, 1 / STRIDE, 1.0]))
    moved = warp(easy_heat, S @ X @ torch.linalg.inv(S), HM)
    expect = hard_pts / STRIDE
    inside = _inside(expect)
    err = (_argmax_xy(moved) - expect).norm(dim=-1)
    assert inside.float().mean() > 0.8 and err[inside].max() < 1.0
    # an image warp with X moves a bright dot to the same place
    img = torch.zeros(n, 1, *HW)
    p = easy_pts[:, 0].round().long().clamp(0, 47)
    img[torch.arange(n), 0, p[:, 1].clamp(0, 63), p[:, 0]] = 1
    img = torch.nn.functional.avg_pool2d(img, 3, 1, 1)
    dot = _argmax_xy(warp(img, X, HW))[:, 0]
    q = transform_points(X, (p.float() + 0.5)[:, None])[:, 0]
    assert (dot - q).norm(dim=-1).max() < 1.5


def test_flip_is_a_mirror_with_joint_swap():
    n = 2
    F = about_centre(torch.zeros(n), torch.ones(n), torch.tensor([True, False]), HW)
    p = torch.tensor([[[10.0, 20.0]], [[10.0, 20.0]]])
    out = transform_points(F, p)
    assert torch.allclose(out[0, 0], torch.tensor([48 - 10.0, 20.0]))
    assert torch.allclose(out[1, 0], torch.tensor([10.0, 20.0]))
    t = torch.arange(17.0).repeat(2, 1)
    swapped = swap_flipped(t, torch.tensor([True, False]))
    assert swapped[0].tolist() == [float(i) for i in COCO17.flip_index] and swapped[1].tolist() == t[1].tolist()


def test_targets_are_vectorised_gaussians_with_unit_peak_on_pixel_centres():
    pts = torch.tensor([[[5.5, 7.5], [10.5, 3.5]]])
    h = gaussian_targets(pts, torch.tensor([[1.0, 0.0]]), (16, 12), 2.0)
    assert h.shape == (1, 2, 16, 12)
    assert h[0, 0, 7, 5] == 1.0 and h[0, 1].abs().max() == 0
    assert abs(h[0, 0, 7, 7].item() - torch.exp(torch.tensor(-4 / 8)).item()) < 1e-6


def test_decode_quarter_shift_and_subpixel():
    h = gaussian_targets(torch.tensor([[[6.3, 8.8]]]), torch.ones(1, 1), (16, 12), 1.5)
    xy, conf = decode(h)
    assert (xy - torch.tensor([6.3, 8.8])).abs().max() <= 0.26
    assert 0.9 < conf.item() <= 1.0


def test_joint_cutout_blanks_patches_at_the_joints_only():
    from collapse.augment import joint_cutout
    gen = torch.Generator().manual_seed(0)
    x = torch.ones(4, 3, 256, 192)
    joints = torch.tensor([60.0, 80.0]).expand(4, 17, 2).clone()
    out = joint_cutout(x, joints, 5, Draws(gen))
    assert (out[:, :, 80, 60] == 0).float().mean() > 0.5  # jitter may move a patch off the joint, rarely
    assert (out[:, :, 250, 190] == 1).all() and out.shape == x.shape
    blanked = (out[:, 0] == 0).float().mean((1, 2))
    assert ((blanked > 0) & (blanked < 0.2)).all()


def test_randaugment_is_photometric_and_in_range():
    from collapse.augment import randaugment
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(32, 3, 64, 48) * 255
    y = randaugment(x, Draws(gen), 2, 20)
    assert y.shape == x.shape and y.min() >= 0 and y.max() <= 255
    changed = (y - x).abs().mean((1, 2, 3)) > 1
    assert changed.float().mean() > 0.7
