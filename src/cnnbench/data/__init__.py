"""Data layer: raw formats -> decoded uint8 cache -> batches on the device.

    load_dataset(name, ...)  -> Dataset  (readers/ + cache.py + splits.py; dataset.py)
    BatchLoader(split, ...)  -> uint8 (B, C, H, W) batches             (loader.py)
    BatchPipeline(...)       -> float32 model input                     (pipeline.py)
"""

from cnnbench.data.dataset import Dataset, Split, load_dataset, prepare_dataset
from cnnbench.data.loader import BatchLoader
from cnnbench.data.pipeline import BatchPipeline
from cnnbench.data.readers import ClassInfo, dataset_names

__all__ = ["BatchLoader", "BatchPipeline", "ClassInfo", "Dataset", "Split", "dataset_names", "load_dataset",
           "prepare_dataset"]
