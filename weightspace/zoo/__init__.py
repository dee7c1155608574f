"""Model zoos: datasets with fixed splits, batched multi-seed training, zoo directories."""
from .datasets import DATASETS, Dataset, DatasetError, check_fits, load_dataset
from .runner import chunks, load_grid, make_settings, plan, train_zoo
from .store import Zoo, ZooError
from .train import HParams, TrainError, evaluate, metrics, train_batched, train_sequential

__all__ = ["DATASETS", "Dataset", "DatasetError", "HParams", "TrainError", "Zoo", "ZooError",
           "check_fits", "chunks", "evaluate", "load_dataset", "load_grid", "make_settings",
           "metrics", "plan", "train_batched", "train_sequential", "train_zoo"]
