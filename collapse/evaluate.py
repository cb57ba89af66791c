"""Evaluation: predict on stored crops, map back to image coordinates, score with pycocotools OKS AP, and PCK.

The same path serves the synthetic set and COCO: predictions become a COCO keypoint result JSON, and
`COCOeval(gt, dt, "keypoints")` scores them against the split's annotation file.
"""
import contextlib
import io
import os

import numpy as np
import torch
from pycocotools.cocoeval import COCOeval

from .augment import about_centre, normalise, store_to_input, stride_scale, swap_flipped, transform_points, warp
from .data.skeleton import PERSON, for_channels, labeled
from .errors import DataError
from .heatmaps import CONFIDENT, decode, decode_dark
from .models import evaluating, named_nets

COCO_STATS = ("AP", "AP50", "AP75", "APm", "APl", "AR", "AR50", "AR75", "ARm", "ARl")


def flipped_view(n, hw, device):
    """The mirror about the crop centre, as a view matrix (the flip test's second view)."""
    flip = torch.ones(n, dtype=torch.bool, device=device)
    return about_centre(torch.zeros(n, device=device), torch.ones(n, device=device), flip, hw), flip


def heatmaps(net, x, flip_test, stride):
    """The net's heatmaps for input x; with flip_test, averaged with those of the mirrored input carried
    back (joint channels swapped). Continuous coordinates make the carried-back map exact: no 1-px shift."""
    heat = net(x).float()
    if not flip_test:
        return heat
    hw = x.shape[-2:]
    M, flip = flipped_view(len(x), hw, x.device)
    mirrored = net(warp(x, M, hw)).float()
    s, s_inv = stride_scale(stride, x.device)
    back = warp(mirrored, s @ M @ s_inv, heat.shape[-2:])  # a mirror is its own inverse
    return 0.5 * (heat + swap_flipped(back, flip))


@torch.no_grad()
def predict(net, pool, input_hw, stride, batch=256, flip_test=False, decoder="argmax", sigma=2.0):
    """Keypoints (N,J,2) in image coordinates and per-joint confidences (N,J) for every row of `pool`."""
    device = next(net.parameters()).device
    coords, scores = [], []
    with evaluating(net):
        for a in range(0, len(pool), batch):
            idx = torch.arange(a, min(a + batch, len(pool)))
            crops, _ = pool.fetch(idx)
            A = store_to_input(len(idx), pool.store.store_hw, input_hw, device)
            heat = heatmaps(net, warp(normalise(crops), A, input_hw), flip_test, stride)
            xy, conf = decode_dark(heat, sigma) if decoder == "dark" else decode(heat)
            coords.append(transform_points(torch.linalg.inv(A), xy * stride).cpu())
            scores.append(conf.cpu())
    xy_store = torch.cat(coords).double()
    crop = torch.as_tensor(pool.store.meta["crop"][pool.rows])
    return transform_points(torch.linalg.inv(crop), xy_store).numpy(), torch.cat(scores).numpy()


def to_coco_results(image_ids, coords, conf, box_scores=None):
    """COCO keypoint results; instance score = mean confidence of joints above CONFIDENT, times the box
    score with detection boxes (SimpleBaseline's rescoring)."""
    results = []
    box_scores = np.ones(len(image_ids)) if box_scores is None else box_scores
    for img, xy, c, bs in zip(image_ids, coords, conf, box_scores):
        good = c > CONFIDENT
        score = (float(c[good].mean()) if good.any() else float(c.mean())) * float(bs)
        kps = np.concatenate([xy, c[:, None]], 1).reshape(-1)
        results.append(dict(image_id=int(img), category_id=PERSON, keypoints=[round(float(v), 3) for v in kps],
                            score=round(score, 5)))
    return results


def oks_nms(results, areas, threshold=0.9):
    """Per image, keep instances in score order, dropping any whose OKS with a kept one (on the kept
    one's area) exceeds threshold. Returns the kept results."""
    kept = []
    by_image = {}
    for r, a in zip(results, areas):
        by_image.setdefault(r["image_id"], []).append((r, a))
    for img in sorted(by_image):
        cands = sorted(by_image[img], key=lambda ra: -ra[0]["score"])
        mine = []
        for r, a in cands:
            xy = np.asarray(r["keypoints"]).reshape(-1, 3)[:, :2]
            skeleton = for_channels(len(xy))
            if all(np.mean(skeleton.oks(((xy - kx) ** 2).sum(1), ka)) <= threshold for kx, ka in mine):
                mine.append((xy, a))
                kept.append(r)
    return kept


def coco_ap(gt_coco, results, image_ids, skeleton):
    """OKS AP/AR through pycocotools (with the skeleton's OKS sigmas), restricted to the evaluated images."""
    if not results:
        return {k: 0.0 for k in COCO_STATS}
    with contextlib.redirect_stdout(io.StringIO()):
        dt = gt_coco.loadRes([dict(r) for r in results])  # loadRes adds keys to what it is given
        ev = COCOeval(gt_coco, dt, "keypoints")
        ev.params.imgIds = sorted(set(int(i) for i in image_ids))
        ev.params.kpt_oks_sigmas = skeleton.sigmas
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return {k: float(max(v, 0.0)) for k, v in zip(COCO_STATS, ev.stats)}


