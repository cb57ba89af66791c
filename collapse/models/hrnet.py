"""HRNet-W32/W48 for pose (Sun et al., CVPR 2019), with the parameter names and shapes of the official
pose_hrnet (conv1, bn1, conv2, bn2, layer1, transition1-3, stage2-4, final_layer), so its ImageNet and
COCO checkpoints load by name. Output: heatmaps at stride 4 from the highest-resolution branch."""
import torch
import torch.nn as nn

from ..errors import ModelError
from torchvision.models.resnet import BasicBlock, Bottleneck

from .resnet import read_state

BN_MOMENTUM = 0.1


def _conv_bn(cin, cout, k, stride, relu=True):
    layers = [nn.Conv2d(cin, cout, k, stride, k // 2, bias=False), nn.BatchNorm2d(cout, momentum=BN_MOMENTUM)]
    return nn.Sequential(*layers, nn.ReLU(inplace=True)) if relu else nn.Sequential(*layers)


class HighResolutionModule(nn.Module):
    """Parallel branches of basic blocks, then every branch fused into every (kept) output resolution."""

    def __init__(self, channels, blocks, multi_scale_output=True):
        super().__init__()
        n = len(channels)
        self.branches = nn.ModuleList(
            nn.Sequential(*[BasicBlock(c, c) for _ in range(blocks)]) for c in channels)
        fuse = []
        for i in range(n if multi_scale_output else 1):
            row = []
            for j in range(n):
                if j > i:   # lower resolution: 1x1 conv, BN, nearest upsampling
                    row.append(nn.Sequential(nn.Conv2d(channels[j], channels[i], 1, 1, 0, bias=False),
                                             nn.BatchNorm2d(channels[i], momentum=BN_MOMENTUM),
                                             nn.Upsample(scale_factor=2 ** (j - i), mode="nearest")))
                elif j == i:
                    row.append(None)
                else:       # higher resolution: strided 3x3 convs, the last without ReLU
                    steps = [_conv_bn(channels[j], channels[j], 3, 2, relu=True) for _ in range(i - j - 1)]
                    steps.append(_conv_bn(channels[j], channels[i], 3, 2, relu=False))
                    row.append(nn.Sequential(*steps))
            fuse.append(nn.ModuleList(row))
        self.fuse_layers = nn.ModuleList(fuse)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, xs):
        xs = [branch(x) for branch, x in zip(self.branches, xs)]
        out = []
        for i, row in enumerate(self.fuse_layers):
            y = xs[0] if i == 0 else row[0](xs[0])
            for j in range(1, len(xs)):
                y = y + (xs[j] if i == j else row[j](xs[j]))
            out.append(self.relu(y))
        return out


def _transition(pre, cur):
    """The official transition layer: adapt kept branches' widths, add new branches by strided convs."""
    layers = []
    for i, c in enumerate(cur):
        if i < len(pre):
            layers.append(_conv_bn(pre[i], c, 3, 1) if pre[i] != c else None)
        else:
            convs = [_conv_bn(pre[-1], c if k == i - len(pre) else pre[-1], 3, 2) for k in range(i + 1 - len(pre))]
            layers.append(nn.Sequential(*convs))
    return nn.ModuleList(layers)


class HRNet(nn.Module):
    # (modules, channels) of stages 2-4; every branch has 4 basic blocks (the official w32/w48 configs)
    STAGES = ((1, 2), (4, 3), (3, 4))

    def __init__(self, width=32, joints=17):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, 3, 2, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(64, momentum=BN_MOMENTUM)
        self.conv2 = nn.Conv2d(64, 64, 3, 2, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(64, momentum=BN_MOMENTUM)
        self.relu = nn.ReLU(inplace=True)
        down = nn.Sequential(nn.Conv2d(64, 256, 1, 1, bias=False), nn.BatchNorm2d(256, momentum=BN_MOMENTUM))
        self.layer1 = nn.Sequential(Bottleneck(64, 64, 1, down), *[Bottleneck(256, 64) for _ in range(3)])
        pre = [256]
        for s, (modules, branches) in enumerate(self.STAGES, start=2):
            cur = [width * 2 ** b for b in range(branches)]
            setattr(self, f"transition{s - 1}", _transition(pre, cur))
            last = s == 4
            setattr(self, f"stage{s}", nn.Sequential(*[
                HighResolutionModule(cur, 4, multi_scale_output=not (last and m == modules - 1))
                for m in range(modules)]))
            pre = cur
        self.final_layer = nn.Conv2d(width, joints, 1, 1, 0)
        for m in self.modules():  # the official initialisation
            if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
                nn.init.normal_(m.weight, std=0.001)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    @property
    def head(self):
        return self.final_layer

    def forward(self, x):
        x = x.contiguous(memory_format=torch.channels_last)
        x = self.relu(self.bn2(self.conv2(self.relu(self.bn1(self.conv1(x))))))
        xs = [self.layer1(x)]
        for s in (2, 3, 4):
            transition = getattr(self, f"transition{s - 1}")
            xs = [t(xs[i] if i < len(xs) else xs[-1]) if t is not None else xs[i] for i, t in enumerate(transition)]
            xs = getattr(self, f"stage{s}")(xs)
        return self.final_layer(xs[0]).contiguous()  # NCHW heatmaps, like the targets


def load_hrnet_pretrained(net, source):
    """Load the matching tensors (by name and shape) of an HRNet checkpoint (ImageNet or pose) from a file
    or URL; returns the number loaded. The classification head's extra layers are skipped."""
    state = read_state(source)
    own = net.state_dict()
    found = {k: v for k, v in state.items() if k in own and own[k].shape == v.shape}
    if not found:
        raise ModelError(f"{source} holds no HRNet tensors of this model's names and shapes")
    net.load_state_dict(found, strict=False)
    return len(found)
