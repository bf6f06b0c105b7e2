"""Datasets (COCO, Pascal VOC, YOLO, synthetic shapes), box-consistent transforms and batching."""
from edgedet.data.builder import DATASET_FORMATS, build_dataset, list_formats
from edgedet.data.collate import build_dataloader, collate_fn
from edgedet.data.io import DataFormatError
from edgedet.data.records import DetectionDataset, ImageRecord
from edgedet.data.synthetic import generate_synthetic, render_synthetic_video
from edgedet.data.transforms import build_transforms, deploy_transform

__all__ = [
    "DATASET_FORMATS",
    "DataFormatError",
    "DetectionDataset",
    "ImageRecord",
    "build_dataloader",
    "build_dataset",
    "build_transforms",
    "collate_fn",
    "deploy_transform",
    "generate_synthetic",
    "list_formats",
    "render_synthetic_video",
]
