"""`collapse prepare mpii` and `collapse prepare aic`: MPII and AI Challenger persons in COCO format.

Both write ROOT/annotations/person_keypoints_SPLIT.json in the set's own skeleton (MPII's 16 joints, AIC's 14;
the person category names them, collapse/data/skeleton.py), link ROOT/images/SPLIT to the image folder and
build the crop stores, so the rest of the toolkit reads them as any COCO-format split: an MPII split as the
labeled and validation set (scored by PCKh, `eval.metric: pckh`, on MPII's joints), an AIC split as
`data.unlabeled_split` beside it (the seed's mix_mpii_ai; its keypoints carried onto MPII's by joint name).

MPII, as HRNet and mmpose distribute it (a JSON list of persons with `joints`, `joints_vis`, `center`,
`scale`, `image`; Matlab's 1-based pixels), or the official `mpii_human_pose_v1_u12_1.mat` (its annotated,
img_train images; head boxes included). The person box is SimpleBaseline's: centre moved down 15 x scale,
a square of side 200 x scale, which the crop store enlarges 1.25x as it does every box. Head size (PCKh's
unit): the official 0.6 x the head box's diagonal where head boxes exist (the .mat; for the JSON, `--head-boxes
gt_valid.mat`, the evaluation file HRNet and mmpose ship beside valid.json, persons in the same order): the
standard protocol, comparable with published numbers. Without head boxes: 0.6 x sqrt(2) x the head-top to
upper-neck distance (the diagonal of a square head box of that side), an approximation.

AI Challenger: the original keypoint_*_annotations_*.json (`human_annotations` boxes x1 y1 x2 y2,
`keypoint_annotations` 14 joints, visibility 1 visible, 2 occluded, 3 unlabeled) or the COCO-style
conversion with 14 keypoints (COCO visibility) that mmpose distributes. Head size from head top to neck,
as for MPII's JSON."""
import os
from concurrent.futures import ThreadPoolExecutor

import numpy as np
from PIL import Image

from ..runs import atomic_write_json
from .coco import DataError, annotation_path, read_json
from .skeleton import AIC14, MPII16, PERSON
from .store import build

HEAD_BIAS = 0.6  # the official MPII evaluation's SC_BIAS: head size = 0.6 x the head box's diagonal


def segment_head_size(top, neck):
    """0.6 x sqrt(2) x |top - neck| (NaN where either joint is unlabeled)."""
    return HEAD_BIAS * np.sqrt(2) * np.linalg.norm(np.asarray(top) - np.asarray(neck), axis=-1)


# -- reading ----------------------------------------------------------------------------------------
def _number_list(value, n, what, path):
    try:
        a = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError):
        a = None
    if a is None or a.size != n:
        raise DataError(f"{path}: {what} must hold {n} numbers, got {str(value)[:80]}")
    return a


def _person(image, joints, visibility, box, head_size):
    return dict(image=image, joints=np.concatenate([joints, visibility[:, None]], 1), box=box, head_size=head_size)


def _simplebaseline_box(center, scale):
    """SimpleBaseline's MPII box, in 0-based pixels: centre moved down 15 x scale, a square of 200 x scale."""
    cx, cy = center[0] - 1, center[1] - 1 + 15 * scale
    side = 200 * scale
    return [cx - side / 2, cy - side / 2, side, side]


def read_head_boxes(path, count):
    """Head sizes from the evaluation file beside MPII's JSON (gt_valid.mat: `headboxes_src`, 2 x 2 x persons,
    the boxes' corners): 0.6 x each box's diagonal, the standard PCKh unit."""
    import scipy.io
    try:
        boxes = np.asarray(scipy.io.loadmat(path)["headboxes_src"], dtype=np.float64)
    except Exception as e:  # scipy raises many kinds for a file that is not a .mat with head boxes
        raise DataError(f"{path} is not MPII's evaluation .mat (headboxes_src): {str(e).splitlines()[0][:120]}")
    if boxes.ndim != 3 or boxes.shape[:2] != (2, 2) or boxes.shape[2] != count:
        raise DataError(f"{path}: headboxes_src holds {boxes.shape}, expected 2 x 2 x {count} (one box per person "
                        "of the annotation file, in its order)")
    return HEAD_BIAS * np.linalg.norm(boxes[1] - boxes[0], axis=0)


