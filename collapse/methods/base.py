import math


def heatmap_mse(pred, target, weight=None):
    """0.5 * mean squared error over (B,J,H,W), joints masked by weight (B,J): the JointsMSELoss."""
    diff = (pred - target) ** 2
    if weight is not None:
        diff = diff * weight[..., None, None]
    return 0.5 * diff.mean()


class Method:
    nets = 1
    uses_unlabeled = False

    def __init__(self, cfg):
        self.cfg = cfg

    def unsup_weight(self, step):
        """unsup_weight with the usual sigmoid ramp-up exp(-5 (1 - t)^2) over `rampup` steps."""
        w, r = self.cfg.unsup_weight, self.cfg.rampup
        if r <= 0 or step >= r:
            return w
        t = step / r
        return w * math.exp(-5 * (1 - t) ** 2)

    def unsupervised(self, ctx, unl):
        return {}

    def after_step(self, ctx):
        pass
