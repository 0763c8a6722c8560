"""Original SACT TF variables -> sact_det classifier / detector weights (sact_det.convert.original,
tools/convert_tf_checkpoint.py).

Expectations are independent of the converter: the name contract of docs/original_networks.md
written out by hand, TF layouts (HWIO, logits [1,1,C,K]) indexed element by element, the
architecture stated in each oracle model's summary.json, and the sact_det models built from the
printed config keys (strict load: every parameter and buffer gets a value).
"""
import importlib.util
import json
import pickle
import tarfile
from pathlib import Path

import numpy as np
import pytest

from sact_det.convert.original import (ConversionError, align_to_model, cfg_with, classifier_config, config_opts,
                                       convert_original, convert_tf_checkpoint, detector_config, is_bookkeeping,
                                       tf_to_sact_name)
from sact_det.convert.tf_checkpoint import read_tf_checkpoint

ORACLE = Path(__file__).resolve().parents[2] / "shared" / "oracle"
MODELS = ["cifar_resnet32_sact", "cifar_resnet32_act", "imagenet_small_sact", "imagenet_small_act",
          "imagenet_small_dense"]
needs_oracle = pytest.mark.skipif(not ORACLE.is_dir(), reason=f"oracle data {ORACLE} not present (outside this repo)")

REPO = Path(__file__).resolve().parents[1]


