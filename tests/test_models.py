"""The ResNet backbone has torchvision's state-dict layout, so its ImageNet checkpoints load."""
import pytest
import torch

from collapse.models import SimpleBaseline, TinyPose, load_torchvision_backbone
from collapse.models.resnet import ResNet

# published parameter counts of torchvision's resnet18 / resnet50, including the 1000-way fc
TORCHVISION_PARAMS = {18: 11_689_512, 50: 25_557_032}


def torchvision_layout(depth):
    """Expected keys and shapes, written from torchvision's published architecture (no import)."""
    blocks = {18: (2, 2, 2, 2), 50: (3, 4, 6, 3)}[depth]
    bottleneck = depth >= 50
    exp = 4 if bottleneck else 1
    keys = {}

    def bn(name, c):
        keys.update({f"{name}.weight": (c,), f"{name}.bias": (c,), f"{name}.running_mean": (c,),
                     f"{name}.running_var": (c,), f"{name}.num_batches_tracked": ()})

    keys["conv1.weight"] = (64, 3, 7, 7)
    bn("bn1", 64)
    cin = 64
    for li, (n, planes) in enumerate(zip(blocks, (64, 128, 256, 512))):
        for b in range(n):
            p = f"layer{li + 1}.{b}"
            if bottleneck:
                keys[f"{p}.conv1.weight"] = (planes, cin, 1, 1); bn(f"{p}.bn1", planes)
                keys[f"{p}.conv2.weight"] = (planes, planes, 3, 3); bn(f"{p}.bn2", planes)
                keys[f"{p}.conv3.weight"] = (planes * 4, planes, 1, 1); bn(f"{p}.bn3", planes * 4)
            else:
                keys[f"{p}.conv1.weight"] = (planes, cin, 3, 3); bn(f"{p}.bn1", planes)
                keys[f"{p}.conv2.weight"] = (planes, planes, 3, 3); bn(f"{p}.bn2", planes)
            if b == 0 and (li > 0 or cin != planes * exp):
                keys[f"{p}.downsample.0.weight"] = (planes * exp, cin, 1, 1); bn(f"{p}.downsample.1", planes * exp)
            cin = planes * exp
    return keys


@pytest.mark.parametrize("depth", [18, 50])
def test_backbone_state_dict_equals_torchvision_layout(depth):
    net = ResNet(depth)
    got = {k: tuple(v.shape) for k, v in net.state_dict().items()}
    assert got == torchvision_layout(depth)
    fc = net.out_channels * 1000 + 1000
    assert sum(p.numel() for p in net.parameters()) + fc == TORCHVISION_PARAMS[depth]


def test_torchvision_checkpoint_loads_from_file(tmp_path):
    src = ResNet(18)
    state = dict(src.state_dict())
    state["fc.weight"], state["fc.bias"] = torch.zeros(1000, 512), torch.zeros(1000)
    torch.save(state, tmp_path / "resnet18.pth")
    net = SimpleBaseline(18, 17, 4)
    load_torchvision_backbone(net.backbone, str(tmp_path / "resnet18.pth"))
    assert torch.equal(net.backbone.layer3[1].conv2.weight, src.layer3[1].conv2.weight)


def test_output_shapes():
    assert SimpleBaseline(18, 17, 4)(torch.randn(2, 3, 128, 96)).shape == (2, 17, 32, 24)
    x = torch.randn(2, 3, 64, 48)
    assert TinyPose(17, 16, 2)(x).shape == (2, 17, 32, 24)
