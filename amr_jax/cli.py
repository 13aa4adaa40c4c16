"""What ``run_train.py`` and ``run_eval.py`` share: flags, one-line errors, the default workdir, multi-process start-up.

JAX is imported only once the flags are parsed, so that a mistake in them is refused at once (JAX takes 2 s to load).
"""

from __future__ import annotations

import ast
import functools
import glob
import importlib.util
import io
import os
import pathlib
import re
import shutil
import sys
import textwrap
import tokenize

from absl import app, flags, logging

from amr_jax import errors, workdir_layout
from amr_jax.training import interruption


TRACEBACK_VARIABLE = "AMR_JAX_TRACEBACK"  # =1 shows the traceback of a refusal
CONFIG_HELP = "Config file, with an optional argument: configs/fgnet_amr.py:17."
SCRIPT_FLAGS = ("pack",)  # flags an entry script defines beside --config and --workdir, listed by --help


def run(action, workdir_help: str, *, config_from_workdir: bool = False) -> None:
  """Runs ``action(config, workdir)`` as an absl program with ``--config`` and ``--workdir``.

  A refusal (:class:`amr_jax.errors.RunError`, or a bad flag) is printed as one line, ``error: <message>``, with
  exit status 1; its traceback only with ``--verbosity=1`` or ``AMR_JAX_TRACEBACK=1``. So is a write that the
  machine refuses (an ``OSError`` of :data:`amr_jax.errors.STORAGE_ERRNOS`: a full disk, a read-only folder).
  Other exceptions are bugs and keep their traceback.

  Args:
    action: ``train_and_evaluate`` or ``evaluate_workdir``.
    workdir_help: the ``--workdir`` flag's help.
    config_from_workdir: without ``--config``, read the config from ``<workdir>/config.json`` (``run_eval.py``).
  """
  flags.DEFINE_string("workdir", None, workdir_help)

  def main(argv):
    if len(argv) > 1:
      refuse(f"unexpected arguments: {' '.join(argv[1:])}")
    interruption.install()
    try:
      action(*setup(flags.FLAGS.config, flags.FLAGS.workdir))
    except errors.Interrupted as stop:
      print(f"interrupted: {stop}", file=sys.stderr, flush=True)
      sys.exit(130)  # the shell's status for a command ended by SIGINT
    except errors.RunError as error:
      if _show_traceback():
        raise
      refuse(str(error), traceback_hint=True)
    except KeyboardInterrupt:
      if _show_traceback():
        raise
      print("interrupted at once; the same command continues from the last checkpoint.", file=sys.stderr, flush=True)
      sys.exit(130)
    except OSError as error:  # the machine's storage (a full disk, a read-only folder); other OSErrors are bugs
      if errors.storage_reason(error) is None or _show_traceback():
        raise
      refuse(storage_message(error), traceback_hint=True)

  app.run(main, flags_parser=functools.partial(parse_flags, config_from_workdir=config_from_workdir))


def storage_message(error: OSError) -> str:
  """One line for a write the machine refused: the path, the reason, and that what was saved is kept."""
  path = error.filename or "a file"
  return (f"{path}: could not be written ({errors.storage_reason(error)}). Checkpoints already saved are kept, and "
          "every report is whole or as it was; free space there (or make it writable), then run the same command "
          "again.")


def _show_traceback() -> bool:
  return os.environ.get(TRACEBACK_VARIABLE, "") not in ("", "0") or (
      flags.FLAGS["verbosity"].present and flags.FLAGS.verbosity >= 1)


def refuse(message: str, *, traceback_hint: bool = False) -> None:
  hint = f" ({TRACEBACK_VARIABLE}=1 shows the traceback)" if traceback_hint else ""
  print(f"error: {message}{hint}", file=sys.stderr, flush=True)
  sys.exit(1)


