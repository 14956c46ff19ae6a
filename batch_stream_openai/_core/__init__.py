"""_core: see the package docstring."""
