"""Evaluation: predictions and metrics of a model on a split (:mod:`amr_jax.evaluation.evaluate`), the CSV and PNG
reports (:mod:`amr_jax.evaluation.reports`), and two models compared on the same images
(:mod:`amr_jax.evaluation.paired_comparison`). Nothing here imports training."""
