"""Training: the pure step and its compiled forms (:mod:`amr_jax.training.step_functions`), the loop over a group of
folds (:mod:`amr_jax.training.fold_loop`) and each fold's reports (:mod:`amr_jax.training.fold_evaluation`), with
what they use: the train state a config builds, optimizers, stages, where folds live on the devices, checkpoints,
model selection, logs and Ctrl-C.

:func:`amr_jax.experiment.train_and_evaluate` drives them.
"""
