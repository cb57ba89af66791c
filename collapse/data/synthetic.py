"""Procedurally generated COCO-format person-keypoint data: the embedded default data set.

Each image has a cluttered, textured background, distractor shapes (many of them limb-like sticks in the
same colours as people) and one to three articulated people with the COCO-17 skeleton. Poses are drawn
within joint-angle limits; limb widths, scale, rotation and position vary, and people may be cut by the
image border. Visibility flags come from the drawing order through a part-id buffer: 2 if the joint's
own limb is on top at that pixel, 1 if it is inside the image but covered, 0 (with x=y=0) outside.

Left and right are told apart the way they are in photographs: by which way the person faces (a face
is drawn only on people facing the camera). That cue is mirror-consistent, so horizontal flips with a
joint swap stay valid augmentations.

Each image is generated from its own seed sequence (seed, split, index), so the output does not depend
on the number of worker processes, and the same seed gives byte-identical annotations and images.

Worlds (`data.synthetic_world`): 1, the demo's so far: eyes and nose as marks of ~0.2 head radii, ears not
drawn, a person facing away keeps nose and eyes labeled (visibility 1) where nothing shows them. 2, joints a
COCO annotator could place: eyes and nose as marks of 0.3 head radii (the nose lighter than the eyes), both
ears drawn as marks on the head's edge (seen from either side), and a person facing away has nose and eyes
unlabeled (visibility 0: no annotator could place them). World 2 draws the same scenes as world 1 (the same
random draws: poses, colours, clutter), so the two differ only in these cues and labels.
"""
import json
import math
import os
from concurrent.futures import ProcessPoolExecutor

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from ..errors import DataError
from ..runs import atomic_write_text
from .skeleton import COCO17, PERSON, labeled

SPLITS = {"train": 0, "val": 1}
OCCLUDER_ID = 250

# COCO-17 joint indices
NOSE, LEYE, REYE, LEAR, REAR, LSHO, RSHO, LELB, RELB, LWRI, RWRI, LHIP, RHIP, LKNE, RKNE, LANK, RANK = range(17)


def _colour(rng, base=None, spread=60):
    if base is None:
        return tuple(int(c) for c in rng.integers(0, 256, 3))
    return tuple(int(np.clip(b + rng.integers(-spread, spread + 1), 0, 255)) for b in base)


def _background(rng, w, h):
    """Low-frequency colour field + stripes + pixel noise: texture a net must learn to ignore."""
    cells = int(rng.integers(2, 7))
    field = rng.integers(0, 256, (cells, cells, 3), dtype=np.uint8)
    img = Image.fromarray(field).resize((w, h), Image.BILINEAR)
    arr = np.asarray(img, dtype=np.float32)
    if rng.random() < 0.5:  # stripes or checks
        period = rng.uniform(4, 16)
        ang = rng.uniform(0, math.pi)
        yy, xx = np.mgrid[0:h, 0:w]
        wave = np.sin((xx * math.cos(ang) + yy * math.sin(ang)) * 2 * math.pi / period)
        arr += rng.uniform(10, 40) * wave[..., None]
    arr += rng.normal(0, rng.uniform(3, 18), arr.shape)
    return Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8))


def _rot(theta):
    c, s = math.cos(theta), math.sin(theta)
    return np.array([[c, -s], [s, c]])


