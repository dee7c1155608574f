"""Generate: flow matching over a canonical zoo, sampling new networks, and the audit."""
from .audit import audit
from .encoding import Encoding, EncodingError
from .flow import METHODS, TokenVelocity, Velocity, make_velocity, sample, train_flow
from .pipeline import fit_generator, load_generator, sample_zoo
from .run import run_generation

__all__ = ["METHODS", "Encoding", "EncodingError", "TokenVelocity", "Velocity", "audit",
           "fit_generator", "load_generator", "make_velocity", "run_generation", "sample",
           "sample_zoo", "train_flow"]
