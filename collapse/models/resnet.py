"""ResNet backbone with torchvision's parameter names and shapes, and the SimpleBaseline deconv head.

torchvision is not imported: its ImageNet checkpoints (`resnet18-f37072fd.pth` etc.) load into
`SimpleBaseline.backbone` from a file or URL with `load_torchvision_backbone`.
"""
import os

import torch
import torch.nn as nn

LAYERS = {18: (2, 2, 2, 2), 34: (3, 4, 6, 3), 50: (3, 4, 6, 3), 101: (3, 4, 23, 3), 152: (3, 8, 36, 3)}


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, cin, planes, stride=1, downsample=None):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x):
        idt = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        return self.relu(self.bn2(self.conv2(out)) + idt)


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, cin, planes, stride=1, downsample=None):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride, 1, bias=False)  # stride on the 3x3 (torchvision v1.5)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, planes * 4, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * 4)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x):
        idt = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        return self.relu(self.bn3(self.conv3(out)) + idt)


class ResNet(nn.Module):
    """torchvision ResNet without avgpool/fc: returns the stride-32 feature map."""

    def __init__(self, depth):
        super().__init__()
        block = BasicBlock if depth < 50 else Bottleneck
        self.conv1 = nn.Conv2d(3, 64, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        self.inplanes = 64
        for i, (n, planes) in enumerate(zip(LAYERS[depth], (64, 128, 256, 512))):
            setattr(self, f"layer{i + 1}", self._layer(block, planes, n, 1 if i == 0 else 2))
        self.out_channels = self.inplanes
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def _layer(self, block, planes, n, stride):
        down = None
        if stride != 1 or self.inplanes != planes * block.expansion:
            down = nn.Sequential(nn.Conv2d(self.inplanes, planes * block.expansion, 1, stride, bias=False),
                                 nn.BatchNorm2d(planes * block.expansion))
        layers = [block(self.inplanes, planes, stride, down)]
        self.inplanes = planes * block.expansion
        layers += [block(self.inplanes, planes) for _ in range(1, n)]
        return nn.Sequential(*layers)

    def forward(self, x):
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        return self.layer4(self.layer3(self.layer2(self.layer1(x))))


class SimpleBaseline(nn.Module):
    """ResNet + three 4x4 stride-2 deconvolutions (256 channels) + 1x1 conv: heatmaps at stride 4."""

    def __init__(self, depth=18, joints=17, stride=4, deconv=256):
        super().__init__()
        if stride != 4:
            raise ValueError("SimpleBaseline predicts at stride 4: set data.heatmap_stride=4")
        self.backbone = ResNet(depth)
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
        return self.head(self.deconv(self.backbone(x))).contiguous()  # NCHW heatmaps, like the targets


def _read_state(source):
    """A state dict from a file path or a URL (through torch.hub's cache)."""
    if os.path.isfile(source):
        state = torch.load(source, map_location="cpu", weights_only=True)
    elif "://" in source:
        state = torch.hub.load_state_dict_from_url(source, map_location="cpu")
    else:
        raise FileNotFoundError(f"pretrained weights not found: {source}")
    return state.get("state_dict", state) if isinstance(state, dict) else state


def load_torchvision_backbone(backbone, source):
    """Load a torchvision ResNet state dict (file path or URL) into `backbone`; `fc.*` is dropped."""
    state = {k: v for k, v in _read_state(source).items() if not k.startswith("fc.")}
    backbone.load_state_dict(state, strict=True)
    return backbone
