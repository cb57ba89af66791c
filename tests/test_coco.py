"""COCO at full scale, on COCO-format data the tests make: splits, filtering, the detection-box
unlabeled pool, parallel and resumable crop stores."""
import json
import os
import shutil

import numpy as np
import pytest

from collapse import config
from collapse.cli import main
from collapse.data import store as store_mod
from collapse.data.coco import load_coco, person_instances
from collapse.data.prepare_coco import split_ann_ids, unlabeled_from_detections, write_splits


@pytest.fixture(scope="module")
def coco_root(synth_root, tmp_path_factory):
    """The synthetic set in COCO's own layout: train2017/val2017, plus unlabeled2017 with image info."""
    root = tmp_path_factory.mktemp("coco")
    os.makedirs(root / "annotations")
    for split, coco in (("train", "train2017"), ("val", "val2017")):
        shutil.copy(os.path.join(synth_root, "annotations", f"person_keypoints_{split}.json"),
                    root / "annotations" / f"person_keypoints_{coco}.json")
        shutil.copytree(os.path.join(synth_root, "images", split), root / coco)
    val = json.load(open(root / "annotations" / "person_keypoints_val2017.json"))
    shutil.copytree(root / "val2017", root / "unlabeled2017")
    json.dump(dict(images=val["images"]), open(root / "annotations" / "image_info_unlabeled2017.json", "w"))
    return root


def test_splits_sizes_determinism_and_agreement_with_the_trainer(coco_root):
    counts = write_splits(str(coco_root), sizes=(50, 100, -1))
    path = str(coco_root / "annotations" / "person_keypoints_train2017.json")
    ids = person_instances(load_coco(path), path)["ann_id"]
    assert counts == {"first_50": 50, "first_100": 100, "first_all": len(ids), "random_50": 50, "random_100": 100,
                      "random_all": len(ids)}
    first = json.load(open(coco_root / "splits" / "first_50.json"))["ann_ids"]
    rand = json.load(open(coco_root / "splits" / "random_50.json"))["ann_ids"]
    assert first == [int(i) for i in ids[:50]] and rand != first and len(set(rand)) == 50
    assert split_ann_ids(ids, 50, "random", 0) == rand and split_ann_ids(ids, 50, "random", 1) != rand
    rand100 = json.load(open(coco_root / "splits" / "random_100.json"))["ann_ids"]
    assert len(set(rand100)) == 100 and set(rand100) <= set(int(i) for i in ids)
    # the trainer's data.split=random draws the same instances as the named split file
    from collapse.data.splits import split_rows
    cfg = config.load("configs/demo.yaml", ["data.labeled=50", "data.split=random"])
    lab, unl = split_rows(cfg, len(ids))
    assert [int(i) for i in ids[lab]] == rand and not set(lab) & set(unl) and len(lab) + len(unl) == len(ids)


def test_instance_filter_follows_the_papers_code(tmp_path):
    from collapse.data.skeleton import COCO17
    NUM_JOINTS = COCO17.num_joints
    kp = [10, 10, 2] + [0, 0, 0] * (NUM_JOINTS - 1)
    none = [0, 0, 0] * NUM_JOINTS
    ann = lambda i, **kw: dict(dict(id=i, image_id=1, category_id=1, bbox=[0, 0, 10, 20], area=200, iscrowd=0,
                                    num_keypoints=1, keypoints=kp), **kw)
    data = dict(images=[dict(id=1, file_name="a.png", width=50, height=50)], categories=[dict(id=1, name="person")],
                annotations=[ann(1), ann(2, iscrowd=1), ann(3, area=0), ann(4, bbox=[0, 0, 0, 20]),
                             ann(5, num_keypoints=0, keypoints=none), ann(6, category_id=2), ann(7)])
    path = tmp_path / "a.json"
    path.write_text(json.dumps(data))
    inst = person_instances(load_coco(str(path)), str(path))
    assert inst["ann_id"].tolist() == [1, 7]
    # without keypoints required (a detection pool), the keypoint-less instance stays
    assert person_instances(load_coco(str(path)), str(path), require_keypoints=False)["ann_id"].tolist() == [1, 5, 7]


def test_detection_box_unlabeled_pool_trains(coco_root, tmp_path):
    val = json.load(open(coco_root / "annotations" / "person_keypoints_val2017.json"))
    dets = [dict(image_id=a["image_id"], category_id=1, bbox=a["bbox"], score=0.9) for a in val["annotations"]]
    dets += [dict(image_id=dets[0]["image_id"], category_id=1, bbox=[1, 1, 20, 40], score=0.2),   # low score
             dict(image_id=dets[0]["image_id"], category_id=3, bbox=[1, 1, 20, 40], score=0.99),  # not a person
             dict(image_id=10 ** 9, category_id=1, bbox=[1, 1, 20, 40], score=0.99)]             # unknown image
    det_path = tmp_path / "dets.json"
    det_path.write_text(json.dumps(dets))
    n = unlabeled_from_detections(str(coco_root), str(det_path), 0.5)
    pool = json.load(open(coco_root / "annotations" / "person_keypoints_unlabeled2017.json"))
    assert n == len(val["annotations"]) == len(pool["annotations"])
    assert all(a["num_keypoints"] == 0 and a["score"] == 0.9 for a in pool["annotations"])
    out = tmp_path / "run"
    assert main(["train", "configs/demo.yaml", f"data.root={coco_root}", "data.source=coco", "data.train_split=train2017",
                 "data.val_split=val2017", "data.unlabeled_split=unlabeled2017", "data.labeled=40", "model.width=8",
                 "method.name=easy_hard", "train.steps=3", "train.eval_every=3", "train.probe_every=3", "train.threads=1",
                 "--out", str(out), "--quiet"]) == 0
    from collapse.data.store import CropStore, store_path
    s = CropStore(store_path(str(coco_root), "unlabeled2017", (64, 48), 1.25))
    assert len(s) == n and np.allclose(s.meta["score"], 0.9)
    assert json.load(open(out / "manifest.json"))["status"] == "done"