def read_mpii_json(path, head_boxes=None):
    data = read_json(path)
    if not isinstance(data, list):
        raise DataError(f"{path} must hold a list of persons (HRNet/mmpose MPII format)")
    people = []
    for k, p in enumerate(data):
        if not isinstance(p, dict) or not {"joints", "joints_vis", "center", "scale", "image"} <= set(p):
            raise DataError(f"{path}: person {k} lacks joints, joints_vis, center, scale or image")
        joints = _number_list(p["joints"], 32, f"person {k}'s joints", path).reshape(16, 2) - 1  # Matlab's 1-based
        shown = _number_list(p["joints_vis"], 16, f"person {k}'s joints_vis", path) > 0
        center = _number_list(p["center"], 2, f"person {k}'s center", path)
        scale = float(_number_list([p["scale"]], 1, f"person {k}'s scale", path)[0])
        if scale <= 0:
            raise DataError(f"{path}: person {k} has scale {scale}, must be positive")
        top, neck = MPII16.index(("head_top", "upper_neck"))
        head = segment_head_size(joints[top], joints[neck]) if shown[top] and shown[neck] else np.nan
        people.append(_person(str(p["image"]), joints * shown[:, None], 2.0 * shown,
                              _simplebaseline_box(center, scale), float(head)))
    if head_boxes:
        for p, size in zip(people, read_head_boxes(head_boxes, len(people))):
            p["head_size"] = float(size)
    return people


def read_mpii_mat(path):
    """The official .mat: every annotated person of the img_train images (test images carry no joints)."""
    import scipy.io
    try:
        release = scipy.io.loadmat(path, struct_as_record=False, squeeze_me=True)["RELEASE"]
        annolist, train = np.atleast_1d(release.annolist), np.atleast_1d(release.img_train)
    except Exception as e:  # scipy raises many kinds for a file that is not the MPII release
        raise DataError(f"{path} is not MPII's annotation .mat (RELEASE.annolist, img_train): {str(e).splitlines()[0][:120]}")
    people = []
    for entry, is_train in zip(annolist, train):
        if not is_train:
            continue
        name = str(entry.image.name)
        for rect in np.atleast_1d(getattr(entry, "annorect", [])):
            if not all(hasattr(rect, f) for f in ("x1", "y1", "x2", "y2", "objpos", "scale")):
                continue  # no head box or no person position: not an annotated person
            joints, vis = np.zeros((16, 2)), np.zeros(16)
            points = getattr(getattr(rect, "annopoints", None), "point", [])
            for pt in np.atleast_1d(points):
                j = int(pt.id)
                if not 0 <= j < 16:
                    raise DataError(f"{path}: image {name} has joint id {j}, MPII's are 0-15")
                joints[j] = (float(pt.x) - 1, float(pt.y) - 1)
                seen = getattr(pt, "is_visible", 1)
                seen = seen if not isinstance(seen, np.ndarray) or seen.size else 1  # an empty field: visible
                vis[j] = 2.0 if str(seen).strip() in ("1", "True") else 1.0   # labeled, visible or occluded
            box = np.array([rect.x1, rect.y1, rect.x2, rect.y2], dtype=np.float64)
            head = HEAD_BIAS * float(np.linalg.norm(box[2:] - box[:2]))
            center = np.array([rect.objpos.x, rect.objpos.y], dtype=np.float64)
            people.append(_person(name, joints, vis, _simplebaseline_box(center, float(rect.scale)), head))
    return people


def read_aic(path):
    data = read_json(path)
    if isinstance(data, dict) and "annotations" in data:
        return _read_aic_coco(data, path)
    if not isinstance(data, list):
        raise DataError(f"{path} must hold AI Challenger's list of images or a COCO-style file")
    people = []
    top, neck = AIC14.index(("head_top", "neck"))
    for k, img in enumerate(data):
        if not isinstance(img, dict) or not {"image_id", "keypoint_annotations", "human_annotations"} <= set(img):
            raise DataError(f"{path}: image {k} lacks image_id, keypoint_annotations or human_annotations")
        for human, box in img["human_annotations"].items():
            x1, y1, x2, y2 = _number_list(box, 4, f"{img['image_id']} {human}'s box", path)
            kp = img["keypoint_annotations"].get(human)
            kp = np.zeros((14, 3)) + [0, 0, 3] if kp is None else \
                _number_list(kp, 42, f"{img['image_id']} {human}'s keypoints", path).reshape(14, 3)
            # AIC visibility 1 visible, 2 occluded, 3 unlabeled -> COCO 2, 1, 0
            vis = np.select([kp[:, 2] == 1, kp[:, 2] == 2], [2.0, 1.0], 0.0)
            head = segment_head_size(kp[top, :2], kp[neck, :2]) if vis[top] and vis[neck] else np.nan
            people.append(_person(f"{img['image_id']}.jpg", kp[:, :2] * (vis > 0)[:, None], vis,
                                  [x1, y1, x2 - x1, y2 - y1], float(head)))
    return people