def _pose(rng, height):
    """Joint positions (17, 2) in a body frame (pelvis at 0, y down) plus drawing attributes."""
    h = height
    facing = 1.0 if rng.random() < 0.8 else -1.0  # +1: faces the camera, the person's left is image-right
    wf = rng.uniform(0.55, 1.05)  # body turn: shoulder/hip width foreshortening
    j = np.zeros((COCO17.num_joints, 2))
    neck = np.array([0.0, -0.30 * h])
    sh, hip = 0.11 * h * wf, 0.07 * h * wf
    j[LSHO], j[RSHO] = neck + (facing * sh, 0.02 * h), neck + (-facing * sh, 0.02 * h)
    j[LHIP], j[RHIP] = (facing * hip, 0.0), (-facing * hip, 0.0)
    head_r = 0.07 * h * rng.uniform(0.85, 1.15)
    head = neck + (rng.uniform(-0.03, 0.03) * h, -0.11 * h)
    turn = rng.uniform(-0.45, 0.45) * head_r  # face turn, moves the nose and eyes sideways
    j[NOSE] = head + (turn, 0.15 * head_r)
    j[LEYE] = head + (facing * 0.4 * head_r * wf + 0.8 * turn, -0.25 * head_r)
    j[REYE] = head + (-facing * 0.4 * head_r * wf + 0.8 * turn, -0.25 * head_r)
    j[LEAR] = head + (facing * 0.95 * head_r * wf, 0.0)
    j[REAR] = head + (-facing * 0.95 * head_r * wf, 0.0)

    def chain(root, outward, lengths, first, bend):
        # angles from straight down, positive swings away from the body's midline
        a1 = math.radians(first)
        a2 = a1 + math.radians(bend)
        p1 = root + lengths[0] * np.array([outward * math.sin(a1), math.cos(a1)])
        p2 = p1 + lengths[1] * np.array([outward * math.sin(a2), math.cos(a2)])
        return p1, p2

    for sho, elb, wri, side in ((LSHO, LELB, LWRI, facing), (RSHO, RELB, RWRI, -facing)):
        j[elb], j[wri] = chain(j[sho], side, (0.17 * h, 0.15 * h), rng.uniform(-35, 170),
                               rng.choice([-1, 1]) * rng.uniform(0, 150))
    for hp, kn, an, side in ((LHIP, LKNE, LANK, facing), (RHIP, RKNE, RANK, -facing)):
        j[kn], j[an] = chain(j[hp], side, (0.24 * h, 0.23 * h), rng.uniform(-20, 70),
                             rng.choice([-1, 1]) * rng.uniform(0, 110))
    # torso lean: the upper body turns about the pelvis
    upper = [NOSE, LEYE, REYE, LEAR, REAR, LSHO, RSHO, LELB, RELB, LWRI, RWRI]
    lean = _rot(math.radians(np.clip(rng.normal(0, 12), -35, 35)))
    j[upper] = j[upper] @ lean.T
    head = head @ lean.T
    neck = neck @ lean.T
    return j, dict(facing=facing, head=head, head_r=head_r, neck=neck)


def _person(rng, img_w, img_h):
    height = img_h * rng.uniform(0.45, 1.05)
    joints, attr = _pose(rng, height)
    angle = rng.normal(0, 12) if rng.random() < 0.85 else rng.uniform(-100, 100)
    rot = _rot(math.radians(angle))
    centre = np.array([rng.uniform(0.1, 0.9) * img_w, rng.uniform(0.45, 0.95) * img_h])
    shift = centre - np.array([0.0, -0.15 * height]) @ rot.T  # place the body's middle at `centre`
    to_img = lambda p: np.asarray(p) @ rot.T + shift
    shirt, pants, skin = _colour(rng), _colour(rng), _colour(rng, (200, 160, 130), 70)
    hair = _colour(rng, (60, 45, 30), 50)
    return dict(joints=to_img(joints), head=to_img(attr["head"]), neck=to_img(attr["neck"]),
                head_r=attr["head_r"], facing=attr["facing"], height=height,
                arm_w=0.055 * height * rng.uniform(0.6, 1.4), leg_w=0.075 * height * rng.uniform(0.6, 1.4),
                shirt=shirt, pants=pants, skin=skin, hair=hair)


