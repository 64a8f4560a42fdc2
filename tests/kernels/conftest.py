"""The kernel tests run where no GPU is: in Triton's CPU interpreter.

TRITON_INTERPRET=1 must be set before the first `import triton`, which only the kernel
modules do (kdlib imports them on use); pytest imports this file before any test module
of this folder. The variable is restored when this folder's tests end. The interpreter
is slow per operation, so the shapes stay tiny (a few rows, up to 5000 columns: more
than one 4096-column block).
"""
from __future__ import annotations

import os
import sys

import pytest
import torch

_PREVIOUS = os.environ.get("TRITON_INTERPRET")
if not torch.cuda.is_available():
    os.environ["TRITON_INTERPRET"] = "1"
    if "triton" in sys.modules:
        from triton.runtime.interpreter import InterpretedFunction

        if not isinstance(sys.modules["triton"].language.standard.max, InterpretedFunction):
            raise RuntimeError("triton was imported before TRITON_INTERPRET=1 was set; run tests/kernels alone")


@pytest.fixture(scope="package", autouse=True)
def _restore_interpret():
    yield
    if _PREVIOUS is None:
        os.environ.pop("TRITON_INTERPRET", None)
    else:
        os.environ["TRITON_INTERPRET"] = _PREVIOUS

