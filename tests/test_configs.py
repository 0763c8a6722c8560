"""Every shipped yaml config parses into sact_det's config (and builds where it is cheap)."""
import glob

import pytest
from detectron2.modeling import build_backbone

from sact_det.classification import get_classification_cfg
from sact_det.config import get_sact_cfg, validate_classification_cfg, validate_saliency_cfg, validate_sact_cfg

CONFIGS = sorted(glob.glob("configs/**/*.yaml", recursive=True))


def test_configs_exist():
    assert "configs/Base-SACT-RCNN-C4.yaml" in CONFIGS
    assert len([c for c in CONFIGS if "COCO-Detection" in c]) >= 7


@pytest.mark.parametrize("path", CONFIGS)
def test_config_parses(path):
    """Merged as the tools do (classification configs onto get_classification_cfg()) and validated."""
    classification = "/Classification/" in path
    cfg = get_classification_cfg() if classification else get_sact_cfg()
    cfg.merge_from_file(path)
    validate_sact_cfg(cfg)
    validate_saliency_cfg(cfg)
    if classification:
        validate_classification_cfg(cfg)
    assert cfg.MODEL.BACKBONE.NAME


def test_coco_sact_r101_builds_expected_backbone():
    cfg = get_sact_cfg()
    cfg.merge_from_file("configs/COCO-Detection/sact_R_101_C4_tau0.005_1x.yaml")
    cfg.MODEL.DEVICE = "cpu"
    bb = build_backbone(cfg)
    assert [len(s) for s in bb.stages] == [3, 4, 23]
    assert bb.adaptive_stages == ["res2", "res3", "res4"] and cfg.MODEL.SACT.TAU == 0.005


def test_unknown_key_is_a_clear_error(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("MODEL:\n  SACT:\n    TAUU: 0.1\n")
    cfg = get_sact_cfg()
    with pytest.raises(KeyError, match="TAUU"):
        cfg.merge_from_file(str(bad))
