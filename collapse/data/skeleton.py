"""Skeletons, one per data set: joint names, left/right flip pairs, limbs, OKS sigmas and PCKh's table, in one place.

A run trains and scores on its labeled set's own skeleton (COCO-17, MPII-16 or AI Challenger-14), as the
published protocols do: MPII is scored on MPII's 16 joints, not on the COCO joints they share. A COCO-format
annotation file names its skeleton in its person category's `keypoints` list (this toolkit's converters write
it); a file without one is known by its joint count. An unlabeled set with another skeleton (AIC beside MPII,
the seed's mix_mpii_ai) has its keypoints carried onto the run's by joint name (`Skeleton.take`): joints the
run's skeleton has and that set lacks are unlabeled. The joint counts differ between skeletons, so a
heatmap's channel count names its skeleton (`for_channels`): the device code (flip swaps, OKS) needs nothing else.
"""
from dataclasses import dataclass, field
from functools import cached_property

import numpy as np


@dataclass(frozen=True)
class Skeleton:
    name: str
    joints: tuple                    # joint names, in the files' (and the heatmaps') channel order
    flip_pairs: tuple                # (left, right) joint names swapped by a mirror
    limbs: tuple                     # (a, b) joint names drawn as a bone
    oks_sigmas: tuple                # per-joint OKS constant, in joint order
    pckh_groups: dict = field(default_factory=dict)  # PCKh table column -> joint names (its value: their PCKh's mean)
    pckh_left_out: tuple = ()        # joints left out of PCKh's mean (MPII: pelvis and thorax)
    parts: dict = field(default_factory=dict)  # body part -> joint names: per-part AP, PCK and error shares

    @property
    def num_joints(self):
        return len(self.joints)

    def index(self, names):
        return tuple(self.joints.index(n) for n in names)

    @cached_property  # a frozen dataclass's instance __dict__ still takes it
    def flip_index(self):
        """Channel j of a mirrored view holds joint flip_index[j] of the unmirrored one."""
        index = list(range(self.num_joints))
        for a, b in self.flip_pairs:
            i, j = self.joints.index(a), self.joints.index(b)
            index[i], index[j] = j, i
        return tuple(index)

    @cached_property
    def limb_index(self):
        return tuple(self.index(pair) for pair in self.limbs)

    @cached_property
    def sigmas(self):
        return np.asarray(self.oks_sigmas, dtype=np.float64)

    def part_of(self, joint):
        """The body part (Skeleton.parts) joint index `joint` belongs to."""
        return next(p for p, names in self.parts.items() if self.joints[joint] in names)

    @cached_property
    def pckh_scored(self):
        """Joint indices PCKh's mean counts."""
        return tuple(j for j, n in enumerate(self.joints) if n not in self.pckh_left_out)

    def category(self):
        """The COCO person category of a file in this skeleton (1-based `skeleton` pairs, as COCO writes them)."""
        return {"id": PERSON, "name": "person", "supercategory": "person", "keypoints": list(self.joints),
                "skeleton": [[a + 1, b + 1] for a, b in self.limb_index]}

    @staticmethod
    def labeled(visibility):
        return labeled(visibility)

    def oks(self, d2, area):
        """OKS per joint of squared distances d2 (..., J) at object areas `area` (broadcast), this skeleton's sigmas."""
        import torch
        sigmas = self.sigmas
        if isinstance(d2, torch.Tensor):  # its sigmas on its device, in its dtype
            sigmas = torch.as_tensor(sigmas, dtype=d2.dtype, device=d2.device)
        return oks_per_joint(d2, area, sigmas)

    def take(self, keypoints, other):
        """(N, K, 3) keypoints in skeleton `other` -> (N, this skeleton's joints, 3): a joint both name keeps its
        values; one `other` lacks is zeros (unlabeled: no loss, not scored)."""
        if other is self:
            return keypoints
        out = np.zeros((len(keypoints), self.num_joints, keypoints.shape[-1]), dtype=keypoints.dtype)
        for k, name in enumerate(other.joints):
            if name in self.joints:
                out[:, self.joints.index(name)] = keypoints[:, k]
        return out


PERSON = 1  # the category id every file this toolkit writes gives its people

