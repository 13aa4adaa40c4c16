"""CLAP2016 for ``tfds build datasets/clap2016 --config=face --manual_dir=DIR --data_dir=DIR``, run from the
repository root (options as JSON: ``--config='{"name": "face", "ignore_list": "/abs/ignore_list.txt"}'``).

The builder is :class:`amr_jax.data.clap2016_builder.Builder`. ``tfds build``
imports this file as ``clap2016.clap2016_dataset_builder`` and takes the one
builder class defined in it, so the class is subclassed here, not imported: it
builds the same dataset (name ``clap2016``, configs, version, features,
folders, README and CITATIONS.bib). Not registered: amr_jax's class holds the
name ``clap2016`` in TFDS's registry, which refuses a second class of that name.
"""

from amr_jax.data import clap2016_builder


class Builder(clap2016_builder.Builder, skip_registration=True):
  """CLAP2016 (APPA-REAL release) (:class:`amr_jax.data.clap2016_builder.Builder`)."""