def default_workdir(config) -> str:
  """``workdirs/<config name>`` for a run over all folds, ``workdirs/<config name>_<fold>`` for one fold."""
  suffix = f"_{config.fold}" if config.get("fold", -1) != -1 else ""
  return os.path.join("workdirs", f"{config.name}{suffix}")


def initialize_distributed() -> None:
  """Joins a multi-process run when the environment describes one.

  Explicit: ``AMR_JAX_COORDINATOR=host:port``, ``AMR_JAX_NUM_PROCESSES`` and
  ``AMR_JAX_PROCESS_ID``. Otherwise ``jax.distributed.initialize()`` is
  called where JAX detects a cluster by itself (SLURM with several tasks,
  TPU pods); a single process needs nothing.
  """
  import jax

  coordinator = os.environ.get("AMR_JAX_COORDINATOR")
  if coordinator:
    # Cross-process collectives on CPU devices need an implementation; it changes nothing on GPU/TPU.
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(coordinator_address=coordinator,
                               num_processes=int(os.environ["AMR_JAX_NUM_PROCESSES"]),
                               process_id=int(os.environ["AMR_JAX_PROCESS_ID"]))
  elif int(os.environ.get("SLURM_NTASKS", "1")) > 1 or "TPU_WORKER_HOSTNAMES" in os.environ:
    jax.distributed.initialize()


def setup(config, workdir: str | None):
  """The config and workdir of a command-line run, after joining any multi-process run."""
  import jax

  if not flags.FLAGS["verbosity"].present:
    logging.set_verbosity(logging.WARNING)  # Orbax logs every save at INFO; --verbosity=0 shows them
  initialize_distributed()
  workdir = workdir or default_workdir(config)
  if jax.process_index() == 0:
    print(f"workdir: {os.path.abspath(workdir)}; {jax.process_count()} process(es), "
          f"{jax.device_count()} {jax.devices()[0].platform} device(s)", flush=True)
    warning = cpu_fallback_warning(jax.default_backend())
    if warning:
      print(warning, file=sys.stderr, flush=True)
  return config, workdir


def cpu_fallback_warning(backend: str) -> str | None:
  """A warning when JAX runs on the CPU of a machine with an NVIDIA GPU or a TPU: the CPU-only jaxlib is installed.

  JAX's own warning about it is one log line among many at start-up.
  """
  import jax

  if backend != "cpu":
    return None
  if glob.glob("/dev/nvidia[0-9]*") or shutil.which("nvidia-smi"):
    kind, extra = "an NVIDIA GPU", "cuda12"
  elif glob.glob("/dev/accel[0-9]*") or glob.glob("/dev/vfio/[0-9]*"):
    kind, extra = "a TPU", "tpu"
  else:
    return None
  return (f"WARNING: this machine has {kind}, but JAX runs on the CPU (no {extra} plugin installed). Install "
          f"it with: pip install -r requirements.txt \"jax[{extra}]=={jax.__version__}\" (README, Install).")


def _flag_value(argv: list[str], name: str) -> str | None:
  """The value of ``--name=V`` or ``--name V`` in ``argv``, before absl parses it."""
  for i, arg in enumerate(argv[1:], start=1):
    if arg.startswith(f"--{name}="):
      return arg.split("=", 1)[1]
    if arg == f"--{name}" and i + 1 < len(argv):
      return argv[i + 1]
  return None


def _config_file_argument(argv: list[str]) -> str | None:
  """A config file given without ``--config=`` (``run_train.py configs/fgnet_amr.py:17``), if any."""
  return next((arg for arg in argv[1:] if not arg.startswith("-") and re.search(r"\.py(:|$)", arg)), None)


HELP_FLAGS = ("--help", "-h", "--helpshort", "--helpfull", "-?")
CONFIGS_DIR = pathlib.Path(__file__).resolve().parents[1] / "configs"


