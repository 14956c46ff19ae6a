"""_batchapi: see the package docstring."""
