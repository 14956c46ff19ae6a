"""files: see the package docstring."""
