"""Torch-free parsing of labelled datasets (COCO, Pascal VOC, YOLO) into `ImageRecord`s.

One parser per format and one set of rules, shared by `edgedet train`/`eval` (which wrap the
records in a torch dataset) and the runtime's `val`/`predict --data`/`benchmark --data`.
"""
from runtime.annotations.common import DataFormatError, DatasetError, ImageRecord
from runtime.annotations.spec import DataSpec, data_section_from_yaml, read_split

__all__ = ["DataFormatError", "DataSpec", "DatasetError", "ImageRecord", "data_section_from_yaml", "read_split"]
