"""Pose networks, by name: a tiny CPU net, SimpleBaseline on torchvision's ResNets, and HRNet. All map
(B,3,H,W) to (B,J,H/s,W/s)."""
from contextlib import contextmanager

import torch
import torch.nn as nn

from ..errors import ModelError
from .hrnet import HRNet, load_hrnet_pretrained
from .resnet import DEPTHS, SimpleBaseline, load_torchvision_backbone
from .tiny import TinyPose

MODELS = {
    "tiny": lambda cfg, joints, stride: TinyPose(joints, cfg.width, stride),
    **{f"resnet{d}": (lambda d: lambda cfg, joints, stride: SimpleBaseline(d, joints, stride))(d)
       for d in DEPTHS},
    "hrnet_w32": lambda cfg, joints, stride: HRNet(32, joints),
    "hrnet_w48": lambda cfg, joints, stride: HRNet(48, joints),
}


def build_model(cfg, joints, stride):
    if cfg.name not in MODELS:
        raise ModelError(f"unknown model '{cfg.name}' (choose from {', '.join(MODELS)})")
    if cfg.name.startswith("hrnet") and stride != 4:
        raise ModelError(f"{cfg.name} predicts heatmaps at stride 4: set data.heatmap_stride=4")
    net = MODELS[cfg.name](cfg, joints, stride)
    if cfg.pretrained:
        if cfg.name.startswith("resnet"):
            load_torchvision_backbone(net.backbone, cfg.pretrained, int(cfg.name[len("resnet"):]))
        elif cfg.name.startswith("hrnet"):
            load_hrnet_pretrained(net, cfg.pretrained)
        else:
            raise ModelError("model.pretrained applies to resnet and hrnet models")
    return net


class Average(nn.Module):
    """The mean heatmap of several networks (the dual's ensemble, evaluated beside each net as the paper's code does)."""

    def __init__(self, nets):
        super().__init__()
        self.nets = nn.ModuleList(nets)

    def forward(self, x):
        return torch.stack([n(x).float() for n in self.nets]).mean(0)


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
