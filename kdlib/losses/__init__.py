"""PyTorch reference implementations of the logit-distillation losses, one module per family.

These modules are the ground truth the rest of kdlib (and every fused kernel in
`kdlib.kernels`, which keeps the same module stems and function names) is checked
against, so they favour clarity and numerical robustness over speed. Formulas follow
``docs/methods.md`` (the project's specification). Import the family you call
(``from kdlib.losses import kd``): this package re-exports nothing, so a method's code
identity holds exactly the loss families it runs.

Conventions shared by every function:

* ``student`` / ``teacher`` / ``logits`` are ``(N, C)`` floating-point logits,
  ``target`` is ``(N,)`` integer class labels.
* The result is a scalar *batch mean*: sum over the C classes, mean over the N
  rows.
* Computation runs in float32 at least: fp16/bf16 inputs are upcast and the loss
  is returned in float32; float64 inputs stay float64 (so ``gradcheck`` works).
* Teacher logits are constants: they are detached inside, no gradient reaches
  them.
* Every log-probability comes from ``log_softmax`` / ``logsigmoid`` /
  ``softplus`` / ``logsumexp``; nothing takes ``log`` of a clamped probability,
  so values and gradients stay finite and correct at ``|logit / T| = 100`` in
  float32.
* Bad shapes, dtypes or temperatures raise ``ValueError`` naming the argument
  (``kdlib.losses.checks``). Label *values* are not range-checked here (that would
  force a device sync); an out-of-range label fails inside ``cross_entropy`` / ``gather``.
"""
