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


def test_hrnet_has_the_official_layout_and_sizes(tmp_path):
    import pytest
    from collapse.config import ModelConfig
    from collapse.models import ModelError, build_model
    from collapse.models.hrnet import HRNet, load_hrnet_pretrained
    counts = {32: 28.5e6, 48: 63.6e6}  # the HRNet paper's pose model sizes (256x192)
    for w, n in counts.items():
        assert abs(sum(p.numel() for p in HRNet(w).parameters()) - n) < 0.001 * n + 1e5
    net = build_model(ModelConfig(name="hrnet_w32"), 17, 4)
    keys = net.state_dict()
    for k in ("conv1.weight", "bn2.running_var", "layer1.0.downsample.0.weight", "transition1.0.0.weight",
              "transition1.1.0.0.weight", "transition3.3.0.0.weight", "stage2.0.branches.1.3.conv2.weight",
              "stage3.3.fuse_layers.2.0.1.0.weight", "stage4.2.fuse_layers.0.3.0.weight", "final_layer.bias"):
        assert k in keys, k
    assert not any(k.startswith("stage4.2.fuse_layers.1") for k in keys)  # the last module keeps one output
    assert keys["final_layer.weight"].shape == (17, 32, 1, 1)
    with torch.no_grad():
        assert net.eval()(torch.randn(1, 3, 128, 96)).shape == (1, 17, 32, 24)
    with pytest.raises(ModelError, match="stride 4"):
        build_model(ModelConfig(name="hrnet_w32"), 17, 2)
    # an ImageNet-style checkpoint: the matching tensors load by name, the classifier's extras are skipped
    other = HRNet(32)
    state = {k: v + 1 if v.is_floating_point() else v for k, v in other.state_dict().items() if k.startswith(("conv1", "stage2"))}
    state["incre_modules.0.0.conv1.weight"] = torch.zeros(3)
    torch.save(state, tmp_path / "hrnet_w32.pth")
    fresh = HRNet(32)
    assert load_hrnet_pretrained(fresh, str(tmp_path / "hrnet_w32.pth")) == len(state) - 1
    assert torch.equal(fresh.state_dict()["conv1.weight"], state["conv1.weight"])
