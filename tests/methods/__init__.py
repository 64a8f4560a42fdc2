"""Tests of kdlib.methods, one module per family."""
