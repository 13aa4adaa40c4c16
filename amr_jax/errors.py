"""The mistakes a run reports to its user in one line: in the config, the data, the workdir or a checkpoint.

``run_train.py`` and ``run_eval.py`` print a :class:`RunError` as ``error: <message>`` and exit with status 1;
any other exception is a bug and keeps its traceback. Each class also derives from the built-in exception
that code catching errors without amr_jax would expect (``ValueError``, ``FileNotFoundError``).
"""


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


class Interrupted(RunError):
  """A run stopped at the user's request (Ctrl-C) after saving its checkpoint; the command line exits with 130."""
