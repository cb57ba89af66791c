"""A step's loss terms summed on the device between log lines; their means reach the host only when asked."""
import numpy as np

from .. import distributed
from ..errors import RunFailure


class NonFiniteLoss(RunFailure):
    """The loss became NaN or infinite: the run fails, keeping its last good checkpoint."""


class LossLog:
    def __init__(self):
        self.sums, self.count = None, 0

    def add(self, terms):
        # a staged method's terms change between stages: a term absent at a step counts as 0 there
        sums = self.sums
        self.sums = terms if sums is None else {k: sums.get(k, 0) + terms.get(k, 0) for k in {**sums, **terms}}
        self.count += 1

    def means(self, world, step):
        """Each term's mean since the last reset over the global batch (.item(): waits for the device, so only
        at log intervals and saves); a non-finite one fails the run."""
        means = {k: v / max(self.count, 1) for k, v in self.sums.items()}
        if world.size > 1:
            means = distributed.mean_over_ranks(means)
        means = {k: float(v) for k, v in means.items()}
        bad = {k: v for k, v in means.items() if not np.isfinite(v)}
        if bad:
            raise NonFiniteLoss(f"non-finite loss by step {step} ({', '.join(f'{k}={v}' for k, v in bad.items())}); "
                                "the last good checkpoint is kept")
        return means

    def reset(self):
        self.sums, self.count = None, 0
