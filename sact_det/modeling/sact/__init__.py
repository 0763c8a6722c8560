"""The SACT / ACT family: detectron2's ResNet whose chosen stages halt adaptively (``backbone``), its exact
per-image FLOPs, halting calibration, CIFAR networks and tracing / export."""
