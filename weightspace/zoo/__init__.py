"""Model zoos: datasets with fixed splits (and, later, batched multi-seed training)."""
from .datasets import DATASETS, Dataset, DatasetError, load_dataset

__all__ = ["DATASETS", "Dataset", "DatasetError", "load_dataset"]
