"""Faster R-CNN with a SACT backbone: ponder loss in training, ponder maps and FLOPs at inference."""
import math
from typing import Dict, List, Optional

import torch
import torch.nn.functional as F
from detectron2.config import configurable
from detectron2.modeling import META_ARCH_REGISTRY, GeneralizedRCNN
from detectron2.structures import ImageList
from detectron2.utils.events import get_event_storage

from .backbone import StagePonder
from .flops import HookFlopCounter, backbone_flops

__all__ = ["SACTRCNN", "ponder_loss", "valid_mask"]


def valid_mask(ponder: StagePonder, image_sizes: List[tuple]) -> torch.Tensor:
    """(B,1,H,W) bool: the stage positions that lie on each image (not on batch padding)."""
    b, _, h, w = ponder.ponder_cost.shape
    mask = torch.zeros((b, 1, h, w), dtype=torch.bool, device=ponder.ponder_cost.device)
    for i, (ih, iw) in enumerate(image_sizes):
        mask[i, :, : math.ceil(ih / ponder.stride), : math.ceil(iw / ponder.stride)] = True
    return mask


def ponder_loss(ponders: Dict[str, StagePonder], tau: float, image_sizes: Optional[List[tuple]] = None) -> torch.Tensor:
    """tau * sum over stages of mean(rho) over the batch's image positions (padding excluded)."""
    total = None
    for p in ponders.values():
        rho = p.ponder_cost
        if image_sizes is not None:
            m = valid_mask(p, image_sizes).to(rho.dtype)
            mean = (rho * m).sum() / m.sum().clamp(min=1)
        else:
            mean = rho.mean()
        total = mean if total is None else total + mean
    if total is None:
        raise ValueError("ponder_loss needs at least one adaptive stage")
    return tau * total


@META_ARCH_REGISTRY.register()
class SACTRCNN(GeneralizedRCNN):
    """GeneralizedRCNN + ``loss_ponder`` (training) and per-image ``ponder_map``, ``ponder_maps``, ``flops``."""

    @configurable
    def __init__(self, *, tau: float, **kwargs) -> None:
        super().__init__(**kwargs)
        if not tau >= 0:
            raise ValueError(f"cfg.MODEL.SACT.TAU must be >= 0, got {tau}")
        self.tau = float(tau)
        self._image_sizes: Optional[List[tuple]] = None

    @classmethod
    def from_config(cls, cfg):
        ret = super().from_config(cfg)
        ret["tau"] = float(cfg.MODEL.SACT.TAU)
        return ret

    @property
    def ponders(self) -> Dict[str, StagePonder]:
        return getattr(self.backbone, "last_ponder", {})

    def preprocess_image(self, batched_inputs) -> ImageList:
        images = super().preprocess_image(batched_inputs)
        self._image_sizes = list(images.image_sizes)
        return images

    def forward(self, batched_inputs):
        if not self.training:
            return self.inference(batched_inputs)
        losses = super().forward(batched_inputs)
        ponders = self.ponders
        if ponders:
            losses["loss_ponder"] = ponder_loss(ponders, self.tau, self._image_sizes)
            self._log_ponder(ponders)
        return losses

    def _log_ponder(self, ponders: Dict[str, StagePonder]) -> None:
        try:
            storage = get_event_storage()
        except AssertionError:  # not inside a trainer
            return
        for name, p in ponders.items():
            rho = p.ponder_cost.detach()[valid_mask(p, self._image_sizes)]
            storage.put_scalar(f"ponder/{name}_mean", float(rho.mean()), smoothing_hint=True)
            storage.put_scalar(f"ponder/{name}_std", float(rho.std()) if rho.numel() > 1 else 0.0, smoothing_hint=True)

    def inference(self, batched_inputs, detected_instances=None, do_postprocess: bool = True):
        with HookFlopCounter([self.proposal_generator, self.roi_heads]) as head_counter:
            results = super().inference(batched_inputs, detected_instances, do_postprocess)
        if not do_postprocess:
            return results
        ponders, sizes = self.ponders, self._image_sizes
        head_share = head_counter.total / max(len(results), 1)
        for i, out in enumerate(results):
            bb = backbone_flops(self.backbone, sizes[i], index=i)
            out["flops"] = {"backbone": bb, "model": bb + head_share}
            if ponders:
                out["ponder_maps"] = {n: _crop(p.ponder_cost[i, 0], sizes[i], p.stride) for n, p in ponders.items()}
                out["ponder_map"] = sum_ponder_maps(list(out["ponder_maps"].values()))
        return results


def _crop(m: torch.Tensor, image_size: tuple, stride: int) -> torch.Tensor:
    return m[: math.ceil(image_size[0] / stride), : math.ceil(image_size[1] / stride)].detach().float().cpu()


def sum_ponder_maps(maps: List[torch.Tensor]) -> torch.Tensor:
    """Sum (h_i, w_i) stage maps at the resolution of the first (finest) one (nearest resampling)."""
    target = maps[0].shape
    total = torch.zeros(target)
    for m in maps:
        if m.shape != target:
            m = F.interpolate(m[None, None], size=tuple(target), mode="nearest")[0, 0]
        total = total + m
    return total
