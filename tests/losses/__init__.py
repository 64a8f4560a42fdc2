"""Tests of kdlib.losses, one module per family."""
