"""_policy: see the package docstring."""
