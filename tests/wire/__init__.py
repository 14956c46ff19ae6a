"""Tests of `_wire/`: bodies and answers."""
