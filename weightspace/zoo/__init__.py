"""Model zoos: datasets with fixed splits, batched multi-seed training, zoo directories."""
from .datasets import DATASETS, Dataset, DatasetError, check_fits, load_dataset
from .evaluation import evaluate_zoo
from .importer import import_zoo
from .runner import chunks, load_grid, make_settings, plan, train_zoo
from .store import Zoo, ZooError
from .train import HParams, TrainError, evaluate, metrics, train_batched, train_sequential

__all__ = ["DATASETS", "Dataset", "DatasetError", "HParams", "TrainError", "Zoo", "ZooError",
           "check_fits", "chunks", "evaluate", "evaluate_zoo", "import_zoo", "load_dataset",
           "load_grid", "make_settings", "metrics", "plan", "train_batched",
           "train_sequential", "train_zoo"]
