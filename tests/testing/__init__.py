"""Tests of `testing/`: the bundled server."""
