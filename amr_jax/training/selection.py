"""Model selection on validation data: the checkpoint a run reports, chosen without looking at its test data.

``config.model_selection`` is ``"last"`` (the last step's model), ``"validation_mae"`` or ``"validation_eps"``
(CLAP2016's epsilon-error). With a validation criterion, every validation (each ``config.eval_every_epochs``, and
the last step) scores the model on the validation images: FG-NET's ``num_validation_subjects`` subjects drawn from
the fold's training subjects, CLAP2016's ``valid`` split. The best so far (lowest score; the earliest of equal ones)
is kept in ``<fold workdir>/selected_checkpoint/`` besides the latest checkpoints, and every score is written to
``<fold workdir>/selection.json``. The test images are read only once training has ended; ``test/`` then reports
the selected checkpoint, with the last step's test metrics beside it.

A run resumed from step ``L`` forgets the scores after ``L`` (it validates those steps again, and as training is
a function of ``(seed, step)``, scores them the same). The score is written before the checkpoint, and the step
being scored always has a regular checkpoint: a run killed between the two finds the selected step's checkpoint
there and copies it.
"""

from __future__ import annotations

import json
import pathlib
import shutil
from typing import Any

from amr_jax import atomic_files, errors, workdir_layout
from amr_jax.training import checkpoints

SELECTIONS = ("last", "validation_mae", "validation_eps")
FILE_NAME = workdir_layout.SELECTION_FILE
CHECKPOINT_FOLDER = workdir_layout.SELECTED_CHECKPOINT_FOLDER


def score(name: str, metrics: dict[str, Any]) -> float:
  """The criterion's value of validation ``metrics`` (lower is better)."""
  return float(metrics["mae"] if name == "validation_mae" else metrics["eps_error"])


def selects(name: str) -> bool:
  """Whether ``config.model_selection=name`` chooses among validations (anything but ``"last"``)."""
  return name != "last"


def reported_checkpoint(name: str) -> str:
  """The checkpoint a run of ``config.model_selection=name`` reports: ``"last"`` or ``"selected"``."""
  return "selected" if selects(name) else "last"


def for_fold(name: str, workdir: pathlib.Path, resume_step: int, regular: checkpoints.Checkpoints, template: Any, *,
             write_files: bool = True) -> "Selection | LastStep":
  """A fold's model selection as ``config.model_selection`` names it: :class:`LastStep` or :class:`Selection`."""
  if not selects(name):
    return LastStep()
  return Selection(workdir, name, resume_step, regular, template, write_files=write_files)


class LastStep:
  """``config.model_selection="last"``: the run reports its last step's model; validations choose nothing."""

  name = "last"
  selects = False  # so nothing extra is validated, saved or reported for it

  def consider(self, step: int, metrics: dict[str, Any], state: Any) -> bool:
    """A validation keeps nothing: always False."""
    del step, metrics, state
    return False


class Selection:
  """One fold's selection: the validation scores so far and the selected checkpoint.

  Args:
    workdir: the fold's workdir.
    name: ``config.model_selection`` (not ``"last"``).
    resume_step: the step the fold (re)starts from; scores of later steps are forgotten.
    regular: the fold's checkpoints, from which a selected step is recovered after a kill.
    template: a host training state, the shape of a checkpoint.
    write_files: whether this process writes ``selection.json`` (the first process; every process saves the
      checkpoint, as Orbax needs).
  """

  selects = True  # the last step is validated too, a validated step always has a regular checkpoint, and the
  # report says which step was chosen beside the last step's test metrics

  def __init__(self, workdir: pathlib.Path, name: str, resume_step: int, regular: checkpoints.Checkpoints,
               template: Any, *, write_files: bool = True):
    self.name = name
    self.write_files = write_files
    self.path = workdir / FILE_NAME
    self.directory = workdir / CHECKPOINT_FOLDER
    self.history: list[dict[str, Any]] = []
    if self.path.exists():
      try:
        stored = json.loads(self.path.read_text())
        history = [{"step": int(e["step"]), "score": float(e["score"])} for e in stored["history"]]
      except (OSError, ValueError, KeyError, TypeError) as error:
        raise errors.WorkdirError(f"{self.path}: cannot be read as the run's validation scores ({error}); delete "
                                  f"it and {self.directory} to validate again from the start.") from None
      self.history = [entry for entry in history if entry["step"] <= resume_step]
    self.store = checkpoints.Checkpoints(self.directory, max_to_keep=1)
    best = self.best
    if best is not None and self.store.latest_step() != best["step"]:
      if best["step"] not in regular.all_steps():
        raise errors.WorkdirError(
            f"{self.directory}: holds step {self.store.latest_step()}, but {self.path} selects step {best['step']}, "
            f"whose checkpoint is gone from {regular.directory}; delete both to validate again from the start.")
      self._keep(best["step"], regular.restore(template, best["step"]))

  @property
  def best(self) -> dict[str, Any] | None:
    """``{"step", "score"}`` of the selected step so far (the lowest score, the earliest on ties)."""
    return min(self.history, key=lambda entry: (entry["score"], entry["step"])) if self.history else None

  def record(self, step: int, value: float, state: Any) -> bool:
    """Adds ``step``'s score; keeps ``state`` (host or device) when it is the best so far. Returns whether it is."""
    before = self.best
    self.history = [entry for entry in self.history if entry["step"] != step] + [{"step": step, "score": value}]
    improved = before is None or value < before["score"]
    self._write()
    if improved:
      self._keep(step, state)
    return improved

  def consider(self, step: int, metrics: dict[str, Any], state: Any) -> bool:
    """Scores ``step``'s validation ``metrics`` on the criterion and records it (:meth:`record`)."""
    return self.record(step, score(self.name, metrics), state)

  def restore(self, template: Any) -> Any:
    return self.store.restore(template)

  def summary(self) -> dict[str, Any]:
    best = self.best
    return {"model_selection": self.name, "selected_step": best["step"], f"selected_{self.name}": best["score"]}

  def _keep(self, step: int, state: Any) -> None:
    if any(existing >= step for existing in self.store.all_steps()):  # a later step kept before a resume
      self.store.close()
      shutil.rmtree(self.directory)
      self.store = checkpoints.Checkpoints(self.directory, max_to_keep=1)
    self.store.save(step, state)

  def _write(self) -> None:
    if not self.write_files:
      return
    text = json.dumps({"model_selection": self.name, "history": sorted(self.history, key=lambda e: e["step"])},
                      indent=2) + "\n"
    atomic_files.write_text(self.path, text)
