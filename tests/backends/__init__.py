"""Tests of `_backends/`: Ray."""
