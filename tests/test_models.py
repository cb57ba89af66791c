"""The SimpleBaseline backbone is torchvision's ResNet, so torchvision's checkpoints load; HRNet has the
official layout."""
import pytest
import torch
import torchvision

from collapse.config import ModelConfig
from collapse.models import ModelError, TinyPose, build_model
from collapse.models.resnet import SimpleBaseline, load_torchvision_backbone


@pytest.mark.parametrize("depth", [18, 50])
def test_backbone_state_dict_is_torchvision_resnet_without_fc(depth):
    ours = SimpleBaseline(depth, 17, 4).backbone.state_dict()
    theirs = getattr(torchvision.models, f"resnet{depth}")().state_dict()
    assert {k: v.shape for k, v in ours.items()} == {k: v.shape for k, v in theirs.items() if not k.startswith("fc.")}


def test_a_weights_file_saved_from_torchvision_loads(tmp_path):
    src = torchvision.models.resnet18()
    torch.save(src.state_dict(), tmp_path / "resnet18.pth")  # fc included, as torchvision's files are
    net = build_model(ModelConfig(name="resnet18", pretrained=str(tmp_path / "resnet18.pth")), 17, 4)
    assert torch.equal(net.backbone.layer3[1].conv2.weight, src.layer3[1].conv2.weight)
    assert torch.equal(net.backbone.bn1.running_var, src.bn1.running_var)
    # and the same features: the backbone is torchvision's network up to layer4
    x = torch.randn(1, 3, 64, 48)
    src.eval(), net.eval()
    with torch.no_grad():
        body = torch.nn.Sequential(*list(src.children())[:-2])
        assert torch.allclose(net.backbone(x)["out"], body(x), atol=1e-6)
    with pytest.raises(ModelError, match="does not hold this ResNet"):
        load_torchvision_backbone(SimpleBaseline(50, 17, 4).backbone, str(tmp_path / "resnet18.pth"))
    with pytest.raises(ModelError, match="no weights 'IMAGENET9K_V9'"):
        build_model(ModelConfig(name="resnet18", pretrained="IMAGENET9K_V9"), 17, 4)


def test_output_shapes():
    assert SimpleBaseline(18, 17, 4)(torch.randn(2, 3, 128, 96)).shape == (2, 17, 32, 24)
    x = torch.randn(2, 3, 64, 48)
    assert TinyPose(17, 16, 2)(x).shape == (2, 17, 32, 24)


def test_hrnet_has_the_official_layout_and_sizes(tmp_path):
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
