"""Model zoos: datasets with fixed splits, batched multi-seed training, zoo directories.

Exports are imported on first use (:mod:`weightspace._lazy`)."""
from .._lazy import lazy_package

lazy_package(__name__, {
    **dict.fromkeys(["DATASETS", "Dataset", "DatasetError", "check_fits", "load_dataset"],
                    "datasets"),
    "evaluate_zoo": "evaluation",
    "import_zoo": "importer",
    **dict.fromkeys(["chunks", "load_grid", "make_settings", "plan", "train_zoo"], "runner"),
    **dict.fromkeys(["Zoo", "ZooError"], "store"),
    **dict.fromkeys(["HParams", "TrainError", "OPTIMIZERS", "SCHEDULES"], "hparams"),
    **dict.fromkeys(["Start", "evaluate", "metrics", "train_batched", "train_sequential"],
                    "train"),
    **dict.fromkeys(["continue_training", "load_start", "save_start"], "spawn"),
    **dict.fromkeys(["chance_threshold", "trained_status"], "health"),
})
