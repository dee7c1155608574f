"""Generate: flow matching over a canonical zoo, sampling new networks, and the audit.

Modules, one idea each: ``config`` (typed settings: :class:`FlowSettings`,
:class:`SampleSettings`, :class:`Condition`, the recipe's defaults), ``encoding`` (zoo <->
vectors) with ``pca`` (the basis on disk) and ``rawio`` (safetensors by hand), ``flow``
(velocity networks, flow matching, ODE sampling), ``store`` (the generator directory and
the zoo it reads), ``fit``, ``choose`` (sampling settings chosen on validation), ``sample``,
``novelty``, ``audit``, ``run`` (the whole path). Exports are imported on first use
(:mod:`weightspace._lazy`)."""
from .._lazy import lazy_package

lazy_package(__name__, {
    **dict.fromkeys(["AuditReport", "audit"], "audit"),
    **dict.fromkeys(["Condition", "FlowSettings", "GenerateError", "ODE_SOLVERS",
                     "SampleSettings"], "config"),
    **dict.fromkeys(["Encoding", "EncodingError"], "encoding"),
    "METHODS": "config",
    **dict.fromkeys(["TokenVelocity", "Velocity", "make_velocity", "sample",
                     "train_flow"], "flow"),
    **dict.fromkeys(["FitResult", "fit_generator"], "fit"),
    **dict.fromkeys(["SampleResult", "sample_zoo"], "sample"),
    "load_generator": "store",
    **dict.fromkeys(["RunResult", "run_generation"], "run"),
})
