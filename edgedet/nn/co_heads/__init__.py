"""Co-DETR's training-only auxiliary heads (Zong et al. 2023): anchors, assigners, RoIAlign,
ATSS and Faster R-CNN heads over a feature pyramid built from the DETR encoder, and the
customised positive queries they hand to the decoder. None of it is used at inference."""