COCO17 = Skeleton(
    "coco17",
    ("nose", "left_eye", "right_eye", "left_ear", "right_ear", "left_shoulder", "right_shoulder", "left_elbow",
     "right_elbow", "left_wrist", "right_wrist", "left_hip", "right_hip", "left_knee", "right_knee", "left_ankle",
     "right_ankle"),
    (("left_eye", "right_eye"), ("left_ear", "right_ear"), ("left_shoulder", "right_shoulder"),
     ("left_elbow", "right_elbow"), ("left_wrist", "right_wrist"), ("left_hip", "right_hip"),
     ("left_knee", "right_knee"), ("left_ankle", "right_ankle")),
    # COCO's `skeleton` field of person_keypoints_*.json, in its order
    (("left_ankle", "left_knee"), ("left_knee", "left_hip"), ("right_ankle", "right_knee"), ("right_knee", "right_hip"),
     ("left_hip", "right_hip"), ("left_shoulder", "left_hip"), ("right_shoulder", "right_hip"),
     ("left_shoulder", "right_shoulder"), ("left_shoulder", "left_elbow"), ("right_shoulder", "right_elbow"),
     ("left_elbow", "left_wrist"), ("right_elbow", "right_wrist"), ("left_eye", "right_eye"), ("nose", "left_eye"),
     ("nose", "right_eye"), ("left_eye", "left_ear"), ("right_eye", "right_ear"), ("left_ear", "left_shoulder"),
     ("right_ear", "right_shoulder")),
    # pycocotools' kpt_oks_sigmas, computed as it computes them (the same floats)
    tuple(np.array([.26, .25, .25, .35, .35, .79, .79, .72, .72, .62, .62, 1.07, 1.07, .87, .87, .89, .89]) / 10.0),
    parts={"face": ("nose", "left_eye", "right_eye", "left_ear", "right_ear"),
           "arms": ("left_shoulder", "right_shoulder", "left_elbow", "right_elbow", "left_wrist", "right_wrist"),
           "legs": ("left_hip", "right_hip", "left_knee", "right_knee", "left_ankle", "right_ankle")},
)

# MPII's joint ids 0-15 (the official .mat's `id`, HRNet's and mmpose's JSON order)
MPII16 = Skeleton(
    "mpii16",
    ("right_ankle", "right_knee", "right_hip", "left_hip", "left_knee", "left_ankle", "pelvis", "thorax",
     "upper_neck", "head_top", "right_wrist", "right_elbow", "right_shoulder", "left_shoulder", "left_elbow",
     "left_wrist"),
    (("left_ankle", "right_ankle"), ("left_knee", "right_knee"), ("left_hip", "right_hip"),
     ("left_wrist", "right_wrist"), ("left_elbow", "right_elbow"), ("left_shoulder", "right_shoulder")),
    (("right_ankle", "right_knee"), ("right_knee", "right_hip"), ("right_hip", "pelvis"), ("pelvis", "left_hip"),
     ("left_hip", "left_knee"), ("left_knee", "left_ankle"), ("pelvis", "thorax"), ("thorax", "upper_neck"),
     ("upper_neck", "head_top"), ("upper_neck", "right_shoulder"), ("right_shoulder", "right_elbow"),
     ("right_elbow", "right_wrist"), ("upper_neck", "left_shoulder"), ("left_shoulder", "left_elbow"),
     ("left_elbow", "left_wrist")),
    # mmpose's MPII dataset info ("adapted from COCO"): MPII has no OKS of its own; used for OKS-NMS,
    # ST++'s agreement and eval.metric=oks on MPII
    (0.089, 0.083, 0.107, 0.107, 0.083, 0.089, 0.026, 0.026, 0.026, 0.026, 0.062, 0.072, 0.179, 0.179, 0.072, 0.062),
    # the standard MPII table (the official evaluation, the seed's and mmpose's): Head is the head top;
    # a pair's column is the mean of its two joints' PCKh; Mean counts every joint but pelvis and thorax,
    # weighted by how many persons have it labeled
    {"head": ("head_top",), "shoulder": ("left_shoulder", "right_shoulder"),
     "elbow": ("left_elbow", "right_elbow"), "wrist": ("left_wrist", "right_wrist"),
     "hip": ("left_hip", "right_hip"), "knee": ("left_knee", "right_knee"), "ankle": ("left_ankle", "right_ankle")},
    ("pelvis", "thorax"),
    {"head": ("head_top", "upper_neck"), "torso": ("pelvis", "thorax"),
     "arms": ("left_shoulder", "right_shoulder", "left_elbow", "right_elbow", "left_wrist", "right_wrist"),
     "legs": ("left_hip", "right_hip", "left_knee", "right_knee", "left_ankle", "right_ankle")},
)

