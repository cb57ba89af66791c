"""MPII and AI Challenger files written here in their published formats: conversion to COCO format in each
set's own skeleton, crop stores, bad files, PCKh by the standard protocol (against numbers computed by hand),
an MPII + AIC run scored by PCKh, and `collapse evaluate`."""
import hashlib
import json
import os

import numpy as np
import pandas as pd
import pytest
import scipy.io
from PIL import Image

from collapse.data.skeleton import AIC14, MPII16

MPII_JOINTS, AIC = MPII16.joints, AIC14.joints
from collapse.evaluate import pckh

W, H = 160, 120


def _images(folder, names):
    os.makedirs(folder, exist_ok=True)
    rng = np.random.default_rng(0)
    for n in names:
        Image.fromarray(rng.integers(0, 255, (H, W, 3), dtype=np.uint8)).save(os.path.join(folder, n))
    return str(folder)


def _mpii_person(image, shift=0.0, shown=None):
    """A standing person in Matlab's 1-based pixels: joints in MPII order."""
    pts = {"right_ankle": (70, 110), "right_knee": (70, 90), "right_hip": (72, 70), "left_hip": (88, 70),
           "left_knee": (90, 90), "left_ankle": (90, 110), "pelvis": (80, 70), "thorax": (80, 45),
           "upper_neck": (80, 40), "head_top": (80, 25), "right_wrist": (60, 70), "right_elbow": (62, 55),
           "right_shoulder": (68, 45), "left_shoulder": (92, 45), "left_elbow": (98, 55), "left_wrist": (100, 70)}
    joints = [[pts[n][0] + shift + 1, pts[n][1] + 1] for n in MPII_JOINTS]
    return dict(image=image, joints=joints, joints_vis=shown or [1] * 16, center=[81 + shift, 66], scale=0.45)


def _cli(*args):
    """`collapse ARGS` in this process (through the command line's own `main`): its exit code and output."""
    import contextlib
    import io
    from types import SimpleNamespace
    from collapse.cli import main
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main([str(a) for a in args])
    return SimpleNamespace(returncode=code, stdout=out.getvalue(), stderr=err.getvalue())


def _prepare(kind, ann, images, out, split, *more):
    return _cli("prepare", kind, "--annotations", str(ann), "--images", images, "--out", str(out), "--split", split,
                "--sizes", "64x64", "--workers", "0", *more)


@pytest.fixture(scope="module")
def mpii_aic(tmp_path_factory):
    """ROOT with an MPII train and valid split (JSON) and an AIC train split (original format)."""
    t = tmp_path_factory.mktemp("mpii")
    mpii_images = _images(t / "mpii_images", [f"{i:09d}.jpg" for i in range(8)])
    out_of_image = _mpii_person("000000000.jpg")
    out_of_image["joints"][MPII_JOINTS.index("left_wrist")] = [W + 15, 70]        # a joint outside the image
    hidden = _mpii_person("000000001.jpg", shift=5, shown=[1] * 15 + [0])           # left wrist not annotated
    nobody = _mpii_person("000000001.jpg", shift=-30, shown=[0] * 16)               # a person without keypoints
    train = [out_of_image, hidden, nobody] + [_mpii_person(f"{i:09d}.jpg", shift=i) for i in range(2, 6)]
    valid = [_mpii_person(f"{i:09d}.jpg", shift=i - 3) for i in range(6, 8)]
    for name, people in (("train", train), ("valid", valid)):
        with open(t / f"{name}.json", "w") as f:
            json.dump(people, f)
    root = t / "root"
    for split in ("train", "valid"):
        r = _prepare("mpii", t / f"{split}.json", mpii_images, root, f"mpii_{split}")
        assert r.returncode == 0, r.stderr
    aic_images = _images(t / "aic_images", [f"aic{i}.jpg" for i in range(4)])
    aic = []
    for i in range(4):
        kp = []
        for k in range(14):
            kp += [40 + 5 * k, 20 + 6 * k, (1, 2, 3)[k % 3]]  # visible, occluded, unlabeled
        aic.append(dict(image_id=f"aic{i}", url="", keypoint_annotations={"human1": kp},
                        human_annotations={"human1": [30, 10, 120, 115]}))
    with open(t / "aic.json", "w") as f:
        json.dump(aic, f)
    r = _prepare("aic", t / "aic.json", aic_images, root, "aic_train")
    assert r.returncode == 0, r.stderr
    return t, root


