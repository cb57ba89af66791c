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

def labeled(visibility):
    """Whether a joint carries a label: COCO visibility 1 (occluded) or 2 (visible); 0 is unlabeled."""
    return visibility > 0


COCO_PERSON_CATEGORY = {
    "id": 1, "name": "person", "supercategory": "person",
    "keypoints": list(JOINTS), "skeleton": [list(l) for l in COCO_SKELETON],
}
PERSON = COCO_PERSON_CATEGORY["id"]  # the category every file this toolkit writes gives its people