def field_comments(sources: list[pathlib.Path]) -> dict[str, str]:
  """``{"data.manual_dir": "its comment", ...}`` from the config files' assignments (the first file's comment wins).

  A field's comment is the block of comment lines right above ``config.<field> = ...`` and the comment at the end
  of its line; the keys of a ``ConfigDict({...})`` literal get their end-of-line comments.
  """
  comments: dict[str, str] = {}
  for source in sources:
    text = source.read_text(encoding="utf-8")
    lines = text.splitlines()
    line_comments = {token.start[0]: token.string.lstrip("#").strip() for token in
                     tokenize.generate_tokens(io.StringIO(text).readline) if token.type == tokenize.COMMENT}

    def comment_at(line: int, above: bool) -> str:
      parts = []
      if above:
        number = line - 1
        while number >= 1 and lines[number - 1].strip().startswith("#"):
          parts.insert(0, line_comments[number])
          number -= 1
      if line in line_comments and not lines[line - 1].strip().startswith("#"):
        parts.append(line_comments[line])
      return " ".join(parts)

    for node in ast.walk(ast.parse(text)):
      if not (isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Attribute)):
        continue
      names, target = [], node.targets[0]
      while isinstance(target, ast.Attribute):
        names.insert(0, target.attr)
        target = target.value
      if not (isinstance(target, ast.Name) and target.id == "config"):
        continue
      field = ".".join(names)
      comments.setdefault(field, comment_at(node.lineno, above=True))
      literal = node.value.args[0] if isinstance(node.value, ast.Call) and node.value.args else node.value
      if isinstance(literal, ast.Dict):
        for key, value in zip(literal.keys, literal.values):
          if isinstance(key, ast.Constant):
            comments.setdefault(f"{field}.{key.value}", comment_at(value.end_lineno, above=False))
  return comments


