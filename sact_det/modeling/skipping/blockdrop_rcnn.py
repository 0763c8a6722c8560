"""BlockDrop's detector: :class:`AdaptiveRCNN` whose training step trains the policy with REINFORCE.

``BlockDropRCNN`` trains the BlockDrop policy with REINFORCE. Detection has no "correct"
prediction, so an image counts as correct when the detector's own training loss (RPN + box
head, summed) with the policy's units is at most (1 + CORRECT_TOLERANCE) times its loss with
every unit executed: "the skipped units did not make this image noticeably harder". Per step:
the all-units reference and the greedy policy (p >= 0.5, the self-critical baseline) run without
gradients, the sampled policy runs with gradients (finetune phase) and provides the detector
losses. The three passes use the same random seed (same RPN anchor samples) and the box head
sees the reference pass's proposals in all three (same RoI samples), so an image's losses differ
only through the features the units produced. Per-image losses come from running the heads image
by image; the reported detector losses are their mean over the batch.
"""
from collections import defaultdict
from typing import Dict, List, Optional, Tuple

import torch
from detectron2.config import configurable
from detectron2.modeling import META_ARCH_REGISTRY
from detectron2.structures import ImageList

from ..meta_arch.rcnn import AdaptiveRCNN, event_storage as _storage, log_scalars
from .blockdrop import BlockDropResNet, blockdrop_reward, bounded_probs, detection_correct, reinforce_loss

__all__ = ["BlockDropRCNN"]


@META_ARCH_REGISTRY.register()
class BlockDropRCNN(AdaptiveRCNN):
    """AdaptiveRCNN with the BlockDrop policy trained by REINFORCE (see the module docstring)."""

    @configurable
    def __init__(self, *, penalty: float, entropy_weight: float, policy_loss_weight: float, tolerance: float,
                 **kwargs) -> None:
        super().__init__(**kwargs)
        if not tolerance >= 0:
            raise ValueError(f"cfg.MODEL.BLOCKDROP.CORRECT_TOLERANCE must be >= 0, got {tolerance}")
        self.penalty, self.entropy_weight, self.policy_loss_weight = penalty, entropy_weight, policy_loss_weight
        self.tolerance = tolerance
        if not isinstance(self.backbone, BlockDropResNet):
            raise ValueError("BlockDropRCNN needs cfg.MODEL.BACKBONE.NAME = 'build_blockdrop_resnet_backbone'")
        if self.backbone.phase == "curriculum":  # the detector is fixed while the policy learns
            for name, p in self.named_parameters():
                if not name.startswith("backbone.policy."):
                    p.requires_grad = False

    @classmethod
    def from_config(cls, cfg):
        ret = super().from_config(cfg)
        b = cfg.MODEL.BLOCKDROP
        ret.update(penalty=float(b.PENALTY), entropy_weight=float(b.ENTROPY_WEIGHT),
                   policy_loss_weight=float(b.POLICY_LOSS_WEIGHT), tolerance=float(b.CORRECT_TOLERANCE))
        return ret

    def per_image_losses(self, images: ImageList, gt: List, actions: torch.Tensor, seed: int,
                         proposals: Optional[List] = None) -> Tuple[Dict[str, torch.Tensor], List]:
        """Detector training losses of every image under ``actions`` (B,U): ({name: (B,)}, proposals).

        With ``proposals`` (one Instances per image) the box head is trained / scored on those instead of
        this pass's own RPN output, so that passes with different units compare the same RoIs.
        """
        devices = [self.device] if self.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(seed)
            self.backbone.set_image_sizes(images.image_sizes)
            features = self.backbone.forward_with_policy(images.tensor, actions)
            out: Dict[str, list] = defaultdict(list)
            used = []
            for i in range(len(images)):
                img = ImageList(images.tensor[i:i + 1], [images.image_sizes[i]])
                feats = {k: v[i:i + 1] for k, v in features.items()}
                props, rpn_losses = self.proposal_generator(img, feats, [gt[i]])
                props = props if proposals is None else [proposals[i]]
                _, det_losses = self.roi_heads(img, feats, props, [gt[i]])
                used.append(props[0])
                for k, v in {**rpn_losses, **det_losses}.items():
                    out[k].append(v)
        return {k: torch.stack(v) for k, v in out.items()}, used

    def forward(self, batched_inputs):
        if not self.training:
            return self.inference(batched_inputs)
        if "instances" not in batched_inputs[0]:
            raise ValueError("BlockDropRCNN training needs 'instances' (ground truth) in every input dict")
        images = self.preprocess_image(batched_inputs)
        gt = [x["instances"].to(self.device) for x in batched_inputs]
        bb = self.backbone
        probs = bb.policy_probs(images.tensor)  # (B,U)
        b, u = probs.shape
        q = bounded_probs(probs, bb.alpha)
        storage = _storage()
        if storage is not None:
            bb.iteration = storage.iter
        learn = bb.learnable_units()
        forced = (~learn)[None, :].expand(b, u)
        greedy = (probs.detach() >= 0.5) | forced
        sample = torch.bernoulli(q.detach()).bool() | forced
        seed = int(torch.randint(0, 2 ** 31 - 1, (1,)))
        with torch.no_grad():  # all units, then the greedy baseline on the same proposals and RoI samples
            ref, props = self.per_image_losses(images, gt, torch.ones_like(sample), seed)
            ref = sum(ref.values())
            base = sum(self.per_image_losses(images, gt, greedy, seed, props)[0].values())
        with torch.set_grad_enabled(bb.phase == "finetune"):
            det = self.per_image_losses(images, gt, sample, seed, props)[0]
        unused = bb.zero_unused_loss()
        correct = detection_correct(sum(v.detach() for v in det.values()), ref, self.tolerance)
        r_sample = blockdrop_reward(sample, correct, self.penalty)
        r_greedy = blockdrop_reward(greedy, detection_correct(base, ref, self.tolerance), self.penalty)
        loss_policy = reinforce_loss(q, sample, r_sample - r_greedy, mask=learn, entropy_weight=self.entropy_weight)
        losses = {k: v.mean() for k, v in det.items()}
        losses["loss_policy"] = self.policy_loss_weight * loss_policy + unused  # + 0 * unused params (DDP)
        self._log_policy(sample, correct, r_sample, learn)
        log_scalars(self.backbone.log_statistics())  # units run by the sampled policy
        return losses

    def _log_policy(self, sample, correct, reward, learn) -> None:
        storage = _storage()
        if storage is None:
            return
        storage.put_scalar("blockdrop/units_used", float(sample.float().sum(1).mean()), smoothing_hint=True)
        storage.put_scalar("blockdrop/correct", float(correct.float().mean()), smoothing_hint=True)
        storage.put_scalar("blockdrop/reward", float(reward.mean()), smoothing_hint=True)
        storage.put_scalar("blockdrop/curriculum_units", float(learn.sum()), smoothing_hint=False)
