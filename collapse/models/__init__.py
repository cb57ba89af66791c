"""Pose networks, by name: a tiny CPU net and SimpleBaseline ResNets. All map (B,3,H,W) to (B,J,H/s,W/s)."""
import torch
import torch.nn as nn

from .resnet import SimpleBaseline, load_torchvision_backbone
from .tiny import TinyPose

MODELS = {
    "tiny": lambda cfg, joints, stride: TinyPose(joints, cfg.width, stride),
    **{f"resnet{d}": (lambda d: lambda cfg, joints, stride: SimpleBaseline(d, joints, stride))(d)
       for d in (18, 34, 50, 101, 152)},
}


class ModelError(ValueError):
    pass


def build_model(cfg, joints, stride):
    if cfg.name not in MODELS:
        raise ModelError(f"unknown model '{cfg.name}' (choose from {', '.join(MODELS)})")
    net = MODELS[cfg.name](cfg, joints, stride)
    if cfg.pretrained:
        if not cfg.name.startswith("resnet"):
            raise ModelError("model.pretrained applies to resnet models only")
        load_torchvision_backbone(net.backbone, cfg.pretrained)
    return net


class Average(nn.Module):
    """The mean heatmap of several networks (the dual's ensemble, evaluated beside each net as the paper's code does)."""

    def __init__(self, nets):
        super().__init__()
        self.nets = nn.ModuleList(nets)

    def forward(self, x):
        return torch.stack([n(x).float() for n in self.nets]).mean(0)