def help_text(argv: list[str], *, config_from_workdir: bool) -> str:
  """The entry script's docstring, its flags, and every config field with its value and comment."""
  config_file = _flag_value(argv, "config")
  workdir = _flag_value(argv, "workdir")
  if config_file is None and config_from_workdir and workdir is not None:
    config, origin = workdir_layout.load(workdir), f"the run in {workdir}"
  else:
    path, _, argument = (config_file or str(CONFIGS_DIR / "base.py")).partition(":")
    spec = importlib.util.spec_from_file_location("help_config", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    config = module.get_config(argument) if argument else module.get_config()
    origin = (path if config_file else f"{os.path.relpath(path)} (the defaults; --config=FILE --help shows a "
              "config's own)")
  sources = [CONFIGS_DIR / "base.py", *sorted(CONFIGS_DIR.glob("*.py"))]
  comments = field_comments(sources)
  lines = [(getattr(sys.modules["__main__"], "__doc__", None) or "").strip(), "", "Flags:",
           f"  --config: {CONFIG_HELP}" + (" Default: the config of --workdir." if config_from_workdir else ""),
           f"  --workdir: {flags.FLAGS['workdir'].help if 'workdir' in flags.FLAGS else ''}",
           *(f"  --{name}: {flags.FLAGS[name].help}" for name in SCRIPT_FLAGS if name in flags.FLAGS),
           "  --verbosity=1: tracebacks and absl's INFO logs.", "",
           f"Config fields (the values of {origin}; set any with --config.<field>=VALUE):"]
  order = {field: index for index, field in enumerate(comments)}  # the config files' order, base.py's first
  for field, value in sorted(_leaves(config.to_dict()).items(), key=lambda item: (order.get(item[0], len(order)),
                                                                                   item[0])):
    lines.append(f"  --config.{field}={value!r}")
    if comments.get(field):
      lines += textwrap.wrap(comments[field], width=110, initial_indent="      ", subsequent_indent="      ")
  return "\n".join(lines)


def _leaves(tree: dict, prefix: str = "") -> dict[str, object]:
  leaves = {}
  for key, value in tree.items():
    if isinstance(value, dict) and value:
      leaves.update(_leaves(value, f"{prefix}{key}."))
    else:
      leaves[f"{prefix}{key}"] = value
  return leaves


def parse_flags(argv: list[str], *, config_from_workdir: bool = False) -> list[str]:
  """Defines ``--config`` and parses the flags; every mistake in them is one line naming the flag. ``--help`` (or
  ``-h``) prints :func:`help_text` and exits 0."""
  from ml_collections import config_flags

  if any(arg in HELP_FLAGS for arg in argv[1:]):
    try:
      text = help_text(argv, config_from_workdir=config_from_workdir)
    except (errors.RunError, OSError, SyntaxError, ValueError, AttributeError, TypeError) as error:
      refuse(f"--help: the config could not be read ({_one_line(str(error))}).")
    try:
      print(text, flush=True)
    except BrokenPipeError:  # `--help | head`: the reader has seen enough
      os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    sys.exit(0)
  if _flag_value(argv, "config") is None:
    bare = _config_file_argument(argv)
    if bare is not None:
      refuse(f"the config file is a flag: did you mean --config={bare}?")
    if not config_from_workdir:
      refuse("give the run's config: --config=configs/<name>.py[:FOLD] (e.g. --config=configs/fgnet_amr.py:17).")
    workdir = _flag_value(argv, "workdir")
    if workdir is None:
      refuse("give the run to evaluate: --workdir=W (its config.json is the config), or --config=... as well.")
    try:
      stored = workdir_layout.load(workdir)
    except errors.RunError as error:
      refuse(str(error))
    config_flags.DEFINE_config_dict("config", stored, f"The config of --workdir ({workdir_layout.CONFIG_FILE}).",
                                    lock_config=True, sys_argv=argv)
  else:
    path = _flag_value(argv, "config").split(":", 1)[0]
    if not os.path.isfile(path):
      found = ", ".join(sorted(p for p in glob.glob("configs/*.py") if not re.search(r"(__init__|base)\.py$", p)))
      refuse(f"--config={path}: no such file" + (f" (found {found})." if found else "."))
    _refuse_syntax_errors(path)
    config_flags.DEFINE_config_file("config", None, CONFIG_HELP, lock_config=True, sys_argv=argv)
  try:
    return flags.FLAGS(argv)
  except flags.Error as error:
    refuse(_one_line(str(error)))
  except (AttributeError, KeyError) as error:  # an override of a field the config does not have
    refuse(_unknown_field(argv, str(error)))


def _refuse_syntax_errors(path: str) -> None:
  """A config file that is not valid Python, in one line naming the file, line and column (absl would print ~45)."""
  try:
    with open(path, "rb") as f:
      compile(f.read(), path, "exec")
  except SyntaxError as error:
    where = f"line {error.lineno}" + (f", column {error.offset}" if error.offset else "")
    refuse(f"--config={path}: not valid Python at {where}: {error.msg}.")
  except (OSError, ValueError) as error:  # unreadable, or a NUL byte
    refuse(f"--config={path}: cannot be read as Python ({error}).")


def _one_line(message: str) -> str:
  """absl's flag error, with a config file's traceback reduced to its last line."""
  first, *rest = message.splitlines()
  if "Traceback" not in message:
    return first
  last = next(line.strip() for line in reversed(rest) if line.strip())
  return f"{first.split(': Error whilst', 1)[0]}: {last.split(': ', 1)[-1]}"


def _unknown_field(argv: list[str], message: str) -> str:
  message = message.replace("\\'", "'")
  names = re.findall(r"'(\w+)'", message)
  suggestion = re.search(r'Did you mean "([\w.]+)"', message)
  culprit = next((arg.split("=")[0] for arg in argv[1:] if arg.startswith("--config.") and names
                  and names[0] in arg.split("=")[0].split(".")), None)
  where = f"{culprit}: " if culprit else ""
  hint = (f"did you mean {suggestion.group(1)!r}?" if suggestion
          else "the fields are those of the config file and configs/base.py.")
  return f"{where}the config has no field {names[0] if names else message!r}; {hint}"
