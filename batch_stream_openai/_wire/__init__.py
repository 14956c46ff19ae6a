"""_wire: see the package docstring."""