def _parts(p, rng):
    """Drawing list of one person: (kind, geometry, width, colour, joints owned), back to front."""
    j, h = p["joints"], p["height"]
    arm = lambda a, b, c: ("stick", (j[a], j[b]), p["arm_w"], c, (a, b))
    leg = lambda a, b, c: ("stick", (j[a], j[b]), p["leg_w"], c, (a, b))
    legs = [leg(LHIP, LKNE, _colour(rng, p["pants"], 20)), leg(LKNE, LANK, _colour(rng, p["pants"], 20)),
            leg(RHIP, RKNE, _colour(rng, p["pants"], 20)), leg(RKNE, RANK, _colour(rng, p["pants"], 20))]
    arms_l = [arm(LSHO, LELB, _colour(rng, p["shirt"], 20)), arm(LELB, LWRI, _colour(rng, p["skin"], 20))]
    arms_r = [arm(RSHO, RELB, _colour(rng, p["shirt"], 20)), arm(RELB, RWRI, _colour(rng, p["skin"], 20))]
    torso = ("poly", (j[LSHO], j[RSHO], j[RHIP], j[LHIP]), 0.06 * h, p["shirt"], (LSHO, RSHO, LHIP, RHIP))
    neck = ("stick", (p["neck"], p["head"]), 0.05 * h, p["skin"], ())
    face_colour = p["skin"] if p["facing"] > 0 else p["hair"]
    head = ("head", (p["head"], p["head_r"]), 0, face_colour, (NOSE, LEYE, REYE, LEAR, REAR))
    behind, front = [], []
    for a in (arms_l, arms_r):
        (behind if rng.random() < 0.25 else front).extend(a)
    if rng.random() < 0.5:
        legs = legs[2:] + legs[:2]
    return legs + behind + [torso, neck, head] + front


WORLDS = (1, 2)


def _shade(colour, by):
    return tuple(int(np.clip(c * by, 0, 255)) for c in colour)


def _draw_part(draw, ids, kind, geom, width, colour, pid, face=None, world=1, ears=None):
    if kind == "stick":
        (a, b), w = geom, max(1.0, width)
        pts = [tuple(a), tuple(b)]
        for d, fill in ((draw, colour), (ids, pid)):
            d.line(pts, fill=fill, width=int(round(w)))
            for q in (a, b):  # round caps so a joint's pixel belongs to its limb
                d.ellipse([q[0] - w / 2, q[1] - w / 2, q[0] + w / 2, q[1] + w / 2], fill=fill)
    elif kind == "poly":
        pts = [tuple(q) for q in geom]
        for d, fill in ((draw, colour), (ids, pid)):
            d.polygon(pts, fill=fill)
            d.line(pts + [pts[0]], fill=fill, width=int(round(width)))
    elif kind == "head":
        (c, r) = geom
        box = [c[0] - r, c[1] - 1.15 * r, c[0] + r, c[1] + 1.15 * r]
        for d, fill in ((draw, colour), (ids, pid)):
            d.ellipse(box, fill=fill)
        if ears is not None:  # world 2: both ears, marks on the head's edge, seen from the front and the back
            for q in ears:
                e = max(1.0, 0.3 * r)
                for d, fill in ((draw, _shade(colour, 0.7)), (ids, pid)):
                    d.ellipse([q[0] - e, q[1] - e, q[0] + e, q[1] + e], fill=fill)
        if face is not None:  # eyes and nose, only on people facing the camera
            jts, dark = face
            for k in (LEYE, REYE, NOSE):
                e = max(0.8, 0.18 * r) if world == 1 else max(1.0, 0.3 * r)
                fill = dark if world == 1 or k != NOSE else _shade(dark, 3.0)
                draw.ellipse([jts[k][0] - e, jts[k][1] - e, jts[k][0] + e, jts[k][1] + e], fill=fill)


