"""What each install names: the core, the training install, the accelerator extras and the development install;
and that a plain (not editable) install builds the datasets.

Read from pyproject.toml and the requirement files, and checked against what the code imports; no network.
Each README install line was also checked once with ``pip install --dry-run`` (see the README).
"""

import ast
import importlib.metadata
import os
import pathlib
import re
import shutil
import subprocess
import sys
import tomllib

ROOT = pathlib.Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
# Test-only packages: large, and each would replace a user's own copy in an existing environment.
TEST_ONLY = {"torch", "tensorflow", "apache-beam", "mlcroissant", "datasets", "pytest", "pytest-xdist", "hypothesis",
             "scikit-image", "onnxruntime", "dlib-bin", *("sphinx", "myst-parser", "furo")}  # the last three: the docs build (requirements-docs.txt)
# Imports that are optional where they appear: the code runs without them.
OPTIONAL_IMPORTS = {"torch": "amr_jax/models/pretrained.py reads .pth files with torch when it is installed, else without",
                    "onnx": "amr_jax/models/dlib_age_weights.py reads dlib's ONNX weights with it (the training install "
                            "has it); the network itself needs only the core install"}


def _name(requirement: str) -> str:
  """The normalised project name of a requirement line (``Jax[cuda12]==0.10.2`` -> ``jax``)."""
  return re.sub(r"[-_.]+", "-", re.match(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)", requirement).group(1)).lower()


def _requirement_lines(path: pathlib.Path) -> list[str]:
  """The requirement lines of ``path``, with ``-r`` includes followed and comments dropped."""
  lines = []
  for raw in path.read_text().splitlines():
    line = raw.split("#")[0].strip()
    if line.startswith("-r "):
      lines += _requirement_lines(path.parent / line[3:].strip())
    elif line:
      lines.append(line)
  return lines


def _pins(path: pathlib.Path) -> dict[str, str]:
  """``{name: version}`` of the ``name==version`` lines of ``path`` (and its includes)."""
  lines = [line for line in _requirement_lines(path) if not line.startswith("-e")]
  bad = [line for line in lines if "==" not in line]
  assert not bad, f"{path.name}: not pinned: {bad}"
  return {_name(line): line.split("==")[1].strip() for line in lines}


TRAIN = _pins(ROOT / "requirements.txt")
DEVELOPMENT = _pins(ROOT / "requirements-test.txt")


def test_training_install_names_no_test_only_package_and_installs_the_project():
  assert not TEST_ONLY & set(TRAIN), TEST_ONLY & set(TRAIN)
  assert "-e ." in _requirement_lines(ROOT / "requirements.txt")  # the checkout's edits take effect
  assert TRAIN["jax"] == TRAIN["jaxlib"]


def test_development_install_is_the_training_install_plus_the_test_only_packages():
  lines = [line.strip() for line in (ROOT / "requirements-test.txt").read_text().splitlines()]
  assert [line for line in lines if line and not line.startswith("#")][0] == "-r requirements.txt"
  assert TEST_ONLY <= set(DEVELOPMENT)
  assert set(DEVELOPMENT) - set(TRAIN) == TEST_ONLY


def test_core_install_is_jax_flax_and_numpy():
  assert {_name(r) for r in PYPROJECT["project"]["dependencies"]} == {"jax", "flax", "numpy"}


def test_train_extra_names_what_requirements_txt_pins_beyond_the_core():
  extras = PYPROJECT["project"]["optional-dependencies"]
  assert {_name(r) for r in extras["train"]} == set(TRAIN) - {"jax", "jaxlib", "flax", "numpy"}
  for name in ("train", "pretrained"):
    assert not TEST_ONLY & {_name(r) for r in extras[name]}


def test_accelerator_extras_pull_the_plugins_of_the_pinned_jax():
  extras = PYPROJECT["project"]["optional-dependencies"]
  for extra in ("cuda12", "cuda13", "tpu"):
    assert extras[extra] == [f"jax[{extra}]=={TRAIN['jax']}"]
  readme = (ROOT / "README.md").read_text()
  for extra in ("cuda12", "tpu"):
    assert f'pip install -r requirements.txt "jax[{extra}]=={TRAIN["jax"]}"' in readme


def _imports(path: pathlib.Path) -> set[str]:
  """Top-level names of the absolute imports in ``path``."""
  names = set()
  for node in ast.walk(ast.parse(path.read_text(), str(path))):
    if isinstance(node, ast.Import):
      names |= {alias.name.split(".")[0] for alias in node.names}
    elif isinstance(node, ast.ImportFrom) and node.level == 0:
      names.add(node.module.split(".")[0])
  return names


def _third_party(paths) -> dict[str, set[str]]:
  """``{import name: files}`` of everything imported by ``paths`` that is neither stdlib nor this project."""
  found: dict[str, set[str]] = {}
  for path in paths:
    for name in _imports(path) - set(sys.stdlib_module_names) - {"amr_jax", "configs", "__future__"}:
      found.setdefault(name, set()).add(str(path.relative_to(ROOT)))
  return found


def _distributions(import_name: str) -> set[str]:
  return {_name(d) for d in importlib.metadata.packages_distributions().get(import_name, [])}


def test_training_install_names_every_package_the_training_code_imports():
  """run_train.py, run_eval.py, the library, the configs and the builders: each import is a pinned package."""
  code = [ROOT / "run_train.py", ROOT / "run_eval.py", *(ROOT / "amr_jax").rglob("*.py"),
          *(ROOT / "configs").glob("*.py"), *(ROOT / "datasets").glob("*/*_dataset_builder.py")]
  missing = {name: files for name, files in _third_party(code).items()
             if name not in OPTIONAL_IMPORTS and not _distributions(name) & set(TRAIN)}
  assert not missing, f"imported, but requirements.txt names no package that provides it: {missing}"
  assert set(_third_party(code)) >= {"optax", "orbax", "tensorflow_datasets", "ml_collections", "matplotlib"}


def _closure(modules: list[pathlib.Path]) -> set[pathlib.Path]:
  """``modules`` and every amr_jax module they import, at any depth."""
  seen, todo = set(), list(modules)
  while todo:
    path = todo.pop()
    if path in seen:
      continue
    seen.add(path)
    for node in ast.walk(ast.parse(path.read_text())):
      if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module.split(".")[0] == "amr_jax":
        parts = node.module.split(".")
        for alias in node.names:
          for candidate in (ROOT.joinpath(*parts, f"{alias.name}.py"), ROOT.joinpath(*parts[:-1], f"{parts[-1]}.py"),
                            ROOT.joinpath(*parts, "__init__.py")):
            if candidate.is_file():
              todo.append(candidate)
  return seen


def test_losses_metrics_and_models_need_only_the_core_install():
  core = [*(ROOT / "amr_jax" / "losses").glob("*.py"), ROOT / "amr_jax" / "metrics.py",
          *(ROOT / "amr_jax" / "models").glob("*.py")]
  imported = _third_party(_closure(core))
  assert set(imported) - set(OPTIONAL_IMPORTS) <= {"jax", "flax", "numpy"}, imported
  assert {"jax", "flax", "numpy"} <= set(imported)


_BUILD_WITH_THE_INSTALL = """
import pathlib, sys
import amr_jax
from amr_jax.data import tfds_builders
site, manual_dir, data_dir = map(pathlib.Path, sys.argv[1:])
assert pathlib.Path(amr_jax.__file__).parents[1] == site, amr_jax.__file__  # the installed copy, not the checkout
assert not (site / "datasets").exists()
builder = tfds_builders.build("fgnet", manual_dir=manual_dir, data_dir=data_dir)
print(len(builder.as_data_source()["train"]), builder.info.description.splitlines()[0],
      builder.info.citation.split(",")[0], builder.data_dir == str(data_dir / "fgnet" / "1.0.0"))
"""


def test_a_plain_install_builds_the_datasets_without_the_checkout(tmp_path):
  """The TFDS builders and their README and CITATIONS.bib are in the package: FG-NET builds with amr_jax installed
  from a wheel (``pip install .``), with neither the checkout nor its datasets/ folder on the import path."""
  project = tmp_path / "project"  # a copy, so that the wheel's build writes nothing into the checkout
  shutil.copytree(ROOT / "amr_jax", project / "amr_jax", ignore=shutil.ignore_patterns("__pycache__"))
  for name in ("pyproject.toml", "README.md"):
    shutil.copy(ROOT / name, project / name)
  site = tmp_path / "site"
  installed = subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-index",
                              "--no-build-isolation", "--target", str(site), str(project)],
                             capture_output=True, text=True, timeout=300)
  assert installed.returncode == 0, installed.stderr[-3000:]
  result = subprocess.run([sys.executable, "-c", _BUILD_WITH_THE_INSTALL, str(site),
                           str(ROOT / "datasets" / "fgnet" / "dummy_data"), str(tmp_path / "data")],
                          cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(site)}, capture_output=True, text=True,
                          timeout=300)
  assert result.returncode == 0, result.stderr[-3000:]
  assert result.stdout.splitlines()[-1] == "5 # FG-NET (TFDS builder) @misc{fgnet True"
