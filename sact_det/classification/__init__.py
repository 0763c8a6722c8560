"""Classification tool: train / evaluate ACT, SACT and dense ResNets on ImageNet and CIFAR-10 and
hand the weights to the detector (keys: cfg.SACT_CLS, sact_det/config/classification.py)."""
from .config import add_classification_config, get_classification_cfg, validate_classification_cfg
from .checkpoint import CheckpointError, load_classifier_weights, read_weights
from .engine import train_classifier
from .evaluator import evaluate_checkpoint, evaluate_classifier, format_metrics
from .export import classifier_to_d2, write_d2_pkl
from .torchvision_names import torchvision_to_d2

__all__ = ["add_classification_config", "get_classification_cfg", "validate_classification_cfg", "CheckpointError",
           "load_classifier_weights", "read_weights", "train_classifier", "evaluate_checkpoint", "evaluate_classifier",
           "format_metrics", "classifier_to_d2", "torchvision_to_d2", "write_d2_pkl"]
