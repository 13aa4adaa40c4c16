"""Ctrl-C as a request: a training run stops after its current step, with a checkpoint, not wherever the signal lands.

A ``KeyboardInterrupt`` raised in the middle of a checkpoint write or of JAX's
and Orbax's threads could leave the process waiting on them for ever. With
:func:`install`, the first SIGINT only sets a flag, which the training loop
reads between steps (:func:`requested`); a second SIGINT interrupts at once,
as Python's default does.
"""

from __future__ import annotations

import signal
import sys
import threading

_REQUESTED = threading.Event()


def install() -> None:
  """Makes the first SIGINT a stop request; called by the command-line tools in their main thread."""

  def request(signum, frame):
    _REQUESTED.set()
    signal.signal(signal.SIGINT, signal.default_int_handler)
    print("stopping after the current step (Ctrl-C again to stop at once) ...", file=sys.stderr, flush=True)

  signal.signal(signal.SIGINT, request)


def requested() -> bool:
  """Whether a stop was requested."""
  return _REQUESTED.is_set()
