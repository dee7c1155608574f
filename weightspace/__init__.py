"""weightspace: model zoos, permutation symmetry, canonicalization, merging, generation."""
import os as _os

# OpenMP threads that spin for long while they wait make torch crawl when another process
# shares the machine: one step of the generator's velocity network (2 threads, 2 cores)
# took 15-386 ms next to a second torch job with the default spin and 7.5 ms with a short
# spin (GOMP_SPINCOUNT=1000), 11 vs 7.9 ms next to a busy process, and 3.0 vs 3.2 ms on an
# idle machine (scripts/benchmarks/threads.py; passive waiting: 5-6 ms everywhere).
# OpenMP reads this when torch is first imported, so it applies whenever weightspace is
# imported first (always, for the CLI); an explicit OMP_WAIT_POLICY or GOMP_SPINCOUNT is
# kept.
if "OMP_WAIT_POLICY" not in _os.environ:
    _os.environ.setdefault("GOMP_SPINCOUNT", "1000")

__version__ = "0.1.0"
