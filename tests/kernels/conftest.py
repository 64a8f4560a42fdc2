"""The kernel tests run where no GPU is: in Triton's CPU interpreter.

TRITON_INTERPRET=1 must be set before the first `import triton`, which only the kernel
modules do (kdlib imports them on use); pytest imports this file while it collects, before
any test runs, and the variable stays set for the session: under pytest-xdist a worker runs
this folder's files between others', and `import triton` happens once per process. It changes
nothing elsewhere (`runtime.kernels: auto` is the PyTorch reference on CPU either way; tests
of the error without it unset it with monkeypatch). The interpreter
is slow per operation, so the shapes stay tiny (a few rows, up to 5000 columns: more
than one 4096-column block).
"""
from __future__ import annotations

import os
import sys

import torch

if not torch.cuda.is_available():
    os.environ["TRITON_INTERPRET"] = "1"
    if "triton" in sys.modules:
        from triton.runtime.interpreter import InterpretedFunction

        if not isinstance(sys.modules["triton"].language.standard.max, InterpretedFunction):
            raise RuntimeError("triton was imported before TRITON_INTERPRET=1 was set; run tests/kernels alone")


