"""DatasetMapper with clear errors for unreadable and too-small images.

Small images: detectron2's ResizeShortestEdge (INPUT.MIN_SIZE_TRAIN / MIN_SIZE_TEST) scales every
image, small ones included, to the configured shorter side, so an image smaller than the
backbone stride is normally upscaled and works. The mapper checks the image *after* the input
transforms and raises :class:`ImageTooSmallError` when its shorter side is still below
``min_size`` (built from a cfg: the largest stride among the backbone's output features, e.g. 16
for a C4 res4 backbone; 0 disables the check), e.g. with resizing disabled (MIN_SIZE_TEST = 0)
or an extreme aspect ratio.
"""
import copy
from typing import Any, Dict

import numpy as np
import torch
from detectron2.config import configurable
from detectron2.data import DatasetMapper
from detectron2.data import detection_utils as utils
from detectron2.data import transforms as T
from PIL import UnidentifiedImageError

__all__ = ["SACTDatasetMapper", "ImageReadError", "ImageTooSmallError", "read_image_checked",
           "backbone_stride_from_cfg"]

_RESNET_STRIDES = {"stem": 4, "res2": 4, "res3": 8, "res4": 16, "res5": 32}


class ImageReadError(OSError):
    """An image file exists but cannot be decoded (corrupt, truncated or not an image)."""


class ImageTooSmallError(ValueError):
    """The (transformed) image is smaller than the backbone stride."""


def backbone_stride_from_cfg(cfg) -> int:
    """Largest output stride of a ResNet-style backbone from cfg.MODEL.RESNETS.OUT_FEATURES
    (res5 with RES5_DILATION 2 has stride 16); unknown feature names count as 32."""
    strides = dict(_RESNET_STRIDES, res5=32 // int(cfg.MODEL.RESNETS.RES5_DILATION))
    return max(strides.get(f, 32) for f in cfg.MODEL.RESNETS.OUT_FEATURES)


def read_image_checked(file_name: str, image_format: str) -> np.ndarray:
    """``detection_utils.read_image`` with errors that name the file. Returns (H, W, C) uint8."""
    try:
        return utils.read_image(file_name, format=image_format)
    except FileNotFoundError as e:
        raise FileNotFoundError(
            f"Image file not found: {file_name} (check the dataset's image_root and file_name)"
        ) from e
    except (UnidentifiedImageError, OSError, SyntaxError) as e:  # PIL's decode failures
        raise ImageReadError(
            f"Cannot decode image {file_name}: {type(e).__name__}: {e}. The file is corrupt, "
            "truncated or not an image; replace it or remove it from the annotation file."
        ) from e


class SACTDatasetMapper(DatasetMapper):
    """detectron2's DatasetMapper plus: read failures name the file (FileNotFoundError /
    ImageReadError) and images whose transformed shorter side is below ``min_size`` raise
    ImageTooSmallError. ``min_size=0`` disables the size check."""

    @configurable
    def __init__(self, is_train: bool, *, min_size: int = 0, **kwargs: Any) -> None:
        super().__init__(is_train, **kwargs)
        self.min_size = int(min_size)

    @classmethod
    def from_config(cls, cfg, is_train: bool = True) -> Dict[str, Any]:
        ret = super().from_config(cfg, is_train)
        ret["min_size"] = backbone_stride_from_cfg(cfg)
        return ret

    def _check_size(self, file_name: str, orig_hw: tuple, hw: tuple) -> None:
        if self.min_size and min(hw) < self.min_size:
            raise ImageTooSmallError(
                f"Image {file_name} is {orig_hw[1]}x{orig_hw[0]} px ({hw[1]}x{hw[0]} after the input "
                f"transforms), smaller than the backbone stride of {self.min_size} px, so its deepest "
                "feature map would be empty. Enable resizing (INPUT.MIN_SIZE_TRAIN / MIN_SIZE_TEST "
                "upscale small images) or remove the image."
            )

    def __call__(self, dataset_dict: dict) -> dict:
        """Same output as DatasetMapper: dict with "image" (C, H, W) uint8 tensor, "instances"
        when training, plus the input keys."""
        dataset_dict = copy.deepcopy(dataset_dict)
        if "file_name" not in dataset_dict:
            raise KeyError(f"dataset dict (image_id={dataset_dict.get('image_id')!r}) has no 'file_name'")
        file_name = dataset_dict["file_name"]
        image = read_image_checked(file_name, self.image_format)
        utils.check_image_size(dataset_dict, image)
        orig_hw = image.shape[:2]

        sem_seg_gt = None
        if "sem_seg_file_name" in dataset_dict:
            sem_seg_gt = read_image_checked(dataset_dict.pop("sem_seg_file_name"), "L").squeeze(2)
        aug_input = T.AugInput(image, sem_seg=sem_seg_gt)
        transforms = self.augmentations(aug_input)
        image, sem_seg_gt = aug_input.image, aug_input.sem_seg
        image_shape = image.shape[:2]
        self._check_size(file_name, orig_hw, image_shape)

        dataset_dict["image"] = torch.as_tensor(np.ascontiguousarray(image.transpose(2, 0, 1)))
        if sem_seg_gt is not None:
            dataset_dict["sem_seg"] = torch.as_tensor(sem_seg_gt.astype("long"))
        if self.proposal_topk is not None:
            utils.transform_proposals(dataset_dict, image_shape, transforms, proposal_topk=self.proposal_topk)
        if not self.is_train:
            dataset_dict.pop("annotations", None)
            return dataset_dict
        if "annotations" in dataset_dict:
            self._transform_annotations(dataset_dict, transforms, image_shape)
        return dataset_dict
