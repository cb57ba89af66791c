"""SimpleBaseline: torchvision's ResNet (without its pooling and classifier) and three deconvolutions.

The backbone is `torchvision.models.resnet{18,34,50,101,152}` itself, cut after layer4 by torchvision's
IntermediateLayerGetter, so its state dict is torchvision's (minus fc) and any torchvision checkpoint
loads: a file, a URL, or a torchvision weights name such as IMAGENET1K_V1 (downloaded by torchvision
into its cache where a network is reachable)."""
import contextlib
import io
import os

import torch
import torch.nn as nn
import torchvision
from torchvision.models._utils import IntermediateLayerGetter

from ..errors import ModelError



def resnet_backbone(depth):
    """torchvision's resnet{depth}, randomly initialised by torchvision, returning {'out': layer4's map}."""
    net = getattr(torchvision.models, f"resnet{depth}")(weights=None)
    backbone = IntermediateLayerGetter(net, return_layers={"layer4": "out"})
    backbone.out_channels = net.fc.in_features
    return backbone


class SimpleBaseline(nn.Module):
    """ResNet + three 4x4 stride-2 deconvolutions (256 channels) + 1x1 conv: heatmaps at stride 4."""

    def __init__(self, depth=18, joints=17, stride=4, deconv=256):
        super().__init__()
        if stride != 4:
            raise ModelError("SimpleBaseline predicts at stride 4: set data.heatmap_stride=4")
        self.backbone = resnet_backbone(depth)
        layers, c = [], self.backbone.out_channels
        for _ in range(3):
            layers += [nn.ConvTranspose2d(c, deconv, 4, 2, 1, bias=False), nn.BatchNorm2d(deconv), nn.ReLU(inplace=True)]
            c = deconv
        self.deconv = nn.Sequential(*layers)
        self.head = nn.Conv2d(c, joints, 1)
        for m in self.deconv.modules():
            if isinstance(m, nn.ConvTranspose2d):
                nn.init.normal_(m.weight, std=0.001)
        nn.init.normal_(self.head.weight, std=0.001)
        nn.init.zeros_(self.head.bias)

    def forward(self, x):
        x = x.contiguous(memory_format=torch.channels_last)  # the nets are kept channels_last (faster convs)
        return self.head(self.deconv(self.backbone(x)["out"])).contiguous()  # NCHW heatmaps, like the targets


def read_state(source, depth=None):
    """A state dict from a file, a URL (torch.hub's cache), or a torchvision weights name of resnet{depth}."""
    if os.path.isfile(source):
        state = torch.load(source, map_location="cpu", weights_only=True)
    elif "://" in source:
        state = torch.hub.load_state_dict_from_url(source, map_location="cpu")
    elif depth is not None and source.replace("_", "").isalnum() and source.isupper():
        try:
            weights = torchvision.models.get_weight(f"ResNet{depth}_Weights.{source}")
        except (ValueError, KeyError, AttributeError):
            raise ModelError(f"torchvision has no weights '{source}' for resnet{depth}")
        try:
            with contextlib.redirect_stdout(io.StringIO()):  # torch.hub prints "Downloading: ..." first
                state = weights.get_state_dict(progress=False)
        except OSError as e:  # URLError is an OSError: no network here
            raise ModelError(f"cannot download torchvision's {source} weights for resnet{depth} ({e}); "
                             "give model.pretrained a weights file instead")
    else:
        raise FileNotFoundError(f"pretrained weights not found: {source}")
    return state.get("state_dict", state) if isinstance(state, dict) else state


def load_torchvision_backbone(backbone, source, depth=None):
    """Load a torchvision ResNet state dict (file, URL or weights name) into `backbone`; `fc.*` is dropped."""
    state = {k: v for k, v in read_state(source, depth).items() if not k.startswith("fc.")}
    try:
        backbone.load_state_dict(state, strict=True)
    except RuntimeError as e:
        raise ModelError(f"{source} does not hold this ResNet's weights ({str(e).splitlines()[0][:200]})")
    return backbone
