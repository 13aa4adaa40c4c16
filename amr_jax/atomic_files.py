"""Files written whole or not at all: a temporary file of the writer's own beside the target, then a rename."""

from __future__ import annotations

import contextlib
import os
import pathlib
import tempfile
from typing import Iterator

_UMASK = os.umask(0o22)
os.umask(_UMASK)  # read once, at import: os.umask can only be read by setting it


@contextlib.contextmanager
def replacing(path: str | os.PathLike) -> Iterator[pathlib.Path]:
  """Yields a new temporary path beside ``path`` to write; it becomes ``path`` when the block ends.

  Readers see the old file or the new one, never a part. The temporary name ends in ``path``'s suffix, so
  writers that choose a format by the extension (Pillow, Matplotlib) choose the same. Several processes writing
  one path at once (array tasks sharing a workdir) each rename a whole file of their own; the last rename wins.
  A failure in the block or in the rename (a full disk) propagates and leaves ``path`` as it was, with no
  temporary file behind; an ``OSError`` comes back with ``path`` as its filename. The file gets the mode of the one it replaces, or the umask's.
  """
  path = pathlib.Path(path)
  handle, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}.", suffix=f".tmp{path.suffix}")
  os.close(handle)
  temporary = pathlib.Path(name)
  try:
    with naming_failures(path, replace_name=True):  # named by the file meant, not the temporary
      # mkstemp's file is private (0600); the result gets an earlier file's mode, else what open() would give.
      os.chmod(temporary, path.stat().st_mode & 0o7777 if path.exists() else 0o666 & ~_UMASK)
      yield temporary
      os.replace(temporary, path)
  except BaseException:  # the target keeps its old contents; the partial copy goes
    temporary.unlink(missing_ok=True)
    raise


@contextlib.contextmanager
def naming_failures(path: str | os.PathLike, *, replace_name: bool = False) -> Iterator[None]:
  """An ``OSError`` raised in the block (a full disk) comes back with ``path`` as its filename: file objects and
  encoders raise without one. With ``replace_name``, a name it has (a temporary file's) is replaced too."""
  try:
    yield
  except OSError as error:
    if error.errno is None or (error.filename is not None and not replace_name):
      raise
    raise OSError(error.errno, error.strerror or str(error), os.fspath(path)) from error


def write_text(path: str | os.PathLike, text: str) -> None:
  """Writes ``text`` to ``path`` whole or not at all (:func:`replacing`), as UTF-8 with no newline translation."""
  with replacing(path) as temporary:
    # The bytes are the text's on every platform (CSV rows end in \r\n); a full disk may fail the write or
    # only the flush at close, both inside the block.
    with open(temporary, "w", encoding="utf-8", newline="") as f:
      f.write(text)
