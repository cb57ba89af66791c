"""COCO-format person-keypoint reader shared by the synthetic set and real COCO."""
import contextlib
import io
import json
import os

import numpy as np
from pycocotools.coco import COCO

from ..errors import DataError  # noqa: F401  (re-exported: a problem with the user's data)
from .skeleton import PERSON, of_category


def annotation_path(root, split):
    return os.path.join(root, "annotations", f"person_keypoints_{split}.json")


def image_dir(root, split):
    for cand in (os.path.join(root, "images", split), os.path.join(root, split)):
        if os.path.isdir(cand):
            return cand
    raise DataError(f"no image folder for split '{split}' under {root} (looked for images/{split} and {split})")


def read_json(path):
    """An annotation file's JSON; a missing file or bad JSON is one DataError."""
    if not os.path.isfile(path):
        raise DataError(f"annotation file not found: {path}")
    try:
        with open(path) as f:
            return json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise DataError(f"{path} is not valid JSON: {e}")


def load_coco(path):
    """pycocotools COCO object, with the file's problems turned into DataError."""
    data = read_json(path)
    for key in ("images", "annotations", "categories"):
        if not isinstance(data, dict) or key not in data:
            raise DataError(f"{path} lacks the COCO key '{key}'")
    for key in ("images", "annotations", "categories"):
        if not isinstance(data[key], list):
            raise DataError(f"{path}: '{key}' must be a list")
    for ann in data["annotations"]:
        if not isinstance(ann, dict) or not {"id", "image_id", "category_id"} <= set(ann):
            raise DataError(f"{path}: an annotation lacks id, image_id or category_id: {str(ann)[:80]}")
    coco = COCO()
    coco.dataset = data
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
    return coco


def person_instances(coco, path="annotations", require_keypoints=True):
    """Instances usable for training/evaluation, in the file's image order then annotation order.

    Kept as the paper's code does: person category, not crowd, area > 0, a box with positive size,
    and at least one labeled keypoint. Returns a dict of numpy arrays and the file's `skeleton` (named by its
    person category's keypoints, else by the first annotation's count).
    """
    categories = [c for c in coco.dataset["categories"] if isinstance(c, dict) and c.get("name") == "person"]
    person = [c["id"] for c in categories] or [PERSON]
    first = next((a.get("keypoints") for a in coco.dataset["annotations"] if isinstance(a.get("keypoints"), list)), None)
    skeleton = of_category(categories[0] if categories else {}, len(first) // 3 if first else 17)
    k = skeleton.num_joints
    rows = []
    for img in coco.dataset["images"]:
        if not isinstance(img, dict) or not {"id", "file_name", "width", "height"} <= set(img):
            raise DataError(f"{path}: an image entry lacks id, file_name, width or height: {str(img)[:80]}")
        for ann in coco.imgToAnns.get(img["id"], []):
            if ann.get("category_id") not in person or ann.get("iscrowd", 0):
                continue
            kps, box = ann.get("keypoints", None if require_keypoints else [0] * 3 * k), ann.get("bbox")
            if not isinstance(kps, list) or len(kps) != 3 * k:
                raise DataError(f"{path}: annotation {ann.get('id')} has {len(kps) if isinstance(kps, list) else 'no'} "
                                f"keypoint values, expected {3 * k} ({skeleton.name})")
            if not isinstance(box, list) or len(box) != 4:
                raise DataError(f"{path}: annotation {ann.get('id')} has no [x, y, w, h] bbox")
            x, y, w, h = box
            if w < 0 or h < 0:
                raise DataError(f"{path}: annotation {ann.get('id')} has a negative box size {box}")
            if ann.get("area", w * h) <= 0 or w == 0 or h == 0 or (require_keypoints and ann.get("num_keypoints", 0) < 1):
                continue  # the paper's filter: empty boxes and persons without labeled joints are skipped
            rows.append(dict(image_id=img["id"], ann_id=ann["id"], file_name=img["file_name"], bbox=box,
                             area=ann.get("area", w * h), keypoints=kps, score=ann.get("score", 1.0),
                             head_size=ann.get("head_size", np.nan)))
    if not rows:
        raise DataError(f"{path} has no usable person annotations")
    column = lambda name, dtype=np.float64: np.array([r[name] for r in rows], dtype=dtype)
    return dict(image_id=column("image_id", np.int64), ann_id=column("ann_id", np.int64),
                file_name=column("file_name", None), bbox=column("bbox"), area=column("area"),
                keypoints=column("keypoints").reshape(-1, k, 3), score=column("score"),
                head_size=column("head_size"),  # PCKh's scale (MPII, AIC), NaN elsewhere
                skeleton=skeleton)
