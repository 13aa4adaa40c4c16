"""SCUT-FBP5500 for ``tfds build datasets/scut_fbp5500 --manual_dir=DIR --data_dir=DIR``, run from the repository
root.

The builder is :class:`amr_jax.data.scut_fbp5500_builder.Builder`. ``tfds build``
imports this file as ``scut_fbp5500.scut_fbp5500_dataset_builder`` and takes the
one builder class defined in it, so the class is subclassed here, not imported:
it builds the same dataset (name ``scut_fbp5500``, version, features, folder,
README and CITATIONS.bib). Not registered: amr_jax's class holds the name
``scut_fbp5500`` in TFDS's registry, which refuses a second class of that name.
"""

from amr_jax.data import scut_fbp5500_builder


class Builder(scut_fbp5500_builder.Builder, skip_registration=True):
  """SCUT-FBP5500 (:class:`amr_jax.data.scut_fbp5500_builder.Builder`)."""
