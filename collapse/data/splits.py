"""The data a run trains and is evaluated on: the crop stores (prepared once, reused by every run),
which of their rows are labeled, unlabeled and validated, and the validation set a run is scored on.
Data code: the trainer, grids and the demo call it; it never trains."""
import os
from dataclasses import dataclass

import numpy as np
import torch

from ..augment import transform_points
from ..config import Config
from . import synthetic
from .coco import DataError, annotation_path, image_dir, load_coco, person_instances
from .prepare_coco import detection_split
from .store import Pool, build as build_store, store_path


def ensure_data(cfg: Config, progress=False):
    """Prepare the synthetic set if it is the source and absent; build (or reuse) the crop stores:
    (train, val) or (train, val, unlabeled pool)."""
    d = cfg.data
    if d.source == "synthetic" and not synthetic.is_prepared(d.root, d.synthetic_world):
        synthetic.prepare(d.root, d.synthetic_train, d.synthetic_val, d.synthetic_seed, world=d.synthetic_world)
    elif not os.path.isdir(d.root):
        raise DataError(f"data folder not found: {d.root}")
    hw = tuple(d.input_size)
    splits = [(d.train_split, True), (d.val_split, True)] + ([(d.unlabeled_split, False)] if d.unlabeled_split else [])
    # every annotation file is checked before any store is built: a bad one leaves nothing behind
    for split, labeled in splits:
        if not os.path.exists(os.path.join(store_path(d.root, split, hw, d.store_margin), "info.json")):
            path = annotation_path(d.root, split)
            person_instances(load_coco(path), path, labeled)
            image_dir(d.root, split)
    train = build_store(d.root, d.train_split, hw, d.store_margin, progress)
    stores = (train, val_store(cfg, progress))
    if d.unlabeled_split:
        stores += (build_store(d.root, d.unlabeled_split, hw, d.store_margin, progress, require_keypoints=False),)
    return stores


def val_store(cfg: Config, progress=False):
    """The crop store a run is evaluated on: the val split's (ground-truth boxes), or with eval.boxes a
    keypoint-less split of the val images holding the detections. Its annotation file is checked here for
    `collapse evaluate`; ensure_data has checked it already, with the others, before building any store."""
    d = cfg.data
    hw = tuple(d.input_size)
    if not os.path.exists(os.path.join(store_path(d.root, d.val_split, hw, d.store_margin), "info.json")):
        path = annotation_path(d.root, d.val_split)
        person_instances(load_coco(path), path)
        image_dir(d.root, d.val_split)
    val = build_store(d.root, d.val_split, hw, d.store_margin, progress)
    if not cfg.eval.boxes:
        return val
    name = f"{d.val_split}_dets_{os.path.splitext(os.path.basename(cfg.eval.boxes))[0]}_s{cfg.eval.box_score:g}"
    if not os.path.exists(annotation_path(d.root, name)):
        detection_split(d.root, annotation_path(d.root, d.val_split), cfg.eval.boxes, name, cfg.eval.box_score)
    os.makedirs(os.path.join(d.root, "images"), exist_ok=True)
    link = os.path.join(d.root, "images", name)  # the detection split reads the val split's images
    if not os.path.exists(link):
        os.symlink(os.path.abspath(image_dir(d.root, d.val_split)), link)
    return build_store(d.root, name, hw, d.store_margin, progress, require_keypoints=False)


def labeled_order(cfg: Config, n_train):
    """Train instance rows in labeling order: file order (the paper's first-N split) or a seeded shuffle
    (data.split_seed; -1: the run's seed, so each seed is a new labeled subset as well as a new init)."""
    if cfg.data.split == "first":
        return np.arange(n_train)
    seed = cfg.train.seed if cfg.data.split_seed == -1 else cfg.data.split_seed
    return np.random.default_rng(seed).permutation(n_train)


def split_rows(cfg: Config, n_train, n_pool=None):
    """(labeled rows, unlabeled rows): the first `labeled` instances of the labeling order; the pool is the
    rest of them, or, with data.unlabeled_split, all `n_pool` rows of that split (either cut to `unlabeled`)."""
    d = cfg.data
    n_lab = n_train if d.labeled == -1 else d.labeled
    if n_lab > n_train:
        raise DataError(f"data.labeled={d.labeled} is larger than the {n_train} training instances")
    order = labeled_order(cfg, n_train)
    rest = order[n_lab:] if n_pool is None else np.arange(n_pool)
    if d.unlabeled != -1:
        rest = rest[: d.unlabeled]
    return np.sort(order[:n_lab]), rest


def val_rows(cfg: Config, store):
    """The first `val` instances, extended to whole images so every person of an evaluated image is predicted."""
    n = len(store)
    if cfg.data.val == -1 or cfg.data.val >= n:
        return np.arange(n)
    img = store.meta["image_id"]
    stop = cfg.data.val
    while stop < n and img[stop] == img[stop - 1]:
        stop += 1
    return np.arange(stop)


@dataclass
class ValSet:
    """The validation instances a run is scored on: their crops (a Pool), the split's COCO ground truth
    (for OKS AP), and per instance its keypoints in the image frame and its box (for PCK)."""
    pool: Pool
    gt: object
    keypoints: np.ndarray            # (N, J, 3): x, y in the image, visibility
    bbox: np.ndarray                 # (N, 4): x, y, w, h
    detections: bool                 # detected boxes (eval.boxes): no keypoints, no PCK
    head_size: np.ndarray = None     # (N,) PCKh's unit in image pixels (MPII, AIC; NaN where unknown)
    area: np.ndarray = None          # (N,) COCO `area`: OKS's scale s^2 in image pixels

    @property
    def skeleton(self):
        return self.pool.skeleton


def val_set(cfg: Config, store, device, skeleton=None):
    """The ValSet of a val store; `skeleton`: the run's (the nets' channels), which the val split must share."""
    if skeleton is not None and store.skeleton is not skeleton:
        raise DataError(f"data.val_split {cfg.data.val_split} is in the {store.skeleton.name} skeleton, the run's "
                        f"labeled split in {skeleton.name}: a run is scored on the skeleton it trains")
    pool = Pool(store, val_rows(cfg, store), device)
    kp = store.meta["keypoints"][pool.rows]  # in the stored crop's frame: carried back to the image's
    crop = torch.as_tensor(store.meta["crop"][pool.rows])
    xy = transform_points(torch.linalg.inv(crop), torch.as_tensor(kp[..., :2]).double()).numpy()
    head = store.meta["head_size"][pool.rows] if "head_size" in store.meta else np.full(len(pool), np.nan)
    return ValSet(pool, load_coco(annotation_path(cfg.data.root, cfg.data.val_split)),
                  np.concatenate([xy, kp[..., 2:]], -1), store.meta["bbox"][pool.rows], bool(cfg.eval.boxes), head,
                  store.meta["area"][pool.rows])