def part_ap(gt_coco, results, image_ids, skeleton, keypoints):
    """OKS AP of each body part (Skeleton.parts), with ground-truth boxes (`results` row by row with
    `keypoints`, the persons' ground truth): pycocotools on a copy of the ground truth whose other joints are
    unlabeled, so OKS counts the part's joints only. A person with none of the part's joints labeled is left
    out with its prediction (COCO would ignore the person and count its prediction as a false positive unless
    it lay near the box). -> {AP/<part>: value}."""
    from pycocotools.coco import COCO
    out = {}
    for part, names in skeleton.parts.items():
        keep = np.zeros(skeleton.num_joints, dtype=bool)
        keep[list(skeleton.index(names))] = True
        data = dict(gt_coco.dataset)
        anns = []
        for a in data["annotations"]:
            kp = np.asarray(a.get("keypoints") or [0] * 3 * skeleton.num_joints, dtype=np.float64).reshape(-1, 3)
            kp[~keep] = 0
            anns.append(dict(a, keypoints=kp.reshape(-1).tolist(), num_keypoints=int((kp[:, 2] > 0).sum())))
        part_gt = COCO()
        part_gt.dataset = dict(data, annotations=anns)
        with contextlib.redirect_stdout(io.StringIO()):
            part_gt.createIndex()
        has = labeled(keypoints[:, keep, 2]).any(1)
        out[f"AP/{part}"] = coco_ap(part_gt, [r for r, h in zip(results, has) if h], image_ids, skeleton)["AP"]
    return out


ERROR_KINDS = ("good", "jitter", "inversion", "swap", "miss")


def joint_errors(coords, keypoints, area, image_ids, skeleton):
    """Each labeled joint's error, in Ronchi & Perona's taxonomy (ICCV 2017), from its keypoint similarity
    ks = exp(-d^2 / (2 area (2 sigma)^2)): good (ks >= 0.85), jitter (0.5 <= ks < 0.85: imprecise), and among the
    gross errors (ks < 0.5) inversion (within 0.5 of the person's own left/right counterpart), swap (within 0.5 of
    that joint or its counterpart on another person of the image), miss (anything else). -> DataFrame, one row
    per joint: joint, part, labeled (count), a share per kind, median error in pixels."""
    import pandas as pd
    has = labeled(keypoints[..., 2])
    gt, flip = keypoints[..., :2], list(skeleton.flip_index)
    ks = lambda pred, truth, a: skeleton.oks(((pred - truth) ** 2).sum(-1), a)
    own = ks(coords, gt, area[:, None])                                              # (N, J)
    inverted = (ks(coords, gt[:, flip], area[:, None]) >= 0.5) & has[:, flip]
    swapped = np.zeros_like(inverted)
    for img in np.unique(image_ids):  # every other person of the image at once: (n, n, J), the diagonal left out
        rows = np.flatnonzero(image_ids == img)
        others = ~np.eye(len(rows), dtype=bool)[..., None]
        for order in (slice(None), flip):  # the same joint, then its counterpart
            near = ks(coords[rows][:, None], gt[rows][:, order][None], area[rows][None, :, None]) >= 0.5
            swapped[rows] |= (near & has[rows][:, order][None] & others).any(1)
    gross = own < 0.5
    kind = np.select([~gross & (own >= 0.85), ~gross, inverted, swapped], list(ERROR_KINDS[:4]), "miss")
    err = np.linalg.norm(coords - gt, axis=-1)
    rows = []
    for j, name in enumerate(skeleton.joints):
        n = int(has[:, j].sum())
        shares = {k: float((kind[has[:, j], j] == k).mean()) if n else np.nan for k in ERROR_KINDS}
        rows.append(dict(joint=name, part=skeleton.part_of(j), labeled=n, **shares,
                         median_error_px=float(np.median(err[has[:, j], j])) if n else np.nan))
    return pd.DataFrame(rows)


def part_shares(joints, by=()):
    """joint_errors rows (with the `by` columns) -> per `by` and body part, the shares of the labeled joints by
    error kind, each joint weighted by how many persons label it."""
    kinds = list(ERROR_KINDS)
    weighted = joints.assign(**{k: joints[k].fillna(0) * joints.labeled for k in kinds})
    g = weighted.groupby([*by, "part"], sort=False)[[*kinds, "labeled"]].sum().reset_index()
    g[kinds] = g[kinds].div(g.labeled.clip(lower=1), axis=0)
    return g.drop(columns="labeled")


