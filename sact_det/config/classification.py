"""cfg.SACT_CLS: keys of the classification tool (tools/train_classifier.py, sact_det.classification).

The model keys stay where the detector has them: cfg.MODEL.SACT / AIG / BLOCKDROP, cfg.MODEL.RESNETS
(DEPTH, NORM, STRIDE_IN_1X1; ImageNet models), cfg.MODEL.WEIGHTS (initial weights), cfg.MODEL.DEVICE,
cfg.OUTPUT_DIR, cfg.SEED, cfg.DATALOADER.NUM_WORKERS.
"""
from detectron2.config import CfgNode as CN

__all__ = ["add_classification_config", "validate_classification_cfg", "VALID_FORMATS", "VALID_UNITS"]

VALID_FORMATS = ("cifar10", "imagenet")  # cfg.SACT_CLS.DATA.FORMAT
VALID_UNITS = ("iter", "epoch")  # cfg.SACT_CLS.SOLVER.UNIT


def add_classification_config(cfg: CN) -> None:
    """Add cfg.SACT_CLS (defaults: CIFAR-10 ResNet-32 SACT as in the original SACT code). Idempotent."""
    if "SACT_CLS" in cfg:
        return
    cfg.SACT_CLS = c = CN()
    c.ARCH = "cifar"  # "cifar" (3 stages of CIFAR.NUM_UNITS basic units) or "imagenet" (MODEL.RESNETS ResNet)
    c.NUM_CLASSES = 0  # classes of the fc layer; 0 = take the count from the training set
    c.FREEZE_AT = 0  # as MODEL.BACKBONE.FREEZE_AT (1: stem, 2: stem+res2, ...); halting branches stay trainable
    c.RESET_FC = False  # True: do not load the fc of MODEL.WEIGHTS (fine-tuning to another class count)
    c.BACKGROUND_CLASS = False  # True: fc gets an extra class 0 and data label k becomes k+1 (original ImageNet: 1001)
    c.CIFAR = CN()
    c.CIFAR.NUM_UNITS = 5  # basic units per stage: 5 = ResNet-32, 18 = ResNet-110
    c.CIFAR.WIDTH = 16  # channels of stage 1 (stages 2, 3 have 2x, 4x)
    c.DATA = CN()
    c.DATA.FORMAT = "cifar10"  # "cifar10" (python pickle batches) or "imagenet" (<root>/<split>/<class>/<image>)
    c.DATA.ROOT = "datasets/cifar-10-batches-py"  # dataset folder
    c.DATA.TRAIN_SPLIT = "train"  # imagenet: sub-folder; cifar10: "train" = data_batch_*, "test" = test_batch
    c.DATA.TEST_SPLIT = "test"  # split evaluated by the tool (ImageNet: "val")
    c.DATA.MAX_TEST_IMAGES = 0  # evaluate only the first N test images (0 = all), for quick checks
    c.INPUT = CN()
    c.INPUT.CROP_SIZE = 32  # train crop / test centre crop (ImageNet 224); CIFAR: random crop after padding; VARIANT original test: 0 = keep size
    c.INPUT.PAD = 4  # CIFAR training: zero padding before the random crop
    c.INPUT.RESIZE = 0  # ImageNet test: shorter side resized to this before the centre crop (256)
    c.INPUT.CENTRAL_FRACTION = 0.875  # MODEL.SACT.VARIANT original, ImageNet test: central crop, then resize to CROP_SIZE
    c.INPUT.RANDOM_RESIZED_CROP = False  # ImageNet training: RandomResizedCrop(CROP_SIZE) instead of pad+crop
    c.INPUT.FLIP = True  # random horizontal flips in training
    c.INPUT.PIXEL_MEAN = [125.3, 123.0, 113.9]  # RGB, 0-255 scale (ImageNet: 123.675, 116.28, 103.53); unused by VARIANT original
    c.INPUT.PIXEL_STD = [63.0, 62.1, 66.7]  # RGB, 0-255 scale (ImageNet: 58.395, 57.12, 57.375); unused by VARIANT original
    c.SOLVER = CN()
    c.SOLVER.IMS_PER_BATCH = 128  # total batch over all processes
    c.SOLVER.BASE_LR = 0.1  # SGD learning rate
    c.SOLVER.MOMENTUM = 0.9  # SGD momentum
    c.SOLVER.NESTEROV = False  # Nesterov momentum
    c.SOLVER.WEIGHT_DECAY = 2e-4  # L2 on conv / fc weights
    c.SOLVER.WEIGHT_DECAY_NORM = 0.0  # L2 on norm-layer parameters
    c.SOLVER.LABEL_SMOOTHING = 0.0  # cross-entropy label smoothing (ImageNet: 0.1)
    c.SOLVER.UNIT = "iter"  # unit of STEPS, MAX_LENGTH, CHECKPOINT_PERIOD, EVAL_PERIOD: "iter" or "epoch"
    c.SOLVER.STEPS = (60000, 75000, 90000)  # learning rate / GAMMA at each of these (original CIFAR: 0.1 ... 0.0001)
    c.SOLVER.GAMMA = 0.1  # learning-rate decay factor
    c.SOLVER.MAX_LENGTH = 100000  # training length (original CIFAR: 100k steps)
    c.SOLVER.CHECKPOINT_PERIOD = 5000  # save a resumable checkpoint every N units (and at the end)
    c.SOLVER.MAX_TO_KEEP = 3  # periodic checkpoints kept on disk (0 = all)
    c.SOLVER.EVAL_PERIOD = 10000  # evaluate every N units (0 = only at the end)
    c.SOLVER.LOG_PERIOD = 20  # iterations between log lines / TensorBoard points
    c.TEST = CN()
    c.TEST.IMS_PER_BATCH = 128  # total evaluation batch over all processes


