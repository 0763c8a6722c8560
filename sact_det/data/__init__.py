"""Data: embedded demo data set (registered on import, generated lazily), CAT2000 (registered on
import, read lazily), COCO validation and registration of user data, and a DatasetMapper with
clear errors for bad images. COCO itself is detectron2's builtin registration."""
from . import cat2000  # noqa: F401  (registers cat2000_{train,test}; touches no disk)
from .demo import (
    CLASS_NAMES,
    DEFAULT_SPECS,
    DemoSpec,
    demo_root,
    ensure_demo_split,
    ensure_registered,
    generate_demo_dataset,
    object_mask,
    prepare_demo_data,
    register_demo_datasets,
)
from .mapper import ImageReadError, ImageTooSmallError, SACTDatasetMapper, backbone_stride_from_cfg
from .validation import DatasetFormatError, register_coco_dataset, validate_coco_json

register_demo_datasets()  # sact_demo_{train,val,tiny_train,tiny_val}; nothing is generated here

__all__ = [
    "CLASS_NAMES", "DEFAULT_SPECS", "DemoSpec", "demo_root", "ensure_demo_split", "ensure_registered",
    "generate_demo_dataset", "object_mask", "prepare_demo_data", "register_demo_datasets",
    "SACTDatasetMapper", "ImageReadError", "ImageTooSmallError", "backbone_stride_from_cfg",
    "DatasetFormatError", "register_coco_dataset", "validate_coco_json",
]
