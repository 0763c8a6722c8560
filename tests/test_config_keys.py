"""One add_sact_config: every key group, independent of what was imported; keys documented; no cycles."""
import ast
import inspect
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from detectron2.config import get_cfg

import sact_det.config as C
from sact_det.classification import get_classification_cfg
from sact_det.config import add_sact_config, get_sact_cfg, validate_sact_cfg

REPO = Path(__file__).resolve().parents[1]
CONFIG_DIR = REPO / "sact_det" / "config"

# key group -> a few defaults written down from the papers / original code / README (not read from the code)
GROUPS = {
    "MODEL.SACT": {"MODE": "sact", "TAU": 0.005, "EPS": 0.01, "HALT_BIAS_INIT": -3.0, "EXECUTION": "dense",
                   "SPARSE_MAX_DENSITY": -1.0, "STAGES": ["res2", "res3", "res4"]},
    "MODEL.AIG": {"TARGET_RATE": 0.6, "GATE_HIDDEN": 16, "GATE_BIAS_INIT": [0.1, 2.0], "TEST_GATES": "threshold"},
    "MODEL.BLOCKDROP": {"ALPHA": 0.8, "PHASE": "finetune", "POLICY_INPUT_SIZE": 112},
    "SACT_TRAIN": {"TAU_WARMUP_ITERS": 0, "PER_ITER_SEED": True, "OPTIMIZER": "SGD"},
    "SACT_EVAL": {"REFERENCE_DEPTH": 101, "COCO": True},
    "SACT_SALIENCY": {"INPUT_SIZE": [640, 360], "TEMPERATURE": 0.2, "AUC_SPLITS": 100},
    "SACT_CLS": {"ARCH": "cifar", "CIFAR.NUM_UNITS": 5, "SOLVER.STEPS": [60000, 75000, 90000], "SOLVER.MAX_LENGTH": 100000},
}

# Load sact_det.config alone: a stand-in package object keeps sact_det/__init__.py (which imports
# everything) from running, so only sact_det.config and what it imports are loaded.
_ONLY_CONFIG = """
import json, os, sys, types
pkg = types.ModuleType("sact_det"); pkg.__path__ = [os.path.join(os.getcwd(), "sact_det")]
sys.modules["sact_det"] = pkg
from sact_det.config import get_sact_cfg
cfg = get_sact_cfg()
print(json.dumps({"modules": sorted(m for m in sys.modules if m.startswith("sact_det")), "cfg": cfg.dump()}))
"""
_EVERYTHING = """
import importlib, json, pkgutil
import sact_det
for m in pkgutil.walk_packages(sact_det.__path__, "sact_det."):  # every module of the package
    importlib.import_module(m.name)
from sact_det.config import get_sact_cfg
print(json.dumps({"modules": [], "cfg": get_sact_cfg().dump()}))
"""


def _run(code: str) -> dict:
    env = dict(os.environ, OMP_NUM_THREADS="1")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def _node(cfg, dotted: str):
    for part in dotted.split("."):
        cfg = cfg[part]
    return cfg


def _leaves(node, prefix=""):
    """Dotted key paths of the non-CfgNode values below ``node``."""
    out = []
    for k, v in node.items():
        out += _leaves(v, f"{prefix}{k}.") if isinstance(v, dict) else [prefix + k]
    return out


def test_get_sact_cfg_does_not_depend_on_imports():
    import yaml

    alone, everything = _run(_ONLY_CONFIG), _run(_EVERYTHING)
    others = [m for m in alone["modules"] if m != "sact_det" and not m.startswith("sact_det.config")]
    assert others == [], f"sact_det.config imported {others}"
    cfg = yaml.safe_load(alone["cfg"])
    for group, expected in GROUPS.items():
        node = _node(cfg, group)
        for key, value in expected.items():
            assert _node(node, key) == value, f"{group}.{key}"
    assert alone["cfg"] == everything["cfg"]


