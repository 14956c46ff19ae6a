"""_spending: see the package docstring."""
