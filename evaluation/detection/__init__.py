"""Detection transfer (MoCo v2 arXiv 2003.04297, Table 1's VOC column): fine-tune a torchvision
Faster R-CNN on a checkpoint's encoder and score it with COCO-style AP."""
