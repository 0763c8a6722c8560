"""Models over the adaptive-backbone contract: the detector (``rcnn.AdaptiveRCNN``) and the classifier
(``classifier.AdaptiveClassifier``)."""
