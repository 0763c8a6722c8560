"""Faster R-CNN over any adaptive backbone (:class:`~.contract.AdaptiveBackbone`).

``AdaptiveRCNN`` is detectron2's GeneralizedRCNN that tells the backbone the batch's unpadded
image sizes, adds the backbone's ``extra_losses()`` in training (SACT/ACT ``loss_ponder``, AIG
``loss_target_rate``) and logs its ``log_statistics()``; at inference every output gets
``flops`` = {"backbone": the backbone's ``image_flops``, "model": that + the image's share of the
RPN / box-head FLOPs} and the backbone's ``image_outputs`` (SACT/ACT ``ponder_maps`` /
``ponder_map``, AIG / BlockDrop ``unit_policy``). It knows no family.
"""
from detectron2.config import configurable
from detectron2.modeling import META_ARCH_REGISTRY, GeneralizedRCNN
from detectron2.structures import ImageList
from detectron2.utils.events import get_event_storage

from ..core.contract import AdaptiveBackbone
from ..core.flop_rules import HookFlopCounter

__all__ = ["AdaptiveRCNN", "event_storage", "log_scalars", "add_image_outputs"]


def event_storage():
    """The current detectron2 EventStorage, or None outside a trainer."""
    try:
        return get_event_storage()
    except AssertionError:
        return None


def log_scalars(scalars) -> None:
    """Put {name: value} into the current EventStorage (smoothed); nothing outside a trainer."""
    storage = event_storage()
    if storage is None:
        return
    for name, value in scalars.items():
        storage.put_scalar(name, value, smoothing_hint=True)


def add_image_outputs(backbone: AdaptiveBackbone, results, head_flops: float) -> None:
    """Per inference result i: ``flops`` = {"backbone": the backbone's image_flops(i), "model": that + the
    image's share of ``head_flops``} and the backbone's image_outputs(i); in place."""
    head_share = head_flops / max(len(results), 1)
    for i, out in enumerate(results):
        bb = backbone.image_flops(i)
        out["flops"] = {"backbone": bb, "model": bb + head_share}
        out.update(backbone.image_outputs(i))


@META_ARCH_REGISTRY.register()
class AdaptiveRCNN(GeneralizedRCNN):
    """GeneralizedRCNN + the backbone's extra losses (training) and per-image ``flops`` and outputs (inference)."""

    @configurable
    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        if not isinstance(self.backbone, AdaptiveBackbone):
            raise TypeError(f"AdaptiveRCNN needs an AdaptiveBackbone (build_sact_resnet_backbone, "
                            f"build_aig_resnet_backbone, build_blockdrop_resnet_backbone), got "
                            f"{type(self.backbone).__name__}")

    def preprocess_image(self, batched_inputs) -> ImageList:
        images = super().preprocess_image(batched_inputs)
        self.backbone.set_image_sizes(images.image_sizes)
        return images

    def forward(self, batched_inputs):
        if not self.training:
            return self.inference(batched_inputs)
        losses = super().forward(batched_inputs)
        losses.update(self.backbone.extra_losses())
        log_scalars(self.backbone.log_statistics())
        return losses

    def inference(self, batched_inputs, detected_instances=None, do_postprocess: bool = True):
        with HookFlopCounter([self.proposal_generator, self.roi_heads]) as head_counter:
            results = super().inference(batched_inputs, detected_instances, do_postprocess)
        if not do_postprocess:
            return results
        add_image_outputs(self.backbone, results, head_counter.total)
        return results
