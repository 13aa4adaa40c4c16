"""Sphinx configuration of the amr_jax reference: the guide pages (Markdown, MyST) and the API from the docstrings.

Build (warnings are errors, as CI builds it): python -m sphinx -W --keep-going -b html docs docs/_build/html
"""

import pathlib
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # amr_jax from the checkout, as the development install has it

project = "amr_jax"
author = "the amr_jax developers"
extensions = [
    "myst_parser",  # the guide pages are Markdown
    "sphinx.ext.autodoc",  # the API pages, from the docstrings
    "sphinx.ext.napoleon",  # the docstrings' Google-style Args/Returns/Raises sections
    "sphinx.ext.mathjax",  # their :math: roles
    "sphinx.ext.viewcode",
]
source_suffix = {".md": "markdown"}
exclude_patterns = ["_build"]
html_theme = "furo"
html_title = "amr_jax"

autodoc_member_order = "bysource"
autodoc_typehints = "description"
autodoc_default_options = {"members": True, "show-inheritance": True}
napoleon_google_docstring = True
napoleon_numpy_docstring = False
napoleon_use_ivar = True  # "Attributes:" as a field list: autodoc documents the attributes themselves too
myst_heading_anchors = 3  # links to a section of a page: [text](page.md#section-title)
myst_enable_extensions = ["dollarmath"]
# Every cross-reference to amr_jax must resolve: a renamed function breaks the build, not a link. Other projects'
# names (in type hints) cannot: their inventories would be downloaded, and the build is offline.
nitpicky = True
nitpick_ignore_regex = [
    (r"py:.*", r"(Union\[)?(numpy|np|jax|jaxlib|flax|optax|orbax|os|pathlib|collections|ml_collections|matplotlib|"
               r"typing|tensorflow_datasets|concurrent|threading|argparse|PIL)\b.*"),
    (r"py:class", r"ArrayTree"),  # optax's alias in optimizer signatures
    (r"py:class", r"utils\.VersionOrStr"),  # TFDS's alias, in the fields Clap2016Config inherits from BuilderConfig
]