# AI Challenger's 14 joints in its files' order
AIC14 = Skeleton(
    "aic14",
    ("right_shoulder", "right_elbow", "right_wrist", "left_shoulder", "left_elbow", "left_wrist", "right_hip",
     "right_knee", "right_ankle", "left_hip", "left_knee", "left_ankle", "head_top", "neck"),
    (("left_shoulder", "right_shoulder"), ("left_elbow", "right_elbow"), ("left_wrist", "right_wrist"),
     ("left_hip", "right_hip"), ("left_knee", "right_knee"), ("left_ankle", "right_ankle")),
    (("right_wrist", "right_elbow"), ("right_elbow", "right_shoulder"), ("right_shoulder", "neck"),
     ("neck", "left_shoulder"), ("left_shoulder", "left_elbow"), ("left_elbow", "left_wrist"),
     ("right_ankle", "right_knee"), ("right_knee", "right_hip"), ("right_hip", "left_hip"), ("left_hip", "left_knee"),
     ("left_knee", "left_ankle"), ("head_top", "neck"), ("right_shoulder", "right_hip"), ("left_shoulder", "left_hip")),
    # AI Challenger's official keypoint evaluation (its delta / 2, as mmpose states them)
    (0.01388152, 0.01515228, 0.01057665, 0.01417709, 0.01497891, 0.01402144, 0.03909642, 0.03686941, 0.01981803,
     0.03843971, 0.03412318, 0.02415081, 0.01291456, 0.01236173),
    # no standard PCKh table exists for AIC; the seed's AIC evaluator scores every joint by head size
    {"head": ("head_top", "neck"), "shoulder": ("left_shoulder", "right_shoulder"),
     "elbow": ("left_elbow", "right_elbow"), "wrist": ("left_wrist", "right_wrist"),
     "hip": ("left_hip", "right_hip"), "knee": ("left_knee", "right_knee"), "ankle": ("left_ankle", "right_ankle")},
    (),
    {"head": ("head_top", "neck"),
     "arms": ("left_shoulder", "right_shoulder", "left_elbow", "right_elbow", "left_wrist", "right_wrist"),
     "legs": ("left_hip", "right_hip", "left_knee", "right_knee", "left_ankle", "right_ankle")},
)

SKELETONS = {s.name: s for s in (COCO17, MPII16, AIC14)}
_BY_COUNT = {s.num_joints: s for s in SKELETONS.values()}
assert len(_BY_COUNT) == len(SKELETONS), "skeletons are told apart by their joint counts"


def for_channels(count):
    """The skeleton whose joint count is `count` (a heatmap's channels, a keypoint array's joints)."""
    if count not in _BY_COUNT:
        from ..errors import DataError
        raise DataError(f"no skeleton has {count} joints (known: " +
                        ", ".join(f"{s.name} {s.num_joints}" for s in SKELETONS.values()) + ")")
    return _BY_COUNT[count]


def of_category(category, count=None):
    """The skeleton a COCO person category names by its `keypoints` list, else the one with `count` joints."""
    names = tuple(category.get("keypoints") or ()) if isinstance(category, dict) else ()
    for s in SKELETONS.values():
        if names == s.joints:
            return s
    if names:
        from ..errors import DataError
        raise DataError(f"the person category's keypoints ({', '.join(names[:4])}, ...: {len(names)}) are none of "
                        "this toolkit's skeletons (" + ", ".join(SKELETONS) + ")")
    return for_channels(count)


def oks_per_joint(d2, area, sigmas):
    """COCO's keypoint similarity per joint, exp(-d^2 / (2 s^2 (2 sigma)^2)), for squared distances d2, object
    areas s^2 (broadcast against d2) and the skeleton's sigmas: the one formula for OKS-NMS and ST++'s
    agreement (numpy arrays or torch tensors alike)."""
    x = -d2 / (2 * area * (2 * sigmas) ** 2 + 1e-9)
    return x.exp() if hasattr(x, "exp") else np.exp(x)


def labeled(visibility):
    """Whether a joint carries a label: COCO visibility 1 (occluded) or 2 (visible); 0 is unlabeled."""
    return visibility > 0
