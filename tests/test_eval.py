"""Evaluation extras: DARK decoding, the flip test, and `collapse bench`."""
import numpy as np
import torch

from collapse.augment import swap_flipped, warp
from collapse.config import ModelConfig
from collapse.draws import Draws
from collapse.evaluate import flipped_view, heatmaps
from collapse.heatmaps import decode, decode_dark, gaussian_targets
from collapse.models import build_model


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
    from collapse.data.skeleton import COCO17
    FLIP_INDEX = COCO17.flip_index
    paired = [j for j in range(17) if FLIP_INDEX[j] != j]
    other = [FLIP_INDEX[j] for j in paired]
    assert torch.allclose(xy[:, paired, 0], 24 - xy[:, other, 0], atol=1e-4)
    assert torch.allclose(xy[:, paired, 1], xy[:, other, 1])


def test_bench_reports_its_figures(synth_root, capsys, monkeypatch):
    from collapse import config
    from collapse.bench import bench
    cfg = config.load("configs/demo.yaml", [f"data.root={synth_root}", "model.width=8", "method.name=easy_hard",
                                            "train.threads=1", "train.device=cpu"])
    import time
    from collapse.data.batches import Batches
    unlabeled = Batches.unlabeled
    def slow_unlabeled(self, n):  # a data path of at least 20 ms a step: the share must cover all of it
        time.sleep(0.02)
        return unlabeled(self, n)
    monkeypatch.setattr(Batches, "unlabeled", slow_unlabeled)
    f = bench(cfg, steps=3, batches=2, workers=0, rounds=1, decode=8)
    assert f["data_share"] * f["step_ms"] >= 20 and f["data_share"] < 1
    # a ratio of two timings on a shared machine is a figure for the bench, not an assertion: its presence
    # and sanity only (the measured ratios are in docs/speed_and_gpus.md)
    assert set(f["ratios"]) == {"v2 x1", "v2 x0", "classic x0"} and all(np.isfinite(v) and v > 0 for v in f["ratios"].values())
    assert f["decode_images"] == 8 and f["decode_max_abs_diff"] == 0  # TorchCodec gives PIL's pixels
    out = capsys.readouterr().out
    assert "v2 x1" in out and "TorchCodec batched" in out


def test_the_transforms_v2_peer_is_correct_per_sample(synth_root):
    """The peer in `collapse bench` must teach what the batched path teaches: with no rotation and no scaling,
    a mirrored sample's targets have the batched path's weights, and each joint's peak (in its swapped
    channel) within one heatmap pixel (torchvision mirrors pixel indices, x -> W - 1 - x; we mirror
    continuous coordinates, x -> W - x: half a heatmap pixel apart at stride 2)."""
    from collapse import config
    from collapse.augment import about_centre, store_to_input
    from collapse.bench import TransformsV2Crops
    from collapse.data.batches import Batches
    from collapse.data.store import Pool, build
    from collapse.heatmaps import decode
    cfg = config.load("configs/demo.yaml", ["augment.rot_prob=0", "augment.scale=0", "augment.flip=1"])
    store = build(synth_root, "val", tuple(cfg.data.input_size), cfg.data.store_margin)
    rows = np.arange(12)
    pool = Pool(store, rows, torch.device("cpu"))
    ds = TransformsV2Crops(cfg, store, rows)
    x, target, weight = (torch.stack(t) for t in zip(*(ds[i] for i in range(len(rows)))))
    batches = Batches(cfg, pool, None, torch.device("cpu"), Draws(torch.Generator()))
    n, flip = len(rows), torch.ones(len(rows), dtype=torch.bool)
    A = about_centre(torch.zeros(n), torch.ones(n), flip, batches.input_hw) @ store_to_input(
        n, store.store_hw, batches.input_hw, torch.device("cpu"))
    ours, our_weight = batches.targets(A, flip, pool.keypoints)
    assert x.shape == (n, 3, *cfg.data.input_size) and torch.equal(weight, our_weight)
    seen = weight > 0
    assert seen.sum() > 100
    (theirs_xy, _), (ours_xy, _) = decode(target), decode(ours)
    assert (theirs_xy - ours_xy)[seen].abs().max() <= 1.0




def test_joint_errors_sort_each_joint_into_ronchi_and_peronas_kinds_as_computed_by_hand():
    """Two persons of one image, 17 joints each on a 100-px grid, object area 100^2: with OKS's sigma 0.062 a
    wrist is good within 7.07 px (ks >= 0.85) and right within 14.6 px (ks >= 0.5). Person B is predicted
    exactly; person A's left wrist 3 px off (good), right wrist 10 px (jitter), left elbow on its own right
    elbow (inversion), left knee on B's left knee (swap), left ankle far from everything (miss)."""
    from collapse.data.skeleton import COCO17
    from collapse.evaluate import joint_errors
    j = {n: k for k, n in enumerate(COCO17.joints)}
    grid = np.stack([np.arange(17) % 6 * 100.0, np.arange(17) // 6 * 100.0], 1)
    gt = np.stack([grid, grid + [0.0, 1000.0]])                                     # B: 1000 px below A
    keypoints = np.concatenate([gt, np.full((2, 17, 1), 2.0)], -1)
    pred = gt.copy()
    pred[0, j["left_wrist"]] += [3, 0]
    pred[0, j["right_wrist"]] += [0, 10]
    pred[0, j["left_elbow"]] = gt[0, j["right_elbow"]]
    pred[0, j["left_knee"]] = gt[1, j["left_knee"]]
    pred[0, j["left_ankle"]] = [-5000.0, -5000.0]
    table = joint_errors(pred, keypoints, np.full(2, 100.0 ** 2), np.array([7, 7]), COCO17).set_index("joint")
    assert (table.labeled == 2).all()
    expect = {"left_wrist": "good", "right_wrist": "jitter", "left_elbow": "inversion", "left_knee": "swap",
              "left_ankle": "miss"}
    for joint, kind in expect.items():
        row = table.loc[joint]
        assert row[kind] == (1.0 if kind == "good" else 0.5), (joint, row.to_dict())
        assert row.good == (1.0 if kind == "good" else 0.5)
    assert (table.drop(index=list(expect)).good == 1).all()
    assert table.loc["right_wrist", "median_error_px"] == 5.0                         # (0 + 10) / 2
    assert table.loc["nose", "part"] == "face" and table.loc["left_knee", "part"] == "legs"


def test_part_ap_counts_only_the_parts_joints(synth_root):
    """Ground truth scores AP 1 in every part; the face moved far off lowers the face's AP alone."""
    from collapse.data.coco import annotation_path, load_coco, person_instances
    from collapse.evaluate import part_ap, to_coco_results
    coco = load_coco(annotation_path(synth_root, "val"))
    inst = person_instances(coco)
    sk, kp = inst["skeleton"], inst["keypoints"]
    exact = part_ap(coco, to_coco_results(inst["image_id"], kp[..., :2], np.ones(kp.shape[:2])), inst["image_id"], sk, kp)
    assert exact == {"AP/face": 1.0, "AP/arms": 1.0, "AP/legs": 1.0}
    moved = kp[..., :2].copy()
    moved[:, list(sk.index(sk.parts["face"]))] += 40.0
    off = part_ap(coco, to_coco_results(inst["image_id"], moved, np.ones(kp.shape[:2])), inst["image_id"], sk, kp)
    assert off["AP/face"] < 0.1 and off["AP/arms"] == off["AP/legs"] == 1.0
