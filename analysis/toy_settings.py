"""The 2-D toy study's settings and command-line options (analysis/toy.py runs it); a light module, read
whenever `collapse` builds its command line."""
from dataclasses import dataclass


@dataclass
class ToySettings:
    minor_share: float = 0.05
    spread: float = 0.6            # std of each class's Gaussian
    labeled: int = 100
    unlabeled: int = 5000
    easy_noise: float = 0.3       # std of a view's noise, isotropic ...
    hard_noise: float = 0.8       # ... and of the extra draw that makes a view hard, along y only
    unsup_weight: float = 3.0      # stronger than the pose runs: the toy has only 2 dimensions to smooth over
    steps: int = 1500
    batch_labeled: int = 64
    batch_unlabeled: int = 256
    lr: float = 3e-3
    snapshots: tuple = (0, 100, 300, 600, 1000, 1500)
    seed: int = 0


def add_arguments(p):
    p.add_argument("--out", default="results/toy", help="output folder (default results/toy)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--steps", type=int, default=ToySettings.steps)
    p.add_argument("--minor-share", type=float, default=ToySettings.minor_share)
    p.add_argument("--unsup-weight", type=float, default=ToySettings.unsup_weight)


DESCRIPTION = ("The 2-D toy study: an imbalanced two-class problem (95:5) trained with supervised, naive "
               "consistency and easy->hard (single, dual) losses of collapse.methods; writes toy_boundary.png/.pdf "
               "and toy_measures.csv, and prints the boundary displacement toward the minor class.")
