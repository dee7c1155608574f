"""Deprecated location: the stacked models moved to :mod:`weightspace.stacked` (training and
evaluation share them). Kept so that existing imports work."""
from ..stacked import *  # noqa: F401,F403
from ..stacked import Stack, unsupported  # noqa: F401