def test_crop_store_parallel_equals_serial_and_resumes_after_interruption(coco_root, tmp_path, monkeypatch):
    root = tmp_path / "r"
    shutil.copytree(coco_root, root, ignore=shutil.ignore_patterns("stores", "unlabeled*"))
    serial = store_mod.build(str(root), "val2017", (32, 24), 1.25)
    ref = np.array(serial.crops)
    shutil.rmtree(root / "stores")
    parallel = store_mod.build(str(root), "val2017", (32, 24), 1.25, workers=2)
    assert np.array_equal(np.array(parallel.crops), ref)
    shutil.rmtree(root / "stores")
    # interrupted after 2 chunks of 8 images ...
    monkeypatch.setattr(store_mod, "CHUNK", 8)
    real, calls = store_mod._cut_chunk, []

    def flaky(job):
        if len(calls) == 2:
            raise KeyboardInterrupt
        calls.append(job)
        return real(job)
    monkeypatch.setattr(store_mod, "_cut_chunk", flaky)
    with pytest.raises(KeyboardInterrupt):
        store_mod.build(str(root), "val2017", (32, 24), 1.25)
    path = store_mod.store_path(str(root), "val2017", (32, 24), 1.25)
    assert os.path.isdir(path + ".partial") and np.load(os.path.join(path + ".partial", "done.npy")).sum() == 2
    # ... resumes with the chunks that are left, and ends byte-identical to an uninterrupted build
    calls.clear()
    monkeypatch.setattr(store_mod, "_cut_chunk", lambda job: calls.append(job) or real(job))
    resumed = store_mod.build(str(root), "val2017", (32, 24), 1.25)
    n_chunks = -(-len(np.unique(resumed.meta["image_id"])) // 8)
    assert len(calls) == n_chunks - 2 and np.array_equal(np.array(resumed.crops), ref)
    assert not os.path.exists(path + ".partial")


def test_prepare_coco_command(coco_root, tmp_path):
    root = tmp_path / "p"
    shutil.copytree(coco_root, root, ignore=shutil.ignore_patterns("stores", "splits"))
    val = json.load(open(root / "annotations" / "person_keypoints_val2017.json"))
    dets = [dict(image_id=a["image_id"], category_id=1, bbox=a["bbox"], score=0.8) for a in val["annotations"]]
    (tmp_path / "d.json").write_text(json.dumps(dets))
    assert main(["prepare", "coco", "--root", str(root), "--unlabeled-boxes", str(tmp_path / "d.json"),
                 "--sizes", "32x24", "--workers", "1"]) == 0
    assert (root / "splits" / "first_all.json").exists()
    for split in ("train2017", "val2017", "unlabeled2017"):
        assert (root / "stores" / f"{split}_32x24_m1.25" / "info.json").exists()
    assert main(["prepare", "coco", "--root", str(tmp_path / "nope")]) == 2
    assert main(["prepare", "coco", "--root", str(root), "--sizes", "big"]) == 2


def test_oks_nms_keeps_one_of_two_duplicates():
    from collapse.evaluate import oks_nms
    kp = np.stack([np.linspace(10, 50, 17), np.linspace(10, 90, 17), np.ones(17)], 1)
    r = lambda img, dx, score: dict(image_id=img, keypoints=(kp + [dx, 0, 0]).reshape(-1).tolist(), score=score)
    results = [r(1, 0, 0.9), r(1, 0.5, 0.8), r(1, 60, 0.7), r(2, 0, 0.6)]
    kept = oks_nms(results, [2000.0] * 4, 0.9)
    assert [(k["image_id"], k["score"]) for k in kept] == [(1, 0.9), (1, 0.7), (2, 0.6)]


def test_evaluation_on_detection_boxes(coco_root, tmp_path):
    root = tmp_path / "d"
    shutil.copytree(coco_root, root, ignore=shutil.ignore_patterns("stores"))
    val = json.load(open(root / "annotations" / "person_keypoints_val2017.json"))
    dets = [dict(image_id=a["image_id"], category_id=1, bbox=a["bbox"], score=0.9) for a in val["annotations"]]
    dets += [dict(d, bbox=[d["bbox"][0] + 1, d["bbox"][1], d["bbox"][2], d["bbox"][3]], score=0.5) for d in dets]
    dets += [dict(d, score=0.05) for d in dets[:5]]
    (tmp_path / "dets.json").write_text(json.dumps(dets))
    out = tmp_path / "run"
    assert main(["train", "configs/demo.yaml", f"data.root={root}", "data.source=coco", "data.train_split=train2017",
                 "data.val_split=val2017", "data.labeled=40", "model.width=8", "train.steps=2", "train.eval_every=2",
                 "train.probe_every=0", "train.threads=1", f"eval.boxes={tmp_path / 'dets.json'}", "eval.box_score=0.1",
                 "--out", str(out), "--quiet"]) == 0
    m = json.load(open(out / "manifest.json"))
    assert "AP" in m["final"] and "PCK@0.1" not in m["final"]
    preds = json.load(open(out / "predictions" / "step0000002.json"))
    # two boxes per person went in (the 0.05 ones were dropped), OKS-NMS may merge some of them
    assert len(val["images"]) <= len(preds) <= 2 * len(val["annotations"]) and set(preds[0]) == {
        "image_id", "category_id", "keypoints", "score"}
