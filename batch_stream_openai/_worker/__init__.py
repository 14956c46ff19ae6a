"""_worker: see the package docstring."""