def test_add_sact_config_on_detectron2_defaults():
    cfg = get_cfg()
    add_sact_config(cfg)
    cfg.merge_from_file(str(REPO / "configs/Demo/aig_R_50_C4.yaml"))
    assert cfg.MODEL.AIG.SCHEDULE == "resnet50" and cfg.MODEL.AIG.TARGET_RATE == 0.5  # values of that yaml
    assert cfg.dump() == _merged(get_sact_cfg(), "configs/Demo/aig_R_50_C4.yaml").dump()


def _merged(cfg, path):
    cfg.merge_from_file(str(REPO / path))
    return cfg


def test_every_key_has_a_one_line_comment():
    cfg = get_sact_cfg()
    adders = {"MODEL.SACT": C.add_sact_model_config, "MODEL.AIG": C.add_aig_config,
              "MODEL.BLOCKDROP": C.add_blockdrop_config, "SACT_TRAIN": C.add_train_config,
              "SACT_EVAL": C.add_train_config, "SACT_SALIENCY": C.add_saliency_config,
              "SACT_CLS": C.add_classification_config}
    assert set(adders) == set(GROUPS)
    for group, fn in adders.items():
        lines = inspect.getsource(fn).splitlines()
        name = group.split(".")[-1]
        for key in _leaves(_node(cfg, group)):
            pat = re.compile(rf"\b(c|{name})\.{re.escape(key)} = ")
            hits = [i for i, ln in enumerate(lines) if pat.search(ln)]
            assert len(hits) == 1, f"{group}.{key}: {len(hits)} assignments in {fn.__name__}"
            i = hits[0]
            assert "  # " in lines[i] or lines[i - 1].strip().startswith("# "), f"{group}.{key}: no comment"


def test_config_package_imports_only_itself():
    for path in sorted(CONFIG_DIR.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                assert node.level in (0, 1), f"{path.name}: from {'.' * node.level}{node.module} leaves sact_det.config"
                assert node.level == 1 or not (node.module or "").startswith("sact_det"), f"{path.name}: {node.module}"
            elif isinstance(node, ast.Import):
                assert not any(a.name.startswith("sact_det") for a in node.names), f"{path.name}: import sact_det"


def test_no_import_time_hooks():
    for name in ("register_config_hook", "_EXTRA_CONFIG_HOOKS"):
        assert not hasattr(C, name) and not hasattr(C.defaults, name)


def test_shared_constants():
    assert C.STAGE_ORDER == ("res2", "res3", "res4", "res5")
    assert C.EXECUTION_MODES == ("dense", "sparse", "auto") and C.SPARSE_MAX_DENSITY == -1.0
    # -1: the threshold follows the map width (R-50's res2 / res3 / res4 / res5); a value >= 0 applies as given
    assert [C.sparse_max_density(-1.0, c) for c in (64, 256, 512, 1024, 2048)] == [0.65, 0.65, 0.7, 0.8, 0.8]
    assert C.sparse_max_density(0.6, 1024) == 0.6 and C.sparse_max_density(0.0, 256) == 0.0
    cfg = get_sact_cfg()
    cfg.MODEL.SACT.STAGES = ["res2", "res5"]
    cfg.MODEL.SACT.EXECUTION = "auto"
    validate_sact_cfg(cfg)
    for key, value in [("STAGES", ["res6"]), ("EXECUTION", "fast"), ("SPARSE_MAX_DENSITY", -0.5),
                       ("SPARSE_MAX_DENSITY", 1.5)]:
        bad = get_sact_cfg()
        bad.MODEL.SACT[key] = value
        with pytest.raises(ValueError, match=f"cfg.MODEL.SACT.{key}"):
            validate_sact_cfg(bad)


def test_classification_cfg_is_sact_cfg_with_classifier_defaults():
    cls, det = get_classification_cfg(), get_sact_cfg()
    assert cls.MODEL.SACT.TAU == 0.01 and cls.MODEL.RESNETS.NORM == "BN" and cls.MODEL.SACT.HALT_NORM == "BN"
    changed = {k for k in _leaves(det) if _node(det, k) != _node(cls, k)}
    assert changed <= {"MODEL.SACT.TAU", "MODEL.RESNETS.NORM", "MODEL.SACT.HALT_NORM", "MODEL.DEVICE",
                       "MODEL.BACKBONE.NAME"}, changed
    assert set(_leaves(det)) == set(_leaves(cls))
