"""Generate: flow matching over a canonical zoo, sampling new networks, and the audit."""
from .audit import audit
from .encoding import Encoding, EncodingError
from .flow import METHODS, Velocity, sample, train_flow
from .pipeline import fit_generator, load_generator, sample_zoo

__all__ = ["METHODS", "Encoding", "EncodingError", "Velocity", "audit", "fit_generator",
           "load_generator", "sample", "sample_zoo", "train_flow"]