def _distractor(draw, ids, rng, w, h, occluder):
    kind = rng.integers(0, 4)
    colour = _colour(rng)
    x, y = rng.uniform(0, w), rng.uniform(0, h)
    size = rng.uniform(0.05, 0.25 if not occluder else 0.15) * min(w, h)
    ang = rng.uniform(0, math.pi)
    x2, y2 = x + 2 * size * math.cos(ang), y + 2 * size * math.sin(ang)
    width = int(max(1, size * 0.4))
    targets = [(draw, colour)] + ([(ids, OCCLUDER_ID)] if occluder else [(ids, 0)])
    for d, fill in targets:
        if kind <= 1:  # limb-like stick: the hardest clutter for a joint detector
            d.line([(x, y), (x2, y2)], fill=fill, width=width)
            for qx, qy in ((x, y), (x2, y2)):
                d.ellipse([qx - width / 2, qy - width / 2, qx + width / 2, qy + width / 2], fill=fill)
        elif kind == 2:
            d.ellipse([x - size, y - size * 0.6, x + size, y + size * 0.6], fill=fill)
        else:
            d.rectangle([x - size, y - size / 2, x + size, y + size / 2], fill=fill)


def render(seed, split, index, world=1):
    """One image and its person annotations (list of dicts without ids)."""
    img, anns, _ = scene(seed, split, index, world)
    return img, anns


def scene(seed, split, index, world=1):
    """render's image and annotations, and what the tests check them against: the part-id map, and per
    person its joints' positions, facing and the part ids that own each joint."""
    rng = np.random.default_rng([seed, SPLITS[split], index])
    w, h = int(rng.integers(96, 161)), int(rng.integers(96, 161))
    img = _background(rng, w, h)
    idmap = Image.new("L", (w, h), 0)
    draw, ids = ImageDraw.Draw(img), ImageDraw.Draw(idmap)
    for _ in range(int(rng.integers(2, 9))):
        _distractor(draw, ids, rng, w, h, occluder=False)
    n_people = int(rng.choice([1, 2, 3], p=[0.6, 0.3, 0.1]))
    people = [_person(rng, w, h) for _ in range(n_people)]
    owners = []  # per person: joint -> part ids that own it
    for pi, p in enumerate(people):
        own = {k: set() for k in range(COCO17.num_joints)}
        dark = _colour(rng, (30, 30, 30), 25)
        for qi, (kind, geom, width, colour, joints) in enumerate(_parts(p, rng)):
            pid = 1 + pi * 16 + qi
            face = (p["joints"], dark) if kind == "head" and p["facing"] > 0 else None
            ears = (p["joints"][LEAR], p["joints"][REAR]) if kind == "head" and world == 2 else None
            _draw_part(draw, ids, kind, geom, width, colour, pid, face, world, ears)
            for k in joints:
                own[k].add(pid)
        owners.append(own)
    for _ in range(int(rng.integers(0, 3))):
        _distractor(draw, ids, rng, w, h, occluder=True)
    if rng.random() < 0.5:
        img = img.filter(ImageFilter.GaussianBlur(rng.uniform(0.3, 1.0)))
    pix = np.asarray(img, dtype=np.float32) + rng.normal(0, rng.uniform(2, 10), (h, w, 3))
    img = Image.fromarray(np.clip(pix, 0, 255).astype(np.uint8))

    idarr = np.asarray(idmap)
    anns, annotated = [], []  # annotated: the person each annotation is of
    for pi, (p, own) in enumerate(zip(people, owners)):
        mask = (idarr >= 1 + pi * 16) & (idarr < 1 + (pi + 1) * 16)
        area = int(mask.sum())
        if area < 20:
            continue
        ys, xs = np.nonzero(mask)
        x0, y0, x1, y1 = xs.min(), ys.min(), xs.max() + 1, ys.max() + 1
        kps = []
        for k in range(COCO17.num_joints):
            x, y = p["joints"][k]
            xi, yi = int(round(x)), int(round(y))
            if not (0 <= xi < w and 0 <= yi < h):
                kps += [0, 0, 0]
                continue
            hidden_face = p["facing"] < 0 and k in (NOSE, LEYE, REYE)  # facing away: nothing shows them
            if hidden_face and world == 2:  # no annotator could place them: unlabeled
                kps += [0, 0, 0]
                continue
            visible = int(idarr[yi, xi]) in own[k] and not hidden_face
            # +0.5: PIL draws pixel k's centre at k; COCO coordinates put it at k + 0.5
            kps += [round(float(x) + 0.5, 2), round(float(y) + 0.5, 2), 2 if visible else 1]
        annotated.append(pi)
        anns.append(dict(bbox=[float(x0), float(y0), float(x1 - x0), float(y1 - y0)], area=float(area),
                         keypoints=kps, num_keypoints=sum(1 for v in kps[2::3] if labeled(v)), iscrowd=0,
                         category_id=PERSON))
    return img, anns, dict(ids=idarr, people=[people[i] for i in annotated], owners=[owners[i] for i in annotated])