def _tool_main():
    spec = importlib.util.spec_from_file_location("convert_tf_checkpoint", REPO / "tools" / "convert_tf_checkpoint.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.main


NAMES = {  # docs/original_networks.md, by hand
    "resnet_v2/conv1/weights": "backbone.stem.conv1.weight",
    "resnet_v2/conv1/biases": "backbone.stem.conv1.bias",
    "resnet_v2/block1/unit_1/bottleneck_v2/preact/gamma": "backbone.res2.0.preact.weight",
    "resnet_v2/block2/unit_3/bottleneck_v2/preact/moving_variance": "backbone.res3.2.preact.running_var",
    "resnet_v2/block1/unit_1/bottleneck_v2/shortcut/weights": "backbone.res2.0.shortcut.weight",
    "resnet_v2/block1/unit_1/bottleneck_v2/shortcut/biases": "backbone.res2.0.shortcut.bias",
    "resnet_v2/block3/unit_23/bottleneck_v2/conv1/weights": "backbone.res4.22.conv1.weight",
    "resnet_v2/block3/unit_23/bottleneck_v2/conv1/BatchNorm/beta": "backbone.res4.22.conv1.norm.bias",
    "resnet_v2/block4/unit_2/bottleneck_v2/conv2/BatchNorm/moving_mean": "backbone.res5.1.conv2.norm.running_mean",
    "resnet_v2/block4/unit_2/bottleneck_v2/conv3/weights": "backbone.res5.1.conv3.weight",
    "resnet_v2/block4/unit_2/bottleneck_v2/conv3/biases": "backbone.res5.1.conv3.bias",
    "resnet_v2/block2/unit_1/halting_proba/local_bn/gamma": "backbone.res3.0.halting.local_norm.weight",
    "resnet_v2/block2/unit_1/halting_proba/local_conv/biases": "backbone.res3.0.halting.local_conv.bias",
    "resnet_v2/block2/unit_1/halting_proba/global_bn/moving_mean": "backbone.res3.0.halting.global_norm.running_mean",
    "resnet_v2/block2/unit_1/halting_proba/global_conv/weights": "backbone.res3.0.halting.global_conv.weight",
    "resnet_v2/block2/unit_1/halting_proba/global_conv/biases": "backbone.res3.0.halting.global_conv.bias",
    "resnet_v2/postnorm/beta": "postnorm.bias",
    "resnet_v2/logits/weights": "linear.weight",
    "resnet_v2/logits/biases": "linear.bias",
    "resnet_residual/Conv/weights": "backbone.stem.conv1.weight",
    "resnet_residual/block_1/unit_1/residual/preact/beta": "backbone.res2.0.preact.bias",
    "resnet_residual/block_3/unit_5/residual/conv1/weights": "backbone.res4.4.conv1.weight",
    "resnet_residual/block_3/unit_5/residual/conv1/BatchNorm/moving_variance": "backbone.res4.4.conv1.norm.running_var",
    "resnet_residual/block_2/unit_2/residual/conv2/biases": "backbone.res3.1.conv2.bias",
    "resnet_residual/block_2/unit_2/halting_proba/local_conv/weights": "backbone.res3.1.halting.local_conv.weight",
    "resnet_residual/BatchNorm/gamma": "final_norm.weight",
    "resnet_residual/logits/weights": "linear.weight",
}


def test_names_by_hand():
    for tf, expected in NAMES.items():
        placed = tf_to_sact_name(tf)
        assert placed is not None and placed[1] == expected, tf
        assert placed[0] == ("imagenet" if tf.startswith("resnet_v2/") else "cifar")
    for bad in ["resnet_v2/conv1/kernel", "resnet_v2/block1/unit_1/bottleneck_v2/conv4/weights",
                "resnet_residual/block_1/unit_1/residual/shortcut/weights", "vgg/conv1/weights",
                "resnet_v2/block1/unit_1/bottleneck_v2/preact/weights",
                "resnet_v2/block0/unit_1/bottleneck_v2/conv1/weights"]:
        assert tf_to_sact_name(bad) is None, bad
    for tf in ["global_step", "resnet_v2/conv1/weights/Momentum", "resnet_v2/logits/biases/ExponentialMovingAverage",
               "resnet_v2/conv1/weights/Adam_1", "beta1_power"]:
        assert is_bookkeeping(tf), tf
    assert not is_bookkeeping("resnet_v2/block1/unit_1/bottleneck_v2/conv1/BatchNorm/moving_mean")


def _tiny_imagenet_vars(rng: np.random.RandomState, mode: str = "sact"):
    """A small v2 net in TF layouts, units [2,1,1,2]: blocks 1 and 4 have one halting branch each."""
    v = {"resnet_v2/conv1/weights": rng.randn(7, 7, 3, 64), "resnet_v2/conv1/biases": rng.randn(64),
         "resnet_v2/logits/weights": rng.randn(1, 1, 32, 5), "resnet_v2/logits/biases": rng.randn(5)}
    for p in ("gamma", "beta", "moving_mean", "moving_variance"):
        v[f"resnet_v2/postnorm/{p}"] = rng.rand(32)
    cin = 64
    for b, units in enumerate([2, 1, 1, 2], start=1):
        depth, neck = 4 * 2 ** (b - 1), 2 ** (b - 1)
        for u in range(1, units + 1):
            s = f"resnet_v2/block{b}/unit_{u}/bottleneck_v2"
            v[f"{s}/conv1/weights"] = rng.randn(1, 1, cin, neck)
            v[f"{s}/conv2/weights"] = rng.randn(3, 3, neck, neck)
            v[f"{s}/conv3/weights"], v[f"{s}/conv3/biases"] = rng.randn(1, 1, neck, depth), rng.randn(depth)
            if u == 1:
                v[f"{s}/shortcut/weights"], v[f"{s}/shortcut/biases"] = rng.randn(1, 1, cin, depth), rng.randn(depth)
            for p in ("gamma", "beta", "moving_mean", "moving_variance"):
                v[f"{s}/preact/{p}"] = rng.rand(cin)
                v[f"{s}/conv1/BatchNorm/{p}"] = rng.rand(neck)
                v[f"{s}/conv2/BatchNorm/{p}"] = rng.rand(neck)
            if u < units and mode != "none":
                h = f"resnet_v2/block{b}/unit_{u}/halting_proba"
                for p in ("gamma", "beta", "moving_mean", "moving_variance"):
                    v[f"{h}/global_bn/{p}"] = rng.rand(depth)
                v[f"{h}/global_conv/weights"] = rng.randn(1, 1, depth, 1)
                if mode == "sact":
                    for p in ("gamma", "beta", "moving_mean", "moving_variance"):
                        v[f"{h}/local_bn/{p}"] = rng.rand(depth)
                    v[f"{h}/local_conv/weights"], v[f"{h}/local_conv/biases"] = rng.randn(3, 3, depth, 1), rng.randn(1)
                else:
                    v[f"{h}/global_conv/biases"] = rng.randn(1)
            cin = depth
    return {k: np.asarray(a, np.float32) for k, a in v.items()}


def test_layouts_and_arch_of_a_synthetic_net():
    tf = _tiny_imagenet_vars(np.random.RandomState(0))
    tf["global_step"] = np.array(7, np.int64)
    tf["resnet_v2/conv1/weights/Momentum"] = np.zeros((7, 7, 3, 64), np.float32)
    c = convert_original(tf)
    assert c.ignored == ["global_step", "resnet_v2/conv1/weights/Momentum"]
    w_tf, w = tf["resnet_v2/block1/unit_1/bottleneck_v2/conv2/weights"], c.state_dict["backbone.res2.0.conv2.weight"]
    assert tuple(w.shape) == (1, 1, 3, 3)
    assert w[0, 0, 2, 1] == w_tf[2, 1, 0, 0]
    w_tf, w = tf["resnet_v2/conv1/weights"], c.state_dict["backbone.stem.conv1.weight"]
    assert tuple(w.shape) == (64, 3, 7, 7)
    for o, i, y, x in [(5, 2, 1, 6), (63, 0, 6, 0), (0, 1, 3, 3)]:
        assert w[o, i, y, x] == w_tf[y, x, i, o]
    lin_tf, lin = tf["resnet_v2/logits/weights"], c.state_dict["linear.weight"]
    assert tuple(lin.shape) == (5, 32) and lin[4, 31] == lin_tf[0, 0, 31, 4] and lin[1, 0] == lin_tf[0, 0, 0, 1]
    assert tuple(c.state_dict["backbone.res5.0.halting.global_conv.weight"].shape) == (1, 32, 1, 1)
    a = c.arch
    assert (a.arch, a.mode, a.units, a.base_channels, a.num_classes, a.depth) == ("imagenet", "sact", [2, 1, 1, 2], 1,
                                                                                   5, None)
    assert convert_original(_tiny_imagenet_vars(np.random.RandomState(0), "act")).arch.mode == "act"
    assert convert_original(_tiny_imagenet_vars(np.random.RandomState(0), "none")).arch.mode == "none"


def test_errors_name_every_variable():
    tf = _tiny_imagenet_vars(np.random.RandomState(1))
    tf["resnet_v2/block1/unit_1/bottleneck_v2/conv4/weights"] = np.zeros((1, 1, 1, 1), np.float32)
    tf["vgg_16/fc8/weights"] = np.zeros(3, np.float32)
    tf["resnet_v2/postnorm/weights"] = np.zeros(3, np.float32)
    with pytest.raises(ConversionError) as e:
        convert_original(tf)
    for name in ["conv4/weights", "vgg_16/fc8/weights", "resnet_v2/postnorm/weights"]:
        assert name in str(e.value)
    assert "3 variable(s)" in str(e.value)

    mixed = {**_tiny_imagenet_vars(np.random.RandomState(1)), "resnet_residual/Conv/biases": np.zeros(16, np.float32)}
    with pytest.raises(ConversionError, match="mixes"):
        convert_original(mixed)

    holes = {k: v for k, v in _tiny_imagenet_vars(np.random.RandomState(1)).items()
             if "block1/unit_1/halting_proba" not in k}
    with pytest.raises(ConversionError, match=r"block 1: halting branches in units \[\], expected units 1..1"):
        convert_original(holes)
    # a gap in the units of a block is named
    tiny = _tiny_imagenet_vars(np.random.RandomState(1))
    gap = {k.replace("block4/unit_2", "block4/unit_3"): v for k, v in tiny.items()}
    with pytest.raises(ConversionError, match=r"block 4 lacks units \[2\]"):
        convert_original(gap)


def test_align_to_model_names_missing_mismatched_unused():
    c = convert_original(_tiny_imagenet_vars(np.random.RandomState(2)))
    model = {k: tuple(v.shape) for k, v in c.state_dict.items()}
    model["backbone.res2.0.preact.num_batches_tracked"] = ()
    out = align_to_model(c, model)
    assert list(out) == list(model) and out["backbone.res2.0.preact.num_batches_tracked"].item() == 0
    # a Linear instead of a 1x1 conv: only size-1 dims differ -> reshaped
    model["backbone.res5.0.halting.global_conv.weight"] = (1, 32)
    assert tuple(align_to_model(c, model)["backbone.res5.0.halting.global_conv.weight"].shape) == (1, 32)
    bad = dict(model)
    bad["backbone.res2.0.conv1.weight"] = (2, 64, 1, 1)
    bad["backbone.res9.0.conv1.weight"] = (1,)
    del bad["linear.bias"]
    with pytest.raises(ConversionError) as e:
        align_to_model(c, bad, "classifier")
    msg = str(e.value)
    assert "backbone.res9.0.conv1.weight [1]" in msg and "have no value" in msg
    assert "backbone.res2.0.conv1.weight: converted [1, 64, 1, 1]" in msg
    assert "resnet_v2/block1/unit_1/bottleneck_v2/conv1/weights" in msg
    assert "linear.bias (from resnet_v2/logits/biases)" in msg


@needs_oracle
@pytest.mark.parametrize("model", MODELS)
def test_oracle_arch_and_every_variable_placed(model):
    cfg = json.loads((ORACLE / model / "summary.json").read_text())["config"]
    tf = read_tf_checkpoint(str(ORACLE / model / "varied" / "model.ckpt"))
    c = convert_original(tf)
    assert len(c.state_dict) == len(tf) and not c.ignored  # a bijection
    assert sorted(c.tf_names.values()) == sorted(tf)
    mode = {"sact": "sact", "act": "act", "vanilla": "none"}[cfg["model_type"]]
    a = c.arch
    if cfg["net"] == "imagenet":
        expected = ("imagenet", mode, cfg["units"], cfg["base_channels"], cfg["num_classes"])
    else:  # the real CIFAR ResNet-32: 3 blocks of 5 units, 16 channels, 10 classes (README section 2)
        expected = ("cifar", mode, [5, 5, 5], 16, 10)
        assert a.depth == 32
    assert (a.arch, a.mode, a.units, a.base_channels, a.num_classes) == expected
    for torch_name, tf_name in c.tf_names.items():  # layouts, element by element on one entry each
        t, v = c.state_dict[torch_name].numpy(), tf[tf_name]
        if v.ndim == 4 and torch_name.startswith("linear."):
            assert t[-1, 0] == v[0, 0, 0, -1]
        elif v.ndim == 4:
            assert t[-1, 0, v.shape[0] - 1, 0] == v[-1, 0, 0, -1]
        else:
            np.testing.assert_array_equal(t, v)


@needs_oracle
@pytest.mark.parametrize("model", MODELS)
def test_oracle_end_to_end_strict_load(model, tmp_path, capsys):
    """Convert with the tool, build the classifier from the printed keys, load: every parameter and
    buffer gets its value (strict, nothing new or unused), equal to the TF variable."""
    from sact_det.classification.checkpoint import load_classifier_weights, read_weights
    from sact_det.modeling.meta_arch.classifier import build_classifier
    main = _tool_main()
    src = ORACLE / model / "varied" / "model.ckpt"
    assert main([str(src), str(tmp_path / "out")]) == 0
    printed = capsys.readouterr().out
    result = convert_tf_checkpoint(str(src), str(tmp_path / "again"), log=lambda m: None)
    keys = result["classifier_config"]
    assert config_opts(keys) in printed
    assert "MODEL.SACT.VARIANT original" in printed and f"MODEL.SACT.MODE {result['arch'].mode}" in printed
    cfg = cfg_with({**keys, "MODEL.DEVICE": "cpu"})
    classifier = build_classifier(cfg)
    path = tmp_path / "out" / "model_classifier.pth"
    report = load_classifier_weights(classifier, str(path))
    assert report == {"new": [], "unused": []}
    weights = read_weights(str(path))
    assert weights["source"] == "sact_cls"
    classifier.load_state_dict(weights["checkpoint"]["model"], strict=True)
    tf = read_tf_checkpoint(str(src))
    sd = classifier.state_dict()
    is_cifar = model.startswith("cifar")
    stem = "resnet_residual/Conv/biases" if is_cifar else "resnet_v2/conv1/biases"
    np.testing.assert_array_equal(sd["backbone.stem.conv1.bias"].numpy(), tf[stem])
    logits = tf[("resnet_residual" if is_cifar else "resnet_v2") + "/logits/weights"]
    np.testing.assert_array_equal(sd["linear.weight"].numpy(), logits[0, 0].T)
    assert classifier.linear.out_features == (10 if is_cifar else 1001)
    det = tmp_path / "out" / "model_detector.pkl"
    if is_cifar:
        assert not det.exists() and result["detector"] is None
        return
    with open(det, "rb") as f:
        data = pickle.load(f)
    names = set(data["model"])
    assert {"stem.conv1.weight", "res2.0.preact.weight", "res5.0.conv3.bias", "postnorm.running_var",
            "linear.weight"} <= names and not any(k.startswith("backbone.") for k in names)
    assert result["detector_config"].items() <= data["sact_det"]["detector_config"].items()
    assert result["detector_config"]["MODEL.PIXEL_MEAN"] == [127.5] * 3  # inputs in [-1, 1]
    assert result["detector_config"]["INPUT.FORMAT"] == "RGB"


@needs_oracle
def test_detector_loads_converted_weights(tmp_path):
    """The paper's C4 detector built from the printed detector keys takes every backbone (stem, res2-res4)
    and box-head (res5, postnorm) parameter from the .pkl (detectron2's own checkpointer)."""
    from detectron2.checkpoint import DetectionCheckpointer
    from detectron2.modeling import build_model

    from sact_det.config import get_sact_cfg

    src = ORACLE / "imagenet_small_sact" / "varied" / "model.ckpt"
    result = convert_tf_checkpoint(str(src), str(tmp_path), log=lambda m: None)
    base = get_sact_cfg()
    base.merge_from_file("configs/Base-SACT-RCNN-C4.yaml")
    cfg = cfg_with({**result["detector_config"], "MODEL.DEVICE": "cpu"}, base)
    detector = build_model(cfg)
    DetectionCheckpointer(detector).load(result["detector"])
    sd = detector.state_dict()
    with open(result["detector"], "rb") as f:
        weights = pickle.load(f)["model"]
    covered = [k for k in sd if k.startswith(("backbone.", "roi_heads.res5.", "roi_heads.postnorm."))
               and not k.endswith("num_batches_tracked")]
    assert covered
    for k in covered:
        short = k.split(".", 1)[1]
        assert short in weights, f"{k} has no value in the .pkl"
        np.testing.assert_array_equal(sd[k].numpy(), weights[short].reshape(sd[k].shape), err_msg=k)
    assert any(k.startswith("backbone.res4.0.halting.local_conv") for k in covered)


@needs_oracle
def test_tool_on_a_released_style_tarball(tmp_path, capsys):
    main = _tool_main()
    src = ORACLE / "cifar_resnet32_sact" / "varied"
    tgz = tmp_path / "cifar10_resnet_5_sact_1e-2.tar.gz"
    with tarfile.open(tgz, "w:gz") as tar:
        for suffix in (".index", ".data-00000-of-00001"):
            tar.add(str(src / ("model.ckpt" + suffix)),
                    arcname=f"cifar10_resnet_5_sact_1e-2/model.ckpt-100000{suffix}")
    assert main([str(tgz), str(tmp_path / "out")]) == 0
    out = capsys.readouterr().out
    assert "SACT_CLS.ARCH cifar" in out and "SACT_CLS.CIFAR.NUM_UNITS 5" in out and "detector config" not in out
    assert (tmp_path / "out" / "model_classifier.pth").is_file()
    assert main([str(tmp_path / "missing.tar.gz"), str(tmp_path / "x")]) == 1
    assert "no TensorFlow checkpoint" in capsys.readouterr().err


def test_config_keys():
    c = convert_original(_tiny_imagenet_vars(np.random.RandomState(3)))
    keys = classifier_config(c.arch)
    assert keys["MODEL.SACT.VARIANT"] == "original" and keys["MODEL.SACT.STAGES"] == ["res2", "res3", "res4", "res5"]
    assert keys["MODEL.SACT.ORIGINAL_UNITS"] == [2, 1, 1, 2] and keys["MODEL.SACT.ORIGINAL_BASE_CHANNELS"] == 1
    assert keys["SACT_CLS.NUM_CLASSES"] == 5 and keys["SACT_CLS.BACKGROUND_CLASS"] is False
    det = detector_config(c.arch)
    assert det["MODEL.SACT.STAGES"] == ["res2", "res3", "res4"] and det["MODEL.PIXEL_STD"] == [127.5] * 3
    c.arch.units, c.arch.num_classes, c.arch.base_channels = [3, 4, 23, 3], 1001, 64
    keys = classifier_config(c.arch)
    assert keys["MODEL.RESNETS.DEPTH"] == 101 and keys["MODEL.SACT.ORIGINAL_UNITS"] == []
    assert keys["SACT_CLS.NUM_CLASSES"] == 1000 and keys["SACT_CLS.BACKGROUND_CLASS"] is True
    cfg = cfg_with(keys)
    assert cfg.MODEL.RESNETS.DEPTH == 101 and cfg.SACT_CLS.BACKGROUND_CLASS is True
    with pytest.raises(KeyError, match="MODEL.SACT.NOPE"):
        cfg_with({"MODEL.SACT.NOPE": 1})


def test_printed_keys_match_the_shipped_configs():
    """The keys printed for the released nets agree with the config files for the original networks."""
    from sact_det.classification.config import get_classification_cfg
    from sact_det.config import get_sact_cfg
    from sact_det.convert.original import OriginalArch

    def file_cfg(base, path):
        base.merge_from_file(path)
        return base

    def value(cfg, key):
        node = cfg
        for part in key.split("."):
            node = node[part]
        return list(node) if isinstance(node, tuple) else node

    r101 = OriginalArch("imagenet", "sact", [3, 4, 23, 3], 64, 1001)
    cifar = OriginalArch("cifar", "sact", [5, 5, 5], 16, 10)
    checks = [(classifier_config(r101), get_classification_cfg(),
               "configs/Classification/imagenet_R_101_sact_tau0.005_original.yaml"),
              (classifier_config(cifar), get_classification_cfg(),
               "configs/Classification/cifar10_resnet32_sact_tau0.01_original.yaml"),
              (detector_config(r101), get_sact_cfg(), "configs/COCO-Detection/sact_R_101_C4_original_tau0.005_1x.yaml")]
    for keys, base, path in checks:
        if not (REPO / path).is_file():
            pytest.skip(f"{path} not present")
        cfg = file_cfg(base, str(REPO / path))
        for key, expected in keys.items():
            if key in ("SACT_CLS.NUM_CLASSES", "SACT_CLS.INPUT.PIXEL_MEAN", "SACT_CLS.INPUT.PIXEL_STD"):
                continue  # the data set gives the class count; the original pipeline ignores pixel mean / std
            assert value(cfg, key) == expected, f"{path}: {key}"
