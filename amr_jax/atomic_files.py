"""Files written whole or not at all: a temporary file of the writer's own beside the target, then a rename."""

from __future__ import annotations

import os
import pathlib
import tempfile


def write_text(path: str | os.PathLike, text: str) -> None:
  """Writes ``text`` to ``path`` atomically: readers see the old file or the new one, never a part.

  Several processes writing one path at once (array tasks sharing a workdir) each rename a whole file of their
  own; the last rename wins.
  """
  path = pathlib.Path(path)
  with tempfile.NamedTemporaryFile("w", dir=path.parent, prefix=f".{path.name}.", suffix=".tmp", delete=False) as f:
    f.write(text)
  os.replace(f.name, path)
