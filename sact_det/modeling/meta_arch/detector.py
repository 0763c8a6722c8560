"""Any detectron2 meta-architecture over an adaptive backbone, without a subclass per meta-architecture.

``AdaptiveDetector`` (registered in detectron2's META_ARCH_REGISTRY; ``build_model`` calls it with the
cfg) builds the meta-architecture named by cfg.MODEL.SACT.META_ARCHITECTURE (GeneralizedRCNN, with or
without masks, RetinaNet, ...) and attaches the :class:`~..core.contract.AdaptiveBackbone` contract to
it with two module hooks (:func:`attach_contract`):

- before ``forward(batched_inputs)``: ``backbone.set_image_sizes`` with the unpadded (h, w) of every
  input's ``image`` (the mapper resized it; the meta-architectures only normalise and pad);
- after it, in training: the loss dict gains ``backbone.extra_losses()`` (SACT / ACT ``loss_ponder``)
  and ``backbone.log_statistics()`` goes to the EventStorage; at inference every result dict gains
  ``flops`` = {"backbone": ``backbone.image_flops(i)``, "model": that + the image's share of the FLOPs
  of every other child module (RPN / ROI heads / RetinaNet head)} and ``backbone.image_outputs(i)``
  (SACT / ACT ``ponder_map`` / ``ponder_maps``).

The returned model is the meta-architecture itself, so its state-dict names are detectron2's and
detectron2 checkpoints load unchanged.
"""
from typing import Any, Dict, Tuple

from detectron2.modeling import META_ARCH_REGISTRY
from torch import nn

from ..core.contract import AdaptiveBackbone
from ..core.flop_rules import HookFlopCounter
from .rcnn import AdaptiveRCNN, add_image_outputs, log_scalars

__all__ = ["AdaptiveDetector", "attach_contract"]

_COUNTER = "_adaptive_head_counter"  # attribute holding the open head-FLOPs counter during an inference forward


def _batched_inputs(args: Tuple[Any, ...], kwargs: Dict[str, Any]):
    if args:
        return args[0]
    if "batched_inputs" in kwargs:
        return kwargs["batched_inputs"]
    raise TypeError("an adaptive detector's forward takes the list of input dicts (batched_inputs)")


def _close_counter(model: nn.Module) -> float:
    counter = model.__dict__.pop(_COUNTER, None)
    if counter is None:
        return 0.0
    counter.__exit__(None, None, None)
    return counter.total


def _before_forward(model: nn.Module, args: Tuple[Any, ...], kwargs: Dict[str, Any]) -> None:
    """Forward pre-hook: unpadded image sizes to the backbone; at inference start counting head FLOPs."""
    sizes = [tuple(int(v) for v in d["image"].shape[-2:]) for d in _batched_inputs(args, kwargs)]
    model.backbone.set_image_sizes(sizes)
    _close_counter(model)  # a counter left open by a forward that raised
    if not model.training:
        heads = [m for name, m in model.named_children() if name != "backbone"]
        model.__dict__[_COUNTER] = HookFlopCounter(heads).__enter__()


def _after_forward(model: nn.Module, args: Tuple[Any, ...], kwargs: Dict[str, Any], output: Any) -> Any:
    """Forward hook: extra losses and statistics (training) or per-image FLOPs and outputs (inference)."""
    backbone = model.backbone
    head_total = _close_counter(model)
    if model.training:
        output.update(backbone.extra_losses())
        log_scalars(backbone.log_statistics())
        return output
    add_image_outputs(backbone, output, head_total)
    return output


def attach_contract(model: nn.Module) -> nn.Module:
    """Attach the adaptive-backbone contract to a detectron2 meta-architecture with a ``backbone``
    (see the module docstring); returns ``model`` itself."""
    backbone = getattr(model, "backbone", None)
    if not isinstance(backbone, AdaptiveBackbone):
        raise TypeError(f"an adaptive detector needs an AdaptiveBackbone (build_sact_resnet_fpn_backbone, "
                        f"build_sact_retinanet_resnet_fpn_backbone, build_sact_resnet_backbone, ...), got "
                        f"{type(backbone).__name__} from cfg.MODEL.BACKBONE.NAME")
    if isinstance(model, AdaptiveRCNN):
        raise ValueError(f"{type(model).__name__} applies the contract itself; name a detectron2 meta-architecture "
                         f"(e.g. GeneralizedRCNN, RetinaNet) in cfg.MODEL.SACT.META_ARCHITECTURE")
    model.register_forward_pre_hook(_before_forward, with_kwargs=True)
    model.register_forward_hook(_after_forward, with_kwargs=True)
    return model


@META_ARCH_REGISTRY.register()
def AdaptiveDetector(cfg) -> nn.Module:  # noqa: N802  (registered under this name, as the classes are)
    """cfg.MODEL.SACT.META_ARCHITECTURE's model with the adaptive-backbone contract attached."""
    name = cfg.MODEL.SACT.META_ARCHITECTURE
    if name == "AdaptiveDetector":
        raise ValueError("cfg.MODEL.SACT.META_ARCHITECTURE names the detectron2 meta-architecture inside "
                         "AdaptiveDetector (e.g. GeneralizedRCNN, RetinaNet), not AdaptiveDetector itself")
    try:
        build = META_ARCH_REGISTRY.get(name)
    except KeyError as e:
        raise ValueError(f"cfg.MODEL.SACT.META_ARCHITECTURE {name!r} is not a registered meta-architecture") from e
    return attach_contract(build(cfg))
