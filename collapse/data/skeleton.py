"""The COCO-17 person skeleton: joint names, left/right flip pairs, limbs and OKS sigmas, in one place."""
import numpy as np

JOINTS = (
    "nose", "left_eye", "right_eye", "left_ear", "right_ear",
    "left_shoulder", "right_shoulder", "left_elbow", "right_elbow",
    "left_wrist", "right_wrist", "left_hip", "right_hip",
    "left_knee", "right_knee", "left_ankle", "right_ankle",
)
NUM_JOINTS = len(JOINTS)

FLIP_PAIRS = ((1, 2), (3, 4), (5, 6), (7, 8), (9, 10), (11, 12), (13, 14), (15, 16))


def _flip_index():
    index = list(range(NUM_JOINTS))
    for a, b in FLIP_PAIRS:
        index[a], index[b] = b, a
    return tuple(index)


# channel j of a flipped view holds joint FLIP_INDEX[j] of the unflipped one
FLIP_INDEX = _flip_index()

# COCO's `skeleton` field (1-based joint ids), as in person_keypoints_*.json
COCO_SKELETON = (
    (16, 14), (14, 12), (17, 15), (15, 13), (12, 13), (6, 12), (7, 13), (6, 7), (6, 8),
    (7, 9), (8, 10), (9, 11), (2, 3), (1, 2), (1, 3), (2, 4), (3, 5), (4, 6), (5, 7),
)
LIMBS = tuple((a - 1, b - 1) for a, b in COCO_SKELETON)  # 0-based

# per-joint OKS constants from the COCO keypoint evaluation (pycocotools' kpt_oks_sigmas)
OKS_SIGMAS = np.array(
    [0.26, 0.25, 0.25, 0.35, 0.35, 0.79, 0.79, 0.72, 0.72, 0.62, 0.62, 1.07, 1.07, 0.87, 0.87, 0.89, 0.89]
) / 10.0

# Other sets' joints in their files' order, onto COCO-17 (the one place the mapping is stated): a joint they
# share with COCO-17 takes its channel; a COCO joint a set lacks (MPII and AIC have no face) is unlabeled,
# visibility 0, so it carries no loss and is not scored; a joint COCO-17 lacks (head top, necks, pelvis,
# thorax) has no channel: head top and neck give PCKh's head size when no head box exists, and are dropped.
MPII_JOINTS = ("right_ankle", "right_knee", "right_hip", "left_hip", "left_knee", "left_ankle", "pelvis", "thorax",
               "upper_neck", "head_top", "right_wrist", "right_elbow", "right_shoulder", "left_shoulder",
               "left_elbow", "left_wrist")
AIC_JOINTS = ("right_shoulder", "right_elbow", "right_wrist", "left_shoulder", "left_elbow", "left_wrist",
              "right_hip", "right_knee", "right_ankle", "left_hip", "left_knee", "left_ankle", "head_top", "neck")

# PCKh's groups as in the standard MPII table, limited to the joints COCO-17 has (MPII's Head, the head top
# and upper neck, has no COCO channel)
PCKH_GROUPS = {"shoulder": (5, 6), "elbow": (7, 8), "wrist": (9, 10), "hip": (11, 12), "knee": (13, 14), "ankle": (15, 16)}


def to_coco_joints(joints, names):
    """(N,K,3) joints of a set whose joint names are `names` -> (N,17,3) in COCO-17 order (x, y, visibility);
    COCO joints the set lacks are zeros (unlabeled)."""
    out = np.zeros((len(joints), NUM_JOINTS, 3))
    for k, name in enumerate(names):
        if name in JOINTS:
            out[:, JOINTS.index(name)] = joints[:, k]
    return out


def labeled(visibility):
    """Whether a joint carries a label: COCO visibility 1 (occluded) or 2 (visible); 0 is unlabeled."""
    return visibility > 0


COCO_PERSON_CATEGORY = {
    "id": 1, "name": "person", "supercategory": "person",
    "keypoints": list(JOINTS), "skeleton": [list(l) for l in COCO_SKELETON],
}
PERSON = COCO_PERSON_CATEGORY["id"]  # the category every file this toolkit writes gives its people