def test_mpii_converts_in_its_own_skeleton_with_boxes_head_sizes_and_stores(mpii_aic):
    t, root = mpii_aic
    coco = json.load(open(root / "annotations" / "person_keypoints_mpii_train.json"))
    assert len(coco["images"]) == 6 and len(coco["annotations"]) == 7
    assert coco["categories"][0]["keypoints"] == list(MPII_JOINTS)                   # the file names its skeleton
    assert coco["images"][0]["width"] == W and coco["images"][0]["height"] == H
    first = coco["annotations"][0]
    kp = np.array(first["keypoints"]).reshape(16, 3)
    assert kp[MPII_JOINTS.index("right_ankle")].tolist() == [70, 110, 2]            # Matlab's 1-based -> 0-based
    assert kp[MPII_JOINTS.index("left_wrist")].tolist() == [W + 14, 69, 2]          # outside the image: kept, labeled
    assert kp[MPII_JOINTS.index("head_top")].tolist() == [80, 25, 2]                # MPII's own joints are kept
    assert first["num_keypoints"] == 16 and first["head_size"] == pytest.approx(0.6 * np.sqrt(2) * 15, abs=1e-3)
    assert first["bbox"] == pytest.approx([80 - 45, 65 + 6.75 - 45, 90, 90])       # SimpleBaseline: y + 15 s, 200 s
    hidden = np.array(coco["annotations"][1]["keypoints"]).reshape(16, 3)
    assert hidden[MPII_JOINTS.index("left_wrist")].tolist() == [0, 0, 0] and coco["annotations"][1]["num_keypoints"] == 15
    assert sorted(a["num_keypoints"] for a in coco["annotations"])[0] == 0            # the person without keypoints
    from collapse.data.store import CropStore, store_path
    store = CropStore(store_path(str(root), "mpii_train", (64, 64), 1.25))
    assert len(store) == 6 and np.isfinite(store.meta["head_size"]).all()             # ... is kept out of the store
    assert store.skeleton is MPII16 and store.meta["keypoints"].shape[1:] == (16, 3)


def test_the_official_mat_gives_head_boxes_and_visibility(tmp_path):
    images = _images(tmp_path / "img", ["a.jpg", "b.jpg"])
    point = np.dtype([("x", "O"), ("y", "O"), ("id", "O"), ("is_visible", "O")])
    pts = np.zeros((1, 3), dtype=point)
    for k, (j, vis) in enumerate([(0, 1), (9, 0), (15, 1)]):                       # r_ankle, head_top, l_wrist
        pts[0, k] = (float(50 + k), float(60 + k), j, vis)
    rect = np.dtype([("x1", "O"), ("y1", "O"), ("x2", "O"), ("y2", "O"), ("objpos", "O"), ("scale", "O"),
                     ("annopoints", "O")])
    rects = np.zeros((1, 1), dtype=rect)
    rects[0, 0] = (40.0, 20.0, 70.0, 60.0, {"x": 80.0, "y": 60.0}, 0.4, {"point": pts})
    entry = np.dtype([("image", "O"), ("annorect", "O")])
    annolist = np.zeros((1, 2), dtype=entry)
    annolist[0, 0] = ({"name": "a.jpg"}, rects)
    annolist[0, 1] = ({"name": "b.jpg"}, np.zeros((0, 0)))                          # a test image: no persons
    scipy.io.savemat(tmp_path / "mpii.mat", {"RELEASE": {"annolist": annolist, "img_train": np.array([[1, 0]])}})
    r = _prepare("mpii", tmp_path / "mpii.mat", images, tmp_path / "root", "mpii_mat")
    assert r.returncode == 0, r.stderr
    ann, = json.load(open(tmp_path / "root" / "annotations" / "person_keypoints_mpii_mat.json"))["annotations"]
    assert ann["head_size"] == pytest.approx(0.6 * 50, abs=1e-3)                     # 0.6 x the head box's diagonal
    kp = np.array(ann["keypoints"]).reshape(16, 3)
    assert kp[MPII_JOINTS.index("right_ankle")].tolist() == [49, 59, 2] and kp[MPII_JOINTS.index("left_wrist")][2] == 2
    assert kp[MPII_JOINTS.index("head_top")].tolist() == [50, 60, 1]                 # labeled, not visible
    assert ann["num_keypoints"] == 3


