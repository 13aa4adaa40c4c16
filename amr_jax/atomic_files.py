"""Files written whole or not at all: a temporary file of the writer's own beside the target, then a rename."""

from __future__ import annotations

import os
import pathlib
import tempfile


def write_text(path: str | os.PathLike, text: str) -> None:
  """Writes ``text`` to ``path`` atomically: readers see the old file or the new one, never a part.

  Several processes writing one path at once (array tasks sharing a workdir) each rename a whole file of their
  own; the last rename wins. A failure (a full disk) raises the ``OSError`` and leaves ``path`` as it was, with no
  temporary file behind.
  """
  path = pathlib.Path(path)
  # UTF-8 and no newline translation: the bytes are the text's on every platform (CSV rows end in \r\n).
  f = tempfile.NamedTemporaryFile("w", encoding="utf-8", newline="", dir=path.parent, prefix=f".{path.name}.",
                                  suffix=".tmp", delete=False)
  temporary = pathlib.Path(f.name)
  try:
    with f:  # a full disk may fail the write or only the flush at close
      f.write(text)
    os.replace(temporary, path)
  except BaseException:  # the target keeps its old contents; the partial copy goes
    temporary.unlink(missing_ok=True)
    raise
