"""Label-distribution losses for age estimation, and for any ordinal target on a grid of labels.

Every loss is a pure function of ``logits`` (``[..., num_classes]``) and
``labels`` (ages or other labels, ``[...]``) that returns one value per example (``[...]``);
the caller reduces, as in optax. Class ``j`` stands for the label
``start + step * j``: for ages the age ``start_age + j`` (step 1, the default); for
another target the grid's ``label_start`` and ``label_step``, e.g. attractiveness
scores 1.0, 1.1, ..., 5.0 with ``num_classes=41, label_start=1, label_step=0.1``
(:func:`label_grid`). All functions are safe under ``jax.jit``, ``jax.grad``,
``jax.vmap`` and ``jax.pmap``.

Each loss has a ``*_terms`` twin that returns a ``dict`` holding the separate
(unweighted) terms next to the weighted total under ``"loss"``, so training
can log the terms without computing the loss twice::

  terms = adaptive_mean_residue_terms(logits, ages)
  loss = terms["loss"].mean()          # == adaptive_mean_residue_loss(...).mean()
  log = jax.tree.map(jnp.mean, terms)  # cross_entropy, mean, residue, top_k, loss

Conventions shared by all losses:

* ``logits`` need at least 2 classes; arguments whose values are known at
  trace time (``eps``, a Python-number or concrete ``sigma``) are checked
  then, and a bad one raises ``ValueError``. A traced ``sigma`` cannot be
  checked: see :func:`dldl_loss` for what a negative one does.
* ``labels`` are ages (or other labels), integer or real. The class of a label is
  ``round((label - start) / step)`` (``round`` halves to even, as NumPy and Python
  do). Terms that use the label itself (mean, variance, L1, Gaussian target)
  use the unrounded label, in label units: the mean term is in squared label
  units, the variance too, the L1 and ``sigma`` in label units. Counts of
  classes (the adaptive top-K, the fixed ``k``) stay counts of classes.
* A label outside ``[start, start + step * (num_classes - 1)]`` is not an
  error for the losses: its class is clamped to the nearest end class, while
  the label terms still use the label as given. :func:`check_label_range`
  refuses such labels, on the host when data is loaded, or inside ``jit``
  under ``jax.experimental.checkify.checkify``.
* Logits of several models for one batch, ``[models, batch, C]``, with
  labels ``[batch]``: ``jax.vmap(loss, in_axes=(0, None))(logits, labels)``
  gives ``[models, batch]``. Bind keyword arguments before, since ``vmap``
  maps every keyword argument over its first axis:
  ``jax.vmap(functools.partial(loss, start_age=16), in_axes=(0, None))``.
* Computation is done in at least float32 whatever the logits' dtype
  (bfloat16 logits give float32 losses and bfloat16 gradients; float64 stays
  float64), which keeps values and gradients finite for logits up to +-1e4.

The losses live in :mod:`amr_jax.losses.mean_residue` (cross-entropy,
mean-residue, adaptive mean-residue, mean-variance) and
:mod:`amr_jax.losses.dldl` (DLDL, DLDL-v2); what they share in
:mod:`amr_jax.losses.common`. Import them from here.
"""

from amr_jax.losses.common import (Array, ArrayLike, LabelRangeError, LossTerms, check_label_range, expected_age,
                                   gaussian_label_distribution, label_class, label_grid)
from amr_jax.losses.dldl import KLReduction, dldl_loss, dldl_terms, dldl_v2_loss, dldl_v2_terms
from amr_jax.losses.mean_residue import (ResidueForm, adaptive_mean_residue_loss, adaptive_mean_residue_terms,
                                         cross_entropy_loss, mean_residue_loss, mean_residue_terms, mean_variance_loss,
                                         mean_variance_terms)

__all__ = [
    "LabelRangeError",
    "adaptive_mean_residue_loss",
    "adaptive_mean_residue_terms",
    "check_label_range",
    "cross_entropy_loss",
    "dldl_loss",
    "dldl_terms",
    "dldl_v2_loss",
    "dldl_v2_terms",
    "expected_age",
    "gaussian_label_distribution",
    "label_class",
    "label_grid",
    "mean_residue_loss",
    "mean_residue_terms",
    "mean_variance_loss",
    "mean_variance_terms",
]