def _render_chunk(args):
    seed, split, start, stop, image_dir, world = args
    out = []
    for i in range(start, stop):
        img, anns = render(seed, split, i, world)
        name = f"{i:06d}.jpg"
        img.save(os.path.join(image_dir, name), quality=92)
        out.append((i, name, img.width, img.height, anns))
    return out


def write_split(root, split, count, seed, workers=None, world=1):
    """Render `count` images of one split under root/images/split and write its COCO json atomically."""
    image_dir = os.path.join(root, "images", split)
    ann_dir = os.path.join(root, "annotations")
    os.makedirs(image_dir, exist_ok=True)
    os.makedirs(ann_dir, exist_ok=True)
    workers = workers or max(1, min(os.cpu_count() or 1, 8))
    chunk = max(1, min(500, -(-count // workers)))
    jobs = [(seed, split, a, min(a + chunk, count), image_dir, world) for a in range(0, count, chunk)]
    if workers > 1 and len(jobs) > 1:
        with ProcessPoolExecutor(workers) as pool:
            results = [r for part in pool.map(_render_chunk, jobs) for r in part]
    else:
        results = [r for job in jobs for r in _render_chunk(job)]
    images, annotations = [], []
    for i, name, w, h, anns in sorted(results, key=lambda r: r[0]):
        images.append(dict(id=i + 1, file_name=name, width=w, height=h))
        for a in anns:
            annotations.append(dict(id=len(annotations) + 1, image_id=i + 1, **a))
    what = f"collapse synthetic persons, split {split}, seed {seed}" + (f", world {world}" if world != 1 else "")
    data = dict(info=dict(description=what),
                images=images, annotations=annotations, categories=[COCO17.category()])
    path = os.path.join(ann_dir, f"person_keypoints_{split}.json")
    atomic_write_text(path, json.dumps(data, sort_keys=True, separators=(",", ":")))
    return path


def prepare(root, train, val, seed, workers=None, world=1):
    """Write the synthetic data set (train and val splits) under root, and what made it (synthetic.json)."""
    if world not in WORLDS:
        raise DataError(f"synthetic world {world} does not exist (choose from {', '.join(map(str, WORLDS))})")
    for split, n in (("train", train), ("val", val)):
        write_split(root, split, n, seed, workers, world)
    atomic_write_text(os.path.join(root, "synthetic.json"), json.dumps(dict(train=train, val=val, seed=seed, world=world)))


def is_prepared(root, world=1):
    """Whether root holds the synthetic set; a set of another world there is a DataError (sets from before
    worlds existed are world 1)."""
    if not all(os.path.exists(os.path.join(root, "annotations", f"person_keypoints_{s}.json")) for s in SPLITS):
        return False
    made = os.path.join(root, "synthetic.json")
    there = json.load(open(made)).get("world", 1) if os.path.exists(made) else 1
    if there != world:
        raise DataError(f"{root} holds the synthetic set of world {there}, not world {world}: choose another data.root")
    return True
