"""Every registered backbone: parameter counts of docs/protocol.md section 2, the MEMO split, shapes."""
import pytest
import torch

from methods.backbones import BACKBONES, FAMILIES, build_backbone, input_kind, parameter_count

# (total, generalized, specialized) from docs/protocol.md section 2; the ImageNet ones match torchvision.
EXPECTED = {
    "resnet32": (463_504, 112_016, 351_488),
    "resnet26": (366_288, 88_784, 277_504),
    "resnet20": (269_072, 65_552, 203_520),
    "resnet14": (171_856, 42_320, 129_536),
    "conv2": (38_976, 1_920, 37_056),
    "resnet18": (11_176_512, 2_782_784, 8_393_728),
    # torchvision resnet34 / resnet50 (21,797,672 / 25,557,032) minus their 1000-class fc layer (513,000 / 2,049,000)
    "resnet34": (21_284_672, None, None),
    "resnet50": (23_508_032, None, None),
}


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_parameter_counts_match_protocol(name):
    with torch.device("meta"):
        backbone = build_backbone(name)
    total, generalized, specialized = EXPECTED[name]
    assert parameter_count(backbone) == total
    if generalized is not None:
        assert parameter_count(backbone.generalized) == generalized
        assert parameter_count(backbone.specialized) == specialized


def test_603_exemplars():
    """The paper's title: one resnet32 weighs as much as 603 CIFAR images."""
    with torch.device("meta"):
        params = parameter_count(build_backbone("resnet32"))
    assert params * 4 // 3072 == 603


CIFAR_BACKBONES = [n for n in BACKBONES if input_kind(n) == "cifar"]


def test_the_cifar_backbones_include_the_protocols_family():
    assert set(FAMILIES["cifar"]) <= set(CIFAR_BACKBONES)  # the forward test below runs over a non-empty list


@pytest.mark.parametrize("name", CIFAR_BACKBONES)
def test_cifar_backbones_forward(name):
    torch.manual_seed(0)
    backbone = build_backbone(name)
    features = backbone(torch.randn(2, 3, 32, 32))
    assert features.shape == (2, backbone.out_dim)
    split = backbone.specialized(backbone.generalized(torch.randn(2, 3, 32, 32)))
    assert split.shape[1] == backbone.out_dim


@pytest.mark.parametrize("name", ["conv4", "resnet10"])
def test_imagenet_backbones_forward(name):
    backbone = build_backbone(name).eval()
    assert backbone(torch.randn(1, 3, 224, 224)).shape == (1, backbone.out_dim)


def test_families_are_registered_and_ordered_by_size():
    assert sorted(FAMILIES) == ["cifar", "imagenet"]
    for members in FAMILIES.values():
        with torch.device("meta"):
            sizes = [parameter_count(build_backbone(m)) for m in members]
        assert len(sizes) >= 3 and sizes == sorted(sizes)


def test_unknown_backbone_suggests_the_closest_name():
    with pytest.raises(KeyError, match="resnet32"):
        build_backbone("resnet23")
