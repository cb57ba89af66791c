"""`collapse prepare coco`: COCO person keypoints ready for training.

Expects the usual layout under ROOT: annotations/person_keypoints_{train,val}2017.json, images in
train2017/ and val2017/ (or images/train2017/ ...), and for a detection-box unlabeled pool
annotations/image_info_unlabeled2017.json with images in unlabeled2017/. It
- filters instances as the paper's code does (person, not crowd, area > 0, a valid box, >= 1 labeled joint);
- writes the labeled splits 1K/5K/10K/all under ROOT/splits/, both `first_N` (the paper's first N
  instances in file order) and `random_N` (a seeded shuffle), as lists of annotation ids; the trainer
  makes the same split from data.labeled, data.split and data.split_seed;
- with --unlabeled-boxes, turns a detection-results file into the unlabeled pool
  annotations/person_keypoints_unlabeled2017.json (person detections scoring >= --score, no keypoints);
  without it, the pool is the rest of train2017 with its ground-truth boxes (data.unlabeled_split: "");
- builds the crop stores at each input size, decoding in parallel processes, resumably.
"""
import json
import os

import numpy as np

from ..runs import atomic_write_json
from .coco import DataError, annotation_path, load_coco, person_instances
from .skeleton import COCO17, PERSON, of_category
from .store import build

SPLIT_SIZES = (1000, 5000, 10000, -1)


def split_ann_ids(ann_ids, size, rule, seed=0):
    """The annotation ids of a labeled split: the first `size` (rule first) or a seeded random draw."""
    n = len(ann_ids) if size == -1 else min(size, len(ann_ids))
    order = np.arange(len(ann_ids)) if rule == "first" else np.random.default_rng(seed).permutation(len(ann_ids))
    return [int(a) for a in np.asarray(ann_ids)[np.sort(order[:n])]]


def write_splits(root, train_split="train2017", seed=0, sizes=SPLIT_SIZES):
    """ROOT/splits/{first,random}_{1000,5000,10000,all}.json; returns {name: count}."""
    path = annotation_path(root, train_split)
    inst = person_instances(load_coco(path), path)
    counts = {}
    for rule in ("first", "random"):
        for size in sizes:
            if size != -1 and size > len(inst["ann_id"]):
                continue
            name = f"{rule}_{'all' if size == -1 else size}"
            ids = split_ann_ids(inst["ann_id"], size, rule, seed)
            atomic_write_json(os.path.join(root, "splits", f"{name}.json"), dict(
                rule=rule, size=size, seed=seed if rule == "random" else None, split=train_split,
                instances=len(inst["ann_id"]), ann_ids=ids))
            counts[name] = len(ids)
    return counts


def detection_split(root, images_file, detections, out_split, min_score=0.5):
    """Write annotations/person_keypoints_{out_split}.json: the images listed in `images_file` with the
    person detections (category 1) scoring >= min_score as instances without keypoints (their `score`
    kept). Used for the unlabeled pool (unlabeled2017) and for evaluating on detected boxes. Returns the count."""
    for p in (images_file, detections):
        if not os.path.isfile(p):
            raise DataError(f"file not found: {p}")
    try:
        with open(images_file) as f:
            info = json.load(f)
        with open(detections) as f:
            dets = json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise DataError(f"not valid JSON: {e}")
    if not isinstance(info, dict) or "images" not in info:
        raise DataError(f"{images_file} lacks the COCO key 'images'")
    if not isinstance(dets, list) or not all(isinstance(d, dict) and {"image_id", "bbox", "score"} <= set(d) for d in dets):
        raise DataError(f"{detections} must be a list of detections with image_id, bbox and score")
    images = {im["id"] for im in info["images"]}
    # the images file's skeleton (a val split's), COCO-17 for an image list without one (image_info_*.json)
    person = [c for c in info.get("categories", []) if isinstance(c, dict) and c.get("name") == "person"]
    skeleton = of_category(person[0], COCO17.num_joints) if person else COCO17
    anns = []
    for d in dets:
        x, y, w, h = d["bbox"]
        if d.get("category_id", PERSON) != PERSON or d["score"] < min_score or d["image_id"] not in images or w <= 0 or h <= 0:
            continue
        anns.append(dict(id=len(anns) + 1, image_id=d["image_id"], category_id=PERSON, bbox=[x, y, w, h], area=w * h,
                         iscrowd=0, num_keypoints=0, keypoints=[0] * 3 * skeleton.num_joints, score=d["score"]))
    if not anns:
        raise DataError(f"{detections}: no person detections with score >= {min_score} on these images")
    atomic_write_json(annotation_path(root, out_split), dict(
        images=info["images"], annotations=anns,
        categories=[skeleton.category()]))
    return len(anns)


def unlabeled_from_detections(root, detections, min_score=0.5, split="unlabeled2017"):
    """The unlabeled pool from detections on the images of image_info_{split}.json."""
    return detection_split(root, os.path.join(root, "annotations", f"image_info_{split}.json"), detections,
                           split, min_score)


def prepare(root, unlabeled_boxes=None, min_score=0.5, sizes=((256, 192), (384, 288)), margin=1.25,
            workers=None, seed=0, echo=print):
    if not os.path.isdir(root):
        raise DataError(f"COCO folder not found: {root}")
    workers = (os.cpu_count() or 1) if workers is None else workers
    counts = write_splits(root, seed=seed)
    echo("labeled splits: " + ", ".join(f"{k} {v}" for k, v in counts.items()) + f"  -> {root}/splits/")
    splits = ["train2017", "val2017"]
    if unlabeled_boxes:
        n = unlabeled_from_detections(root, unlabeled_boxes, min_score)
        echo(f"unlabeled pool: {n} person detections (score >= {min_score}) on unlabeled2017")
        splits.append("unlabeled2017")
    for hw in sizes:
        for split in splits:
            store = build(root, split, tuple(hw), margin, progress=True, workers=workers,
                          require_keypoints=split != "unlabeled2017")
            echo(f"crop store {split} {hw[0]}x{hw[1]}: {len(store)} crops")
