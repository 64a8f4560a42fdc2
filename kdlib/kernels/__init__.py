"""Triton kernels of the distillation losses, one module per loss family.

Each module is the Triton twin of the ``kdlib.losses`` module of the same stem: the
``@triton.jit`` kernel, its autograd Function and the functions users call, which take
the same arguments as the reference of the same name plus ``backend=``:

* ``kd``: ``kd_loss``, ``ce_kd_loss``;  ``binary_kl``: ``binary_kl_loss``, ``binary_kl_norm_loss``;
  ``dkd``: ``dkd_loss``;  ``sparse_kd``: ``sparse_kd_loss``;  ``fused_linear_kd``: ``fused_linear_kd_loss``.

``backend``: ``auto`` (Triton on CUDA, the PyTorch reference elsewhere),
``triton`` (error where it cannot run), ``torch`` (the reference). The dispatch is
explicit and per family: ``kdlib.kernels.utils.resolve_backend`` turns
``runtime.kernels`` into ``"triton"`` or ``"torch"`` once, and a method that chose
Triton imports the kernel modules of its own loss families (``Method.kernels``). This
package re-exports nothing and never imports triton; only the kernel modules do, so
``TRITON_INTERPRET=1`` (Triton's CPU interpreter, used by the tests) only has to be set
before the first of them is imported.
"""
