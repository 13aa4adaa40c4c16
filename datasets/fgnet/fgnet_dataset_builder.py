"""FG-NET for ``tfds build datasets/fgnet --manual_dir=DIR --data_dir=DIR``, run from the repository root.

The builder is :class:`amr_jax.data.fgnet_builder.Builder`. ``tfds build`` imports
this file as ``fgnet.fgnet_dataset_builder`` and takes the one builder class
defined in it, so the class is subclassed here, not imported: it builds the
same dataset (name ``fgnet``, version, features, folder, README and
CITATIONS.bib). Not registered: amr_jax's class holds the name ``fgnet`` in
TFDS's registry, which refuses a second class of that name.
"""

from amr_jax.data import fgnet_builder


class Builder(fgnet_builder.Builder, skip_registration=True):
  """FG-NET with subject ids and landmarks (:class:`amr_jax.data.fgnet_builder.Builder`)."""