def _read_aic_coco(data, path):
    images = {im.get("id"): im.get("file_name") for im in data.get("images", []) if isinstance(im, dict)}
    people = []
    top, neck = AIC14.index(("head_top", "neck"))
    for k, ann in enumerate(data["annotations"]):
        if not isinstance(ann, dict) or ann.get("image_id") not in images or "bbox" not in ann:
            raise DataError(f"{path}: annotation {k} lacks a bbox or an image_id of the file's images")
        kp = _number_list(ann.get("keypoints", [0] * 42), 42, f"annotation {k}'s keypoints", path).reshape(14, 3)
        vis = np.clip(kp[:, 2], 0, 2)  # already COCO's convention
        head = segment_head_size(kp[top, :2], kp[neck, :2]) if vis[top] and vis[neck] else np.nan
        people.append(_person(images[ann["image_id"]], kp[:, :2], vis, list(_number_list(ann["bbox"], 4, f"annotation {k}'s bbox", path)), float(head)))
    return people


# -- writing ----------------------------------------------------------------------------------------
def _image_size(path):
    try:
        with Image.open(path) as im:
            return im.size
    except FileNotFoundError:
        raise DataError(f"image not found: {path}")
    except OSError as e:
        raise DataError(f"cannot read image {path}: {e}")


def to_coco(people, images_dir, skeleton, workers=8):
    """COCO-format dict of the persons in `skeleton` (image sizes read from the files' headers)."""
    names = sorted({p["image"] for p in people})
    with ThreadPoolExecutor(workers) as pool:
        sizes = dict(zip(names, pool.map(lambda n: _image_size(os.path.join(images_dir, n)), names)))
    ids = {n: i + 1 for i, n in enumerate(names)}
    images = [dict(id=ids[n], file_name=n, width=sizes[n][0], height=sizes[n][1]) for n in names]
    annotations = []
    for k, p in enumerate(sorted(people, key=lambda p: ids[p["image"]])):
        kp = p["joints"]
        x, y, w, h = (float(v) for v in p["box"])
        ann = dict(id=k + 1, image_id=ids[p["image"]], category_id=PERSON, iscrowd=0,
                   bbox=[round(x, 2), round(y, 2), round(w, 2), round(h, 2)], area=round(max(w, 0) * max(h, 0), 2),
                   keypoints=[round(float(v), 2) for v in kp.reshape(-1)], num_keypoints=int((kp[:, 2] > 0).sum()))
        if np.isfinite(p["head_size"]):
            ann["head_size"] = round(float(p["head_size"]), 3)
        annotations.append(ann)
    return dict(images=images, annotations=annotations, categories=[skeleton.category()])


def prepare(kind, annotations, images, out, split, sizes=((256, 256),), margin=1.25, workers=None, head_boxes=None):
    """Read, convert, then write: nothing is written until the whole file has been read without a problem."""
    if not os.path.isdir(images):
        raise DataError(f"image folder not found: {images}")
    if head_boxes and (kind != "mpii" or annotations.endswith(".mat")):
        raise DataError("--head-boxes goes with MPII's JSON (the official .mat holds its own head boxes)")
    if kind == "mpii":
        people = read_mpii_mat(annotations) if annotations.endswith(".mat") else read_mpii_json(annotations, head_boxes)
    else:
        people = read_aic(annotations)
    if not people:
        raise DataError(f"{annotations} holds no annotated person")
    coco = to_coco(people, images, MPII16 if kind == "mpii" else AIC14)
    link = os.path.join(out, "images", split)
    if os.path.lexists(link) and os.path.realpath(link) != os.path.realpath(images):
        raise DataError(f"{link} already points to another image folder ({os.path.realpath(link)})")
    atomic_write_json(annotation_path(out, split), coco)
    if not os.path.lexists(link):
        os.makedirs(os.path.dirname(link), exist_ok=True)
        os.symlink(os.path.abspath(images), link)
    for hw in sizes:  # persons without a labeled joint stay in the file and out of the store, as COCO's
        build(out, split, tuple(hw), margin, progress=True, workers=workers if workers is not None else os.cpu_count() or 1)
    labeled = sum(1 for a in coco["annotations"] if a["num_keypoints"] > 0)
    print(f"{kind} {split}: {len(coco['images'])} images, {len(coco['annotations'])} persons ({labeled} with "
          f"keypoints) -> {annotation_path(out, split)}")
    return coco