def pck(coords, keypoints, bbox, alpha=0.1, joints=None):
    """Share of labeled joints (of `joints`: indices, default all) predicted within alpha * max(box width,
    height) of the ground truth."""
    if joints is not None:
        coords, keypoints = coords[:, joints], keypoints[:, joints]
    has_label = labeled(keypoints[..., 2])
    dist = np.linalg.norm(coords - keypoints[..., :2], axis=-1)
    thr = alpha * np.maximum(bbox[:, 2], bbox[:, 3])[:, None]
    return float((dist < thr)[has_label].mean()) if has_label.any() else 0.0


def pckh(coords, keypoints, head_size, skeleton, alpha=0.5):
    """PCKh@alpha by the standard MPII protocol (the official evaluation's, the seed's and mmpose's): a labeled
    joint is correct when its error is <= alpha x the person's head size; each joint's PCKh is the share of
    the persons labeling it that are correct; a table column is the mean of its joints' PCKh (Head: the head
    top; Shoulder: left and right ...); Mean pools the joints PCKh counts (MPII: all but pelvis and thorax),
    each weighted by how many persons label it. Persons without a head size are not scored. -> {name: value}."""
    has = labeled(keypoints[..., 2]) & np.isfinite(head_size)[:, None]
    err = np.linalg.norm(coords - keypoints[..., :2], axis=-1)
    hit = (err <= alpha * np.nan_to_num(head_size)[:, None]) & has
    count = has.sum(0)
    per_joint = hit.sum(0) / np.maximum(count, 1)
    scored = list(skeleton.pckh_scored)
    out = {f"PCKh@{alpha:g}": float(hit[:, scored].sum() / max(count[scored].sum(), 1))}
    for name, joints in skeleton.pckh_groups.items():
        present = [j for j in skeleton.index(joints) if count[j]]
        out[f"PCKh@{alpha:g}/{name}"] = float(per_joint[present].mean()) if present else 0.0
    return out


def evaluate(net, val, cfg, parts=False):
    """(metrics dict, COCO results list, joint errors or None) for a network on a ValSet (of GT or detected
    boxes; with detections: rescoring by box score, OKS-NMS, and no PCK, which needs a box-to-person match),
    under the config's eval settings. parts (ground-truth boxes): also AP and PCK@0.1 per body part
    (AP/face ...) and each joint's error shares (joint_errors)."""
    e, d = cfg.eval, cfg.data
    pool = val.pool
    coords, conf = predict(net, pool, tuple(d.input_size), d.heatmap_stride, flip_test=e.flip_test,
                           decoder=e.decode, sigma=d.sigma)
    meta = pool.store.meta
    image_ids = meta["image_id"][pool.rows]
    if val.detections:
        results = oks_nms(to_coco_results(image_ids, coords, conf, meta["score"][pool.rows]),
                          meta["area"][pool.rows], e.oks_nms)
        image_ids = [im["id"] for im in val.gt.dataset["images"]]
    else:
        results = to_coco_results(image_ids, coords, conf)
    if e.metric == "pckh":
        if val.detections or not val.skeleton.pckh_groups or not np.isfinite(val.head_size).any():
            raise DataError("eval.metric pckh needs ground-truth boxes and head sizes (an MPII or AIC split made by "
                            "`collapse prepare mpii|aic`)")
        metrics = {**pckh(coords, val.keypoints, val.head_size, val.skeleton, 0.5),
                   **pckh(coords, val.keypoints, val.head_size, val.skeleton, 0.1)}
    else:
        metrics = coco_ap(val.gt, results, image_ids, val.skeleton)
        if not val.detections:
            metrics["PCK@0.1"] = pck(coords, val.keypoints, val.bbox)
    if not parts or val.detections:
        return metrics, results, None
    sk = val.skeleton
    if e.metric == "oks":
        metrics.update(part_ap(val.gt, results, image_ids, sk, val.keypoints))
    for part, names in sk.parts.items():
        metrics[f"PCK@0.1/{part}"] = pck(coords, val.keypoints, val.bbox, joints=list(sk.index(names)))
    return metrics, results, joint_errors(coords, val.keypoints, val.area, image_ids, sk)


def evaluate_nets(nets, val, cfg, folder=None, step=0, parts=False):
    """A run's evaluation: each net scored (and for several, their ensemble) -> {metric[/net name]: value}. With
    `folder` (a run folder), each net's COCO results go to predictions/step<step>_<net>.json and, with `parts`
    (per-part metrics and joint errors too: evaluate), the joint errors to joints.parquet (net and step columns)."""
    import pandas as pd
    from .runs import atomic_write_json, atomic_write_parquet
    out, joints = {}, []
    for name, net in named_nets(nets):
        suffix = "" if len(nets) == 1 else f"/{name}"
        metrics, results, errors = evaluate(net, val, cfg, parts)
        out.update({k + suffix: v for k, v in metrics.items()})
        if errors is not None:
            joints.append(errors.assign(net=name, step=step))
        if folder:
            atomic_write_json(os.path.join(folder, "predictions", f"step{step:07d}{suffix.replace('/', '_')}.json"), results)
    if folder and joints:
        atomic_write_parquet(os.path.join(folder, "joints.parquet"), pd.concat(joints, ignore_index=True))
    return out
