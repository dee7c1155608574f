"""weightspace: model zoos, permutation symmetry, canonicalization, merging, generation.

Importing it sets no environment variable and installs no warnings filter; the CLI, which
owns its process, tunes OpenMP for a shared machine (:mod:`weightspace.cli.main`)."""

__version__ = "0.1.0"
