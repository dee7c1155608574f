"""weightspace: model zoos, permutation symmetry, canonicalization, merging, generation."""
import os as _os

# OpenMP threads that spin while they wait make torch collapse on a machine where another
# process holds a core: one flow-matching step of the demo's generator took 326 ms with two
# spinning threads next to one busy process, 5 ms with passive waiting and 4 ms on one
# thread (scripts/benchmarks/threads.py). The OpenMP runtime reads this when torch is first
# imported, so it takes effect when weightspace is imported first (always, for the CLI); an
# explicit OMP_WAIT_POLICY is kept.
_os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

__version__ = "0.1.0"
