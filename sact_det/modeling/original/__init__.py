"""The original SACT TensorFlow networks (ImageNet ResNet v2, CIFAR ResNet) inside the SACT family, with
TF layers PyTorch lacks and the comparison against the original code's outputs (``oracle``)."""