def validate_classification_cfg(cfg: CN) -> None:
    """Raise ValueError naming the key when a cfg.SACT_CLS value is invalid."""
    c = cfg.SACT_CLS
    if c.DATA.FORMAT not in VALID_FORMATS:
        raise ValueError(f"cfg.SACT_CLS.DATA.FORMAT must be one of {VALID_FORMATS}, got {c.DATA.FORMAT!r}")
    if c.SOLVER.UNIT not in VALID_UNITS:
        raise ValueError(f"cfg.SACT_CLS.SOLVER.UNIT must be one of {VALID_UNITS}, got {c.SOLVER.UNIT!r}")
    for key in ("IMS_PER_BATCH", "MAX_LENGTH", "CHECKPOINT_PERIOD", "LOG_PERIOD"):
        if int(c.SOLVER[key]) < 1:
            raise ValueError(f"cfg.SACT_CLS.SOLVER.{key} must be >= 1, got {c.SOLVER[key]}")
    if int(c.TEST.IMS_PER_BATCH) < 1:
        raise ValueError(f"cfg.SACT_CLS.TEST.IMS_PER_BATCH must be >= 1, got {c.TEST.IMS_PER_BATCH}")
    if list(c.SOLVER.STEPS) != sorted(c.SOLVER.STEPS):
        raise ValueError(f"cfg.SACT_CLS.SOLVER.STEPS must be increasing, got {list(c.SOLVER.STEPS)}")
    if not 0.0 <= float(c.SOLVER.LABEL_SMOOTHING) < 1.0:
        raise ValueError(f"cfg.SACT_CLS.SOLVER.LABEL_SMOOTHING must be in [0, 1), got {c.SOLVER.LABEL_SMOOTHING}")
    min_crop = 0 if cfg.MODEL.SACT.VARIANT == "original" else 1
    if int(c.INPUT.CROP_SIZE) < min_crop:
        raise ValueError(f"cfg.SACT_CLS.INPUT.CROP_SIZE must be >= {min_crop}, got {c.INPUT.CROP_SIZE}")
    if not 0.0 < float(c.INPUT.CENTRAL_FRACTION) <= 1.0:
        raise ValueError(f"cfg.SACT_CLS.INPUT.CENTRAL_FRACTION must be in (0, 1], got {c.INPUT.CENTRAL_FRACTION}")
    if len(c.INPUT.PIXEL_MEAN) != 3 or len(c.INPUT.PIXEL_STD) != 3 or min(c.INPUT.PIXEL_STD) <= 0:
        raise ValueError("cfg.SACT_CLS.INPUT.PIXEL_MEAN / PIXEL_STD need 3 (RGB) values, std > 0; got "
                         f"{list(c.INPUT.PIXEL_MEAN)} / {list(c.INPUT.PIXEL_STD)}")
    if cfg.MODEL.RESNETS.NORM == "FrozenBN" and c.ARCH == "cifar":
        raise ValueError("cfg.MODEL.RESNETS.NORM FrozenBN would freeze the statistics of a CIFAR ResNet; use BN")
