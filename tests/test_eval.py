"""Evaluation extras: DARK decoding, the flip test, and `collapse bench`."""
import numpy as np
import torch

from collapse.augment import swap_flipped, warp
from collapse.evaluate import flipped_view, heatmaps
from collapse.heatmaps import decode, decode_dark, gaussian_targets
from collapse.models import build_model
from collapse.config import ModelConfig


def test_dark_beats_argmax_on_subpixel_targets():
    g = torch.Generator().manual_seed(0)
    pts = torch.rand(32, 17, 2, generator=g) * torch.tensor([18.0, 26.0]) + 3   # away from the border
    heat = gaussian_targets(pts, torch.ones(32, 17), (32, 24), 1.5)
    err_argmax = (decode(heat)[0] - pts).norm(dim=-1).mean()
    err_dark = (decode_dark(heat, 1.5)[0] - pts).norm(dim=-1).mean()
    assert err_dark < 0.5 * err_argmax and err_dark < 0.06
    assert torch.allclose(decode_dark(heat, 1.5)[1], heat.amax((2, 3)))       # confidences are the peaks


def test_flip_test_of_a_symmetric_input_is_symmetric():
    torch.manual_seed(0)
    net = build_model(ModelConfig(name="tiny", width=8), 17, 2).eval()
    torch.nn.init.normal_(net.head.weight, std=0.1)
    x = torch.randn(2, 3, 64, 48)
    M, flip = flipped_view(2, (64, 48), x.device)
    x = 0.5 * (x + warp(x, M, (64, 48)))                                        # mirror-symmetric images
    assert torch.allclose(x, warp(x, M, (64, 48)), atol=1e-5)
    with torch.no_grad():
        h = heatmaps(net, x, True, 2)
        plain = heatmaps(net, x, False, 2)
    Mh, _ = flipped_view(2, (32, 24), x.device)
    mirrored = swap_flipped(warp(h, Mh, (32, 24)), flip)
    scale = plain.abs().max()
    assert (h - mirrored).abs().max() < 1e-4 * scale                            # H = swap(mirror(H))
    assert (plain - swap_flipped(warp(plain, Mh, (32, 24)), flip)).abs().max() > 0.05 * scale  # not without it
    # so the decoded left and right joints are mirror images of each other (a centre joint's own map is
    # symmetric, with mirror-image twin peaks, so its argmax may fall on either: left out)
    xy, _ = decode(h)
    from collapse.data.skeleton import FLIP_INDEX
    paired = [j for j in range(17) if FLIP_INDEX[j] != j]
    other = [FLIP_INDEX[j] for j in paired]
    assert torch.allclose(xy[:, paired, 0], 24 - xy[:, other, 0], atol=1e-4)
    assert torch.allclose(xy[:, paired, 1], xy[:, other, 1])


def test_bench_reports_its_figures(synth_root, capsys):
    from collapse import config
    from collapse.bench import bench
    cfg = config.load("configs/demo.yaml", [f"data.root={synth_root}", "model.width=8", "method.name=easy_hard",
                                            "train.threads=1", "train.device=cpu"])
    f = bench(cfg, steps=3, batches=3, workers=0)
    assert f["steps_per_s"] > 0 and 0 < f["data_share"] < 1 and f["images_per_s"] == 32 * f["steps_per_s"]
    # a ratio of two timings on a shared machine is a figure for the bench, not an assertion: its presence
    # and sanity only (the measured ratio is in the README)
    assert np.isfinite(f["speedup"]) and f["speedup"] > 0
    assert "batched is" in capsys.readouterr().out
