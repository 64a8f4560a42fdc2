"""Tests of kdlib.kernels, one module per family."""
