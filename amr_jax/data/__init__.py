"""Data: the datasets' file layouts and TFDS builders' shared code, a run's data and folds, decoding, batches and
augmentation.

A run's data (:mod:`amr_jax.data.training_data`) is built once with TFDS
(:mod:`amr_jax.data.tfds_builders`, :mod:`amr_jax.data.dataset_sources`), decoded into arrays and cut into
subject-grouped folds (:mod:`amr_jax.data.folds`); :mod:`amr_jax.data.input_pipeline` batches them and
:mod:`amr_jax.data.augment` augments them on the device.
"""
