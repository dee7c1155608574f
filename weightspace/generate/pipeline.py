"""The old home of fit and sample, kept so that existing imports work: fitting is in
:mod:`.fit`, the generator directory in :mod:`.store`, the choice of sampling settings in
:mod:`.choose`, sampling in :mod:`.sample`."""
from .choose import (NOVELTY_SLACK, SWEEP_CALIBRATION, SWEEP_MIN_SAMPLES,  # noqa: F401
                     SWEEP_NUMBERS, SWEEP_SAMPLES, Setting, candidates, choose_guidance,
                     choose_setting, sweep_samples)
from .config import MIX_GRID  # noqa: F401
from .fit import condition_values, fit_generator  # noqa: F401
from .sample import MAX_SAMPLES, sample_zoo  # noqa: F401
from .sample import recalibrated_states as _bn_fix  # noqa: F401
from .store import (ZOO_ERRORS, check_generator_config, load_generator,  # noqa: F401
                    load_zoo_states, scan_zoo)
