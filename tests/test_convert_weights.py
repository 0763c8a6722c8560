"""Hand-off: torchvision -> detectron2 names, classifier -> detector .pkl, identical features."""
import os
import pickle

import pytest
import torch
import torchvision
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.modeling import build_model

from sact_det.classification.checkpoint import CheckpointError, ClassifierCheckpointer, load_classifier_weights
from sact_det.classification.torchvision_names import torchvision_to_d2
from sact_det.modeling.meta_arch.classifier import build_classifier
from tests.helpers import disable_halting, randomize_bn, tiny_cfg
from tests.test_classification_model import imagenet_cfg, one_thread  # noqa: F401  (autouse fixture)
from tools import convert_weights



def torchvision_resnet(depth: int, num_classes: int = 10) -> torch.nn.Module:
    torch.manual_seed(depth)
    tv = getattr(torchvision.models, f"resnet{depth}")(weights=None, num_classes=num_classes)
    randomize_bn(tv, seed=depth)
    return tv.eval()


def tv_res4(tv: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    x = tv.maxpool(tv.relu(tv.bn1(tv.conv1(x))))
    return tv.layer3(tv.layer2(tv.layer1(x)))


def activate_halting(model: torch.nn.Module, seed: int = 0) -> None:
    """Random halting weights so that masks differ between positions and images."""
    g = torch.Generator().manual_seed(seed)
    for name, p in model.named_parameters():
        if ".halting." in name and name.endswith("conv.weight"):
            p.data.copy_(torch.randn(p.shape, generator=g) * 0.3)
        if ".halting." in name and name.endswith("local_conv.bias"):
            p.data.fill_(-0.5)


def test_torchvision_names():
    names = torchvision_to_d2(torchvision_resnet(50).state_dict())
    for key in ("stem.conv1.weight", "stem.conv1.norm.running_var", "res2.0.conv1.norm.weight", "res2.0.conv3.weight",
                "res2.0.shortcut.weight", "res2.0.shortcut.norm.bias", "res5.2.conv2.norm.running_mean",
                "linear.weight", "linear.bias"):
        assert key in names
    assert not any("num_batches_tracked" in k or "layer" in k or "bn" in k for k in names)
    with pytest.raises(KeyError, match="unexpected torchvision ResNet parameter 'avgpool.x'"):
        torchvision_to_d2({"conv1.weight": torch.zeros(1), "layer1.0.conv1.weight": torch.zeros(1),
                           "avgpool.x": torch.zeros(1)})


@pytest.mark.parametrize("depth", [18, 50])
def test_torchvision_weights_give_torchvision_logits(tmp_path, depth):
    tv = torchvision_resnet(depth)
    path = str(tmp_path / "tv.pth")
    torch.save(tv.state_dict(), path)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        expected = tv(x)
    for mode in (("none", "sact") if depth == 18 else ("sact",)):
        clf = build_classifier(imagenet_cfg(depth, mode), 10)
        info = load_classifier_weights(clf, path)
        assert all(".halting." in k for k in info["new"]) and not info["unused"]
        assert (len(info["new"]) > 0) == (mode == "sact")
        disable_halting(clf)
        with torch.no_grad():
            assert torch.allclose(clf.eval()(x), expected, rtol=1e-5, atol=1e-5)
    if depth != 18:
        return
    # the converted .pkl loads into the classifier as well
    pkl = str(tmp_path / "tv.pkl")
    assert convert_weights.main([path, pkl]) == 0
    clf = build_classifier(imagenet_cfg(depth, "none"), 10)
    load_classifier_weights(clf, pkl)
    with torch.no_grad():
        assert torch.allclose(clf.eval()(x), expected, rtol=1e-5, atol=1e-5)


def detector(depth: int, stride_in_1x1: bool = False):
    cfg = tiny_cfg(depth=depth)
    cfg.MODEL.RESNETS.STRIDE_IN_1X1 = stride_in_1x1
    torch.manual_seed(1)
    return build_model(cfg).eval()


def test_torchvision_pkl_in_detector_gives_torchvision_res4(tmp_path):
    tv = torchvision_resnet(50)
    path, pkl = str(tmp_path / "tv.pth"), str(tmp_path / "tv.pkl")
    torch.save(tv.state_dict(), path)
    convert_weights.main([path, pkl])
    with open(pkl, "rb") as f:
        data = pickle.load(f)
    assert data["sact_det"]["detector_config"]["MODEL.RESNETS.STRIDE_IN_1X1"] is False
    assert "STRIDE_IN_1X1 False" in data["sact_det"]["notes"]
    x = torch.randn(1, 3, 64, 96)
    with torch.no_grad():
        expected = tv_res4(tv, x)
        for stride_in_1x1, same in ((False, True), (True, False)):
            model = detector(50, stride_in_1x1)
            DetectionCheckpointer(model).load(pkl)
            disable_halting(model)
            got = model.backbone(x)["res4"]
            assert torch.allclose(got, expected, rtol=1e-4, atol=1e-4) == same
    assert torch.equal(model.roi_heads.res5[2].conv3.weight, tv.layer4[2].conv3.weight)


@pytest.mark.parametrize("depth", [18, 50])
def test_exported_classifier_gives_identical_res4_in_detector(tmp_path, depth):
    cfg = imagenet_cfg(depth, "sact")
    torch.manual_seed(0)
    clf = build_classifier(cfg, 6)
    randomize_bn(clf)
    activate_halting(clf)
    ClassifierCheckpointer(clf, str(tmp_path), {"config": cfg.dump(), "class_names": list("abcdef")}).save(
        "model_final", iteration=7)
    pkl = str(tmp_path / "sact.pkl")
    assert convert_weights.main([str(tmp_path / "model_final.pth"), pkl]) == 0
    with open(pkl, "rb") as f:
        data = pickle.load(f)
    names = data["model"]
    assert "stem.conv1.weight" in names and "res2.0.conv1.norm.weight" in names
    assert "res3.0.halting.local_conv.weight" in names and "linear.weight" in names
    assert not any(k.startswith("backbone.") for k in names)
    assert data["sact_det"]["detector_config"]["MODEL.SACT.STAGES"] == ["res2", "res3", "res4"]

    model = detector(depth)
    DetectionCheckpointer(model).load(pkl)
    x = torch.randn(2, 3, 64, 80)
    clf.eval()
    with torch.no_grad():
        _, feats = clf(x, return_features=True)
        ponder_clf = {k: v.ponder_cost.clone() for k, v in clf.ponders.items()}
        res4 = model.backbone(x)["res4"]
    assert torch.equal(res4, feats["res4"])
    for stage in ("res2", "res3", "res4"):
        got = model.backbone.last_ponder[stage].ponder_cost
        assert torch.equal(got, ponder_clf[stage])
    rho = ponder_clf["res3"]
    assert rho.min() < rho.max()  # halting really varied over positions
    if depth == 50:  # detectron2's Res5ROIHeads always builds bottleneck units (no R18 box head)
        assert torch.equal(model.roi_heads.res5[0].conv1.weight, clf.backbone.res5[0].conv1.weight)


def test_class_count_mismatch_names_the_file(tmp_path):
    tv = torchvision_resnet(18, num_classes=10)
    path = str(tmp_path / "ten_classes.pth")
    torch.save(tv.state_dict(), path)
    clf = build_classifier(imagenet_cfg(18, "none"), 7)
    with pytest.raises(CheckpointError, match=r"ten_classes.pth has a 10-class classifier.*7 classes"):
        load_classifier_weights(clf, path)
    load_classifier_weights(clf, path, reset_fc=True)  # explicit opt-in: new fc
    assert torch.equal(clf.backbone.stem.conv1.weight, tv.conv1.weight)


def test_wrong_architecture_and_corrupt_file(tmp_path):
    path = str(tmp_path / "r18.pth")
    torch.save(torchvision_resnet(18).state_dict(), path)
    with pytest.raises(CheckpointError, match="r18.pth"):
        load_classifier_weights(build_classifier(imagenet_cfg(50, "none"), 10), path)
    bad = tmp_path / "broken.pkl"
    bad.write_bytes(b"not a pickle")
    with pytest.raises(CheckpointError, match="broken.pkl"):
        load_classifier_weights(build_classifier(imagenet_cfg(18, "none"), 10), str(bad))
    with pytest.raises(CheckpointError, match="does not exist"):
        load_classifier_weights(build_classifier(imagenet_cfg(18, "none"), 10), os.path.join(tmp_path, "nope.pth"))


def test_detectron2_converted_torchvision_pkl_loads(tmp_path):
    """The layout of detectron2's tools/convert-torchvision-to-d2.py (numpy arrays, fc -> stem.fc)."""
    tv = torchvision_resnet(18)
    model = {}
    for k, v in tv.state_dict().items():
        if "num_batches_tracked" in k:
            continue
        new = k if "layer" in k else "stem." + k
        for t in (1, 2, 3, 4):
            new = new.replace(f"layer{t}", f"res{t + 1}")
        for t in (1, 2, 3):
            new = new.replace(f"bn{t}", f"conv{t}.norm")
        new = new.replace("downsample.0", "shortcut").replace("downsample.1", "shortcut.norm")
        model[new] = v.numpy()
    path = tmp_path / "r18_d2.pkl"
    with open(path, "wb") as f:
        pickle.dump({"model": model, "__author__": "torchvision", "matching_heuristics": True}, f)
    clf = build_classifier(imagenet_cfg(18, "none"), 10)
    load_classifier_weights(clf, str(path))
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.allclose(clf.eval()(x), tv(x), rtol=1e-5, atol=1e-5)
