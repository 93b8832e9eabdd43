"""Object-detection evaluation: COCO mAP, the FOMO centroid F1, and their plots."""
