"""Per-image unit skipping families: ConvNet-AIG (gates) and BlockDrop (policy network) over a shared
``base`` (:class:`~.base.UnitSkippingResNet`), and BlockDrop's REINFORCE detector."""