def test_json_with_the_evaluation_files_head_boxes_uses_them_and_a_count_mismatch_is_one_line(mpii_aic, tmp_path):
    t, _ = mpii_aic
    boxes = np.zeros((2, 2, 2))
    boxes[0, :, 0], boxes[1, :, 0] = (10, 20), (40, 60)                               # diagonal 50
    boxes[0, :, 1], boxes[1, :, 1] = (0, 0), (6, 8)                                   # diagonal 10
    scipy.io.savemat(tmp_path / "gt_valid.mat", {"headboxes_src": boxes})
    r = _prepare("mpii", t / "valid.json", str(t / "mpii_images"), tmp_path / "root", "v", "--head-boxes",
                 str(tmp_path / "gt_valid.mat"))
    assert r.returncode == 0, r.stderr
    anns = json.load(open(tmp_path / "root" / "annotations" / "person_keypoints_v.json"))["annotations"]
    assert [a["head_size"] for a in anns] == pytest.approx([30.0, 6.0])              # 0.6 x diagonal, file order
    scipy.io.savemat(tmp_path / "three.mat", {"headboxes_src": np.zeros((2, 2, 3))})
    r = _prepare("mpii", t / "valid.json", str(t / "mpii_images"), tmp_path / "out", "v", "--head-boxes",
                 str(tmp_path / "three.mat"))
    assert r.returncode == 2 and "expected 2 x 2 x 2" in r.stderr and len(r.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists()


def test_ai_challenger_both_formats_keep_its_joints_and_map_visibility(mpii_aic, tmp_path):
    t, root = mpii_aic
    coco = json.load(open(root / "annotations" / "person_keypoints_aic_train.json"))
    assert coco["categories"][0]["keypoints"] == list(AIC)
    kp = np.array(coco["annotations"][0]["keypoints"]).reshape(14, 3)
    # AIC order: r_shoulder (vis 1 -> 2), r_elbow (2 -> 1), r_wrist (3 -> unlabeled), l_shoulder (1 -> 2) ...
    assert kp[AIC.index("right_shoulder")].tolist() == [40, 20, 2]
    assert kp[AIC.index("right_elbow")].tolist() == [45, 26, 1]
    assert kp[AIC.index("right_wrist")].tolist() == [0, 0, 0]
    assert coco["annotations"][0]["bbox"] == [30, 10, 90, 105]
    style = dict(images=[dict(id=7, file_name="aic0.jpg", width=W, height=H)],
                 annotations=[dict(id=1, image_id=7, bbox=[30, 10, 90, 105], category_id=1,
                                   keypoints=[v for k in range(14) for v in (40 + 5 * k, 20 + 6 * k, k % 3)])],
                 categories=[dict(id=1, name="person")])
    with open(tmp_path / "aic_coco.json", "w") as f:
        json.dump(style, f)
    r = _prepare("aic", tmp_path / "aic_coco.json", str(t / "aic_images"), tmp_path / "root", "aic_coco")
    assert r.returncode == 0, r.stderr
    kp = np.array(json.load(open(tmp_path / "root" / "annotations" / "person_keypoints_aic_coco.json"))
                  ["annotations"][0]["keypoints"]).reshape(14, 3)
    assert kp[AIC.index("right_shoulder")][2] == 0 and kp[AIC.index("right_elbow")].tolist() == [45, 26, 1]


def test_an_aic_pool_beside_mpii_carries_its_keypoints_over_by_joint_name(mpii_aic):
    import torch
    from collapse.data.store import CropStore, Pool, store_path
    _, root = mpii_aic
    store = CropStore(store_path(str(root), "aic_train", (64, 64), 1.25))
    assert store.skeleton is AIC14
    pool = Pool(store, np.arange(len(store)), torch.device("cpu"), skeleton=MPII16)
    kp, own = pool.keypoints.numpy(), store.meta["keypoints"]
    assert kp.shape == (len(store), 16, 3)
    for name in ("right_shoulder", "left_ankle", "head_top"):
        assert (kp[:, MPII_JOINTS.index(name)] == own[:, AIC.index(name)]).all()
    for name in ("pelvis", "thorax", "upper_neck"):                                  # AIC lacks them: unlabeled
        assert (kp[:, MPII_JOINTS.index(name)] == 0).all()


@pytest.mark.parametrize("kind, content, expect", [
    ("mpii", "{\"not\": \"a list\"}", "must hold a list of persons"),
    ("mpii", json.dumps([{"joints": [[1, 2]] * 16, "joints_vis": [1] * 16, "center": [5, 5], "image": "x.jpg"}]),
     "lacks joints, joints_vis, center, scale or image"),
    ("mpii", json.dumps([{"joints": [[1, 2]] * 15, "joints_vis": [1] * 16, "center": [5, 5], "scale": 1,
                          "image": "000000000.jpg"}]), "must hold 32 numbers"),
    ("mpii", json.dumps([_mpii_person("missing.jpg")]), "image not found"),
    ("aic", json.dumps([{"image_id": "aic0", "keypoint_annotations": {"human1": [1, 2, 1]},
                         "human_annotations": {"human1": [1, 2, 30, 40]}}]), "must hold 42 numbers"),
    ("aic", "[{", "is not valid JSON"),
])
def test_a_malformed_file_is_one_line_exit_2_and_writes_nothing(mpii_aic, tmp_path, kind, content, expect):
    t, _ = mpii_aic
    ann = tmp_path / "bad.json"
    ann.write_text(content)
    out = tmp_path / "out"
    r = _prepare(kind, ann, str(t / ("mpii_images" if kind == "mpii" else "aic_images")), out, "bad")
    assert r.returncode == 2 and expect in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert not out.exists()


def _placed(errors, labeled=None):
    """Ground truth at the origin + 100 px per joint, predictions moved right by `errors` (16,) px."""
    gt = np.zeros((16, 3))
    gt[:, 0], gt[:, 2] = np.arange(16) * 100.0, 2.0
    if labeled is not None:
        gt[:, 2] = np.where(labeled, 2.0, 0.0)
    pred = gt[:, :2] + np.stack([np.asarray(errors, dtype=float), np.zeros(16)], 1)
    return pred, gt


def test_pckh_follows_the_standard_mpii_protocol_on_numbers_computed_by_hand():
    j = {n: k for k, n in enumerate(MPII_JOINTS)}
    # person A (head size 10): exact but for the right wrist at exactly 0.5 x 10 (correct: <=), the left wrist
    # at 6 (wrong) and pelvis and thorax far off (left out of the mean)
    err_a = np.zeros(16)
    err_a[j["right_wrist"]], err_a[j["left_wrist"]], err_a[j["pelvis"]], err_a[j["thorax"]] = 5, 6, 100, 100
    # person B (head size 20): every joint 11 px off (wrong at 0.5 x 20) but the head top; left ankle unlabeled
    err_b = np.full(16, 11.0)
    err_b[j["head_top"]] = 0
    # person C: no head size, not scored however wrong
    preds, gts = zip(_placed(err_a), _placed(err_b, np.arange(16) != j["left_ankle"]), _placed(np.full(16, 50.0)))
    coords, kp, head = np.stack(preds), np.stack(gts), np.array([10.0, 20.0, np.nan])
    half = pckh(coords, kp, head, MPII16, 0.5)
    # scored joints: 14 of A + 13 of B labeled = 27; correct: 13 of A (all but the left wrist) + B's head top
    assert half["PCKh@0.5"] == pytest.approx(14 / 27)
    assert half["PCKh@0.5/head"] == 1.0
    assert half["PCKh@0.5/wrist"] == pytest.approx((0.5 + 0.0) / 2)                 # right 1/2, left 0/2
    assert half["PCKh@0.5/ankle"] == pytest.approx((0.5 + 1.0) / 2)                 # left ankle: A only
    for group in ("shoulder", "elbow", "hip", "knee"):
        assert half[f"PCKh@0.5/{group}"] == 0.5
    tenth = pckh(coords, kp, head, MPII16, 0.1)
    assert tenth["PCKh@0.1"] == pytest.approx(13 / 27)                               # A: 12 exact; B: the head top
    assert set(tenth) == {"PCKh@0.1", *(f"PCKh@0.1/{g}" for g in ("head", "shoulder", "elbow", "wrist", "hip",
                                                                   "knee", "ankle"))}


def test_mpii_labeled_and_aic_unlabeled_train_scored_by_pckh_then_reevaluated(mpii_aic, tmp_path):
    _, root = mpii_aic
    out = str(tmp_path / "run")
    r = _cli("train", "configs/demo.yaml", "data.source=coco", f"data.root={root}", "data.train_split=mpii_train",
             "data.val_split=mpii_valid", "data.unlabeled_split=aic_train", "data.input_size=[64,64]",
             "data.labeled=-1", "eval.metric=pckh", "method.name=dual", "model.width=8", "train.steps=4",
             "train.eval_every=4", "train.probe_every=0", "train.batch_labeled=4", "train.batch_unlabeled=4",
             "train.device=cpu", "--out", out, "--quiet")
    assert r.returncode == 0, r.stderr
    m = pd.read_parquet(os.path.join(out, "metrics.parquet"))
    assert {"PCKh@0.5/net0", "PCKh@0.1/ens", "PCKh@0.5/wrist/net1", "PCKh@0.5/head/net0"} <= set(m.name)
    assert "AP/net0" not in set(m.name)
    assert 0 <= m[m.name == "PCKh@0.5/net0"].value.iloc[0] <= 1
    manifest = json.load(open(os.path.join(out, "manifest.json")))
    from collapse.runs import final_value
    assert final_value(manifest["final"]) == manifest["final"]["PCKh@0.5/net0"]     # the tables' main number
    r = _cli("evaluate", out, "eval.flip_test=true")
    assert r.returncode == 0, r.stderr
    assert "PCKh@0.5" in r.stdout and "ens" in r.stdout


def _digest(folder):
    out = {}
    for base, dirs, files in os.walk(folder):
        dirs[:] = [d for d in dirs if d != "evaluations"]
        for f in files:
            out[os.path.relpath(os.path.join(base, f), folder)] = hashlib.sha256(open(os.path.join(base, f), "rb").read()).hexdigest()
    return out


def test_evaluate_scores_each_net_and_their_ensemble_and_leaves_the_run_alone(synth_root, tmp_path):
    out = str(tmp_path / "run")
    r = _cli("train", "configs/demo.yaml", f"data.root={synth_root}", "method.name=dual", "model.width=8",
             "train.steps=4", "train.eval_every=4", "train.probe_every=0", "train.device=cpu", "--out", out, "--quiet")
    assert r.returncode == 0, r.stderr
    before = _digest(out)
    r = _cli("evaluate", out, "eval.flip_test=true", "eval.decode=dark")
    assert r.returncode == 0, r.stderr
    lines = r.stdout.strip().splitlines()
    assert [l.split()[0] for l in lines[3:6]] == ["net0", "net1", "ens"] and "AP" in lines[1]
    assert [l.split()[0] for l in lines[-3:]] == ["face", "arms", "legs"] and "swap" in lines[-5]  # per body part
    assert _digest(out) == before                                                    # the run's own files untouched
    (sid,) = os.listdir(os.path.join(out, "evaluations"))
    folder = os.path.join(out, "evaluations", sid)
    table = pd.read_parquet(os.path.join(folder, "metrics.parquet"))
    assert set(table.net) == {"net0", "net1", "ens"} and {"AP", "PCK@0.1", "AP/face", "PCK@0.1/legs"} <= set(table.name)
    joints = pd.read_parquet(os.path.join(folder, "joints.parquet"))
    assert len(joints) == 3 * 17 and set(joints.net) == {"net0", "net1", "ens"}
    shares = joints[["good", "jitter", "inversion", "swap", "miss"]].dropna()
    assert np.allclose(shares.sum(axis=1), 1.0)                                           # each joint's errors, one kind each
    assert sorted(os.listdir(os.path.join(folder, "predictions"))) == ["ens.json", "net0.json", "net1.json"]
    again = _cli("evaluate", out, "eval.decode=dark", "eval.flip_test=true")          # same settings: same folder
    assert again.returncode == 0 and os.listdir(os.path.join(out, "evaluations")) == [sid]
    plain = _cli("evaluate", out)
    assert plain.returncode == 0 and len(os.listdir(os.path.join(out, "evaluations"))) == 2
    # the run's own last evaluation (no flip, argmax) is what plain re-evaluation gives
    own = pd.read_parquet(os.path.join(out, "metrics.parquet"))
    own_ap = own[(own.name == "AP/net0") & (own.step == 4)].value.iloc[0]
    plain_table = [t for t in (pd.read_parquet(os.path.join(out, "evaluations", s, "metrics.parquet"))
                               for s in os.listdir(os.path.join(out, "evaluations")) if s != sid)][0]
    assert plain_table[(plain_table.net == "net0") & (plain_table.name == "AP")].value.iloc[0] == pytest.approx(own_ap)
    bad = _cli("evaluate", out, "train.steps=9")
    assert bad.returncode == 2 and "evaluation settings only" in bad.stderr
