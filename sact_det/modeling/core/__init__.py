"""What every backbone family stands on (imports no family): the adaptive-backbone contract, convolution
FLOP rules, freezing, plain detectron2 ResNet parts and the one ponder-map summation."""
