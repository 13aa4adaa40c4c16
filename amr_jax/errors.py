"""The mistakes a run reports to its user in one line: in the config, the data, the workdir, a checkpoint,
or the storage it writes to.

``run_train.py`` and ``run_eval.py`` print a :class:`RunError` as ``error: <message>`` and exit with status 1;
any other exception is a bug and keeps its traceback. Each class also derives from the built-in exception
that code catching errors without amr_jax would expect (``ValueError``, ``FileNotFoundError``).
"""

import errno
import os


class RunError(Exception):
  """A mistake the user can fix; the message says what was found, where, and what to do."""


class ConfigError(RunError, ValueError):
  """A config field (or command-line argument) with a value the run cannot use; the message names the field."""


class DataError(RunError, ValueError):
  """Data that is not what it claims: a malformed file, a label out of range, a build of another source."""


class MissingDataError(DataError, FileNotFoundError):
  """A data file or folder that should exist and does not."""


class WorkdirError(RunError, ValueError):
  """A workdir that cannot be used: not a folder, not writable, or holding another run."""


class StorageError(RunError, OSError):
  """A file or folder that cannot be written for the machine's reasons: a full disk, a quota, a read-only folder.

  ``str()`` is the one-line message (``OSError``'s errno formatting is not used).
  """

  def __str__(self) -> str:
    return str(self.args[0]) if self.args else ""


#: The errno values of :class:`StorageError`: the machine's state, not a mistake in the program.
STORAGE_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS, errno.EACCES, errno.EPERM,
                            errno.EIO})
#: How libraries that wrap such failures in other exceptions (TFDS's RuntimeError) spell them.
STORAGE_MESSAGES = tuple(os.strerror(number) for number in sorted(STORAGE_ERRNOS))


def storage_reason(error: BaseException) -> str | None:
  """The machine's reason when ``error`` (or an exception it was raised from) failed on storage, else None."""
  while error is not None:
    if isinstance(error, OSError) and error.errno in STORAGE_ERRNOS:
      return error.strerror or os.strerror(error.errno)
    for message in STORAGE_MESSAGES:
      if message in str(error):
        return message
    error = error.__cause__ or error.__context__
  return None


class Interrupted(RunError):
  """A run stopped at the user's request (Ctrl-C) after saving its checkpoint; the command line exits with 130."""
