"""Pose networks, by name: a tiny CPU net, SimpleBaseline on torchvision's ResNets, and HRNet. All map
(B,3,H,W) to (B,J,H/s,W/s)."""
from contextlib import contextmanager

import torch
import torch.nn as nn

from ..errors import ModelError
from .tiny import TinyPose


# resnet.py and hrnet.py are imported when such a net is built: torchvision takes about a second to import
# (its ops pull in torch._dynamo), which every training subprocess of a grid of tiny nets would pay
def _simple_baseline(depth):
    def build(cfg, joints, stride):
        from .resnet import SimpleBaseline
        return SimpleBaseline(depth, joints, stride)
    return build


def _hrnet(width):
    def build(cfg, joints, stride):
        from .hrnet import HRNet
        return HRNet(width, joints)
    return build


RESNET_DEPTHS = (18, 34, 50, 101, 152)  # torchvision's ResNets
MODELS = {
    "tiny": lambda cfg, joints, stride: TinyPose(joints, cfg.width, stride),
    **{f"resnet{d}": _simple_baseline(d) for d in RESNET_DEPTHS},
    "hrnet_w32": _hrnet(32),
    "hrnet_w48": _hrnet(48),
}


def check_model(cfg, stride):
    """A ModelError for a model that cannot be built, before anything costly is done."""
    if cfg.name not in MODELS:
        raise ModelError(f"unknown model '{cfg.name}' (choose from {', '.join(MODELS)})")
    if cfg.name.startswith("hrnet") and stride != 4:
        raise ModelError(f"{cfg.name} predicts heatmaps at stride 4: set data.heatmap_stride=4")
    if cfg.pretrained and not cfg.name.startswith(("resnet", "hrnet")):
        raise ModelError("model.pretrained applies to resnet and hrnet models")


def build_model(cfg, joints, stride):
    check_model(cfg, stride)
    net = MODELS[cfg.name](cfg, joints, stride)
    if cfg.pretrained:
        if cfg.name.startswith("resnet"):
            from .resnet import load_torchvision_backbone
            load_torchvision_backbone(net.backbone, cfg.pretrained, int(cfg.name[len("resnet"):]))
        elif cfg.name.startswith("hrnet"):
            from .hrnet import load_hrnet_pretrained
            load_hrnet_pretrained(net, cfg.pretrained)
    return net


class Average(nn.Module):
    """The mean heatmap of several networks (the dual's ensemble, evaluated beside each net as the paper's code does)."""

    def __init__(self, nets):
        super().__init__()
        self.nets = nn.ModuleList(nets)

    def forward(self, x):
        return torch.stack([n(x).float() for n in self.nets]).mean(0)


def named_nets(nets):
    """What a run's evaluation scores, by name: its one net ("net"), or each net ("net0", "net1", ...) and their
    ensemble ("ens"). Metrics carry the name as a suffix (AP/net0), none for a single net (AP)."""
    if len(nets) == 1:
        return [("net", nets[0])]
    return [(f"net{i}", n) for i, n in enumerate(nets)] + [("ens", Average(nets))]


@contextmanager
def evaluating(net):
    """Run `net` in eval mode (BatchNorm on its running statistics) and give it back in the mode it had:
    how evaluation, probes and pseudo-labeling see a network mid-training."""
    was = net.training
    net.eval()
    try:
        yield net
    finally:
        net.train(was)
