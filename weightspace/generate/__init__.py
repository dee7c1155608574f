"""Generate: flow matching over a canonical zoo, sampling new networks, and the audit.

Exports are imported on first use (:mod:`weightspace._lazy`)."""
from .._lazy import lazy_package

lazy_package(__name__, {
    "audit": "audit",
    **dict.fromkeys(["Encoding", "EncodingError"], "encoding"),
    **dict.fromkeys(["METHODS", "TokenVelocity", "Velocity", "make_velocity", "sample",
                     "train_flow"], "flow"),
    **dict.fromkeys(["fit_generator", "load_generator", "sample_zoo"], "pipeline"),
    "run_generation": "run",
})
