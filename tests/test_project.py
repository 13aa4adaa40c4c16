"""The project's promises to a new user: README commands = CI commands, the examples of the README and the reference
site (docs/) run as written, their results tables are the benchmarks' outputs, and every module has an API page."""

import ast
import os
import pathlib
import re
import subprocess
import sys

import numpy as np
import pytest

from amr_jax.evaluation import reports

ROOT = pathlib.Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()
# The README and the reference site's pages: where the examples and quoted results live.
DOCUMENTS = {path.relative_to(ROOT).as_posix(): path.read_text()
             for path in [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))] if "_build" not in path.parts}
# The benchmarks a user runs (`python -m benchmarks.<name>` from the repository root): the modules with a main.
BENCHMARK_SCRIPTS = sorted(path.stem for path in (ROOT / "benchmarks").glob("*.py")
                           if 'if __name__ == "__main__":' in path.read_text())


def _code_block_after(marker):
  """The first fenced code block after the line containing ``marker``, in the one document that has it."""
  holders = [name for name, text in DOCUMENTS.items() if marker in text]
  assert len(holders) == 1 and DOCUMENTS[holders[0]].count(marker) == 1, f"{marker!r} must occur once; in {holders}"
  text = DOCUMENTS[holders[0]]
  match = re.search(r"```[a-z]*\n(.*?)```", text[text.index(marker):], re.S)
  assert match, f"no code block after {marker!r} in {holders[0]}"
  return match.group(1)


def _table_after(text: str, marker_end: int) -> list[str]:
  """The lines of the first Markdown table after position ``marker_end`` of ``text``."""
  lines = text[marker_end:].splitlines()
  start = next(i for i, line in enumerate(lines) if line.startswith("|"))
  end = next((i for i in range(start, len(lines)) if not lines[i].startswith("|")), len(lines))
  return lines[start:end]


def test_results_tables_are_the_benchmark_outputs():
  """Each table after a ``<!-- results: FILE -->`` marker is, row for row, in FILE (a benchmark's output)."""
  markers = [(name, text, m) for name, text in DOCUMENTS.items() for m in re.finditer(r"<!-- results: (\S+) -->", text)]
  assert len(markers) >= 3
  for name, text, marker in markers:
    output = (ROOT / marker.group(1)).read_text().splitlines()
    table = _table_after(text, marker.end())
    assert len(table) >= 3, f"{name}: no table after {marker.group(0)}"
    missing = [row for row in table if row not in output]
    assert not missing, f"{name}: rows not in {marker.group(1)}: {missing}"


def test_readme_links_to_files_that_exist():
  links = re.findall(r"\]\(([^)#:]+)(?:#[^)]*)?\)", README)
  assert "docs/losses.md" in links
  missing = [link for link in links if not (ROOT / link).exists()]
  assert not missing, f"README links to missing files: {missing}"


def test_every_module_has_an_api_page():
  """Each amr_jax module is documented by an ``automodule`` in docs/api/ (the docs build renders its docstrings)."""
  documented = set(re.findall(r"\.\. automodule:: (\S+)", "".join(
      text for name, text in DOCUMENTS.items() if name.startswith("docs/api/"))))
  modules = {".".join(path.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")
             for path in (ROOT / "amr_jax").rglob("*.py")} - {"amr_jax"}
  assert modules - documented == set(), f"modules without an API page: {sorted(modules - documented)}"
  assert documented - modules == set(), f"API pages of modules that do not exist: {sorted(documented - modules)}"


def test_ci_runs_exactly_the_readme_install_test_and_docs_commands():
  commands = [line.split("#")[0].strip() for line in _code_block_after("<!-- setup-commands -->").splitlines()]
  commands = [c for c in commands if c]
  assert len(commands) == 3, f"README must give exactly three set-up commands, got {commands}"
  assert "sphinx -W" in commands[2], "the docs build must turn warnings into errors"
  ci_lines = [line.strip() for line in (ROOT / ".ci" / "run").read_text().splitlines()]
  for command in commands:
    assert command in ci_lines, f".ci/run does not run the README command {command!r}"
  assert [ci_lines.index(c) for c in commands] == sorted(ci_lines.index(c) for c in commands)


def test_readme_paired_comparison_example_runs(tmp_path):
  example = _code_block_after("<!-- example: paired-comparison -->")
  paths = re.findall(r'"([^"]+predictions\.csv)"', example)
  assert len(paths) == 4
  rng = np.random.default_rng(0)
  ages = rng.uniform(0, 60, 30)
  for path in paths:  # the runs the example names, made up: 30 images of 10 subjects
    reports.write_predictions_csv(tmp_path / path, {
        "file_name": [f"{i:03d}.jpg" for i in range(30)], "subject_id": np.arange(30) // 3, "age": ages,
        "predicted_age": ages + rng.normal(0, 2 if "/amr_s" in path else 6, 30)})
  script = tmp_path / "example.py"
  script.write_text(example)
  result = subprocess.run([sys.executable, str(script)], cwd=tmp_path, capture_output=True, text=True, timeout=300)
  assert result.returncode == 0, result.stderr
  assert "| amr vs cross_entropy | -" in result.stdout
  assert "amr - cross_entropy: -" in result.stdout


def test_readme_example_runs(tmp_path):
  example = _code_block_after("<!-- example: own-training-step -->")
  script = tmp_path / "example.py"
  script.write_text(example)
  # A fresh interpreter outside the repository: the installed package must be importable from anywhere.
  result = subprocess.run([sys.executable, str(script)], cwd=tmp_path, capture_output=True, text=True, timeout=300)
  assert result.returncode == 0, result.stderr
  assert "cross_entropy" in result.stdout and "top_k" in result.stdout
  assert "MAE" in result.stdout


def test_readme_pretrained_example_runs(tmp_path):
  script = tmp_path / "pretrained_example.py"
  script.write_text(_code_block_after("<!-- example: pretrained -->"))
  result = subprocess.run([sys.executable, str(script)], cwd=tmp_path, capture_output=True, text=True, timeout=300)
  assert result.returncode == 0, result.stderr
  assert "loaded 245 pretrained tensors; 2 left newly initialised" in result.stdout


def test_readme_quick_training_commands_run_as_written(shared_dir, tmp_path):
  """The README's train-then-evaluate commands, verbatim, from the repository root (HOME in a temporary folder)."""
  commands = _code_block_after("<!-- example: quick-train -->")
  assert "run_train.py" in commands and "run_eval.py" in commands
  # `python` is this interpreter, as in an activated virtual environment.
  env = {**os.environ, "HOME": str(tmp_path), "PATH": f"{pathlib.Path(sys.executable).parent}:{os.environ['PATH']}"}
  result = subprocess.run(["bash", "-euo", "pipefail", "-c", commands], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=900)
  assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
  run = tmp_path / "amr_runs" / "quick"
  assert "step 20/20" in result.stdout and "evaluating the checkpoint of step 20" in result.stdout
  assert (run / "test" / "predictions.csv").read_text().count("\n") == 1 + 13  # subject 17 has 13 images
  assert (tmp_path / "tensorflow_datasets" / "fgnet" / "1.0.0").is_dir()


def test_readme_slurm_array_slices_cover_every_fold_once():
  """The README's array-job arithmetic, run by bash for each task id: the slices are 1..82, each fold once."""
  script = _code_block_after("<!-- example: slurm-array -->")
  arithmetic = next(line for line in script.splitlines() if line.startswith("first="))
  covered = []
  for task in range(10):
    result = subprocess.run(["bash", "-c", f"SLURM_ARRAY_TASK_ID={task}; {arithmetic}; echo $first $last"],
                            capture_output=True, text=True, check=True)
    first, last = map(int, result.stdout.split())
    covered += range(first, last + 1)
  assert covered == list(range(1, 83))
  assert "#SBATCH --array=0-9" in script and "--config.folds=$first-$last" in script


def test_public_api_is_importable():
  from amr_jax.losses import (  # noqa: F401
      adaptive_mean_residue_loss, cross_entropy_loss, dldl_loss, dldl_v2_loss, expected_age,
      gaussian_label_distribution, mean_residue_loss, mean_variance_loss)
  from amr_jax.metrics import AgeMetricSums, age_metric_sums  # noqa: F401
  import amr_jax.losses

  for name in amr_jax.losses.__all__:
    assert getattr(amr_jax.losses, name).__doc__, f"{name} has no docstring"


def test_accelerator_check_script_parses_and_names_tests_and_limits_that_exist():
  """benchmarks/accelerator_check.sh runs where no CI does: what can be checked without a GPU is checked here."""
  script_path = ROOT / "benchmarks" / "accelerator_check.sh"
  subprocess.run(["bash", "-n", str(script_path)], check=True)
  script = script_path.read_text()
  for node in re.findall(r"(tests/test_\w+\.py(?:::\w+(?:\[\w+\])?)?)", script):
    path, _, name = node.partition("::")
    assert (ROOT / path).is_file(), node
    if name:
      assert f"def {name.split('[')[0]}(" in (ROOT / path).read_text(), node
  # Each stage's limit: together within the 9 minutes the check is sized for.
  limits = [int(limit) for limit in re.findall(r"\bstage \w+ (\d+) ", script)]
  assert len(limits) == 6 and sum(limits) <= 9 * 60, limits


def test_readme_start_age_binding_example_runs(tmp_path):
  script = tmp_path / "bind_example.py"
  script.write_text(_code_block_after("<!-- example: bind-start-age -->"))
  result = subprocess.run([sys.executable, str(script)], cwd=tmp_path, capture_output=True, text=True, timeout=300)
  assert result.returncode == 0, result.stderr
  predicted, cross_entropy = map(float, result.stdout.split())
  assert result.stdout.split() == ["50.50", "4.2485"]  # the mean of 16..85 and ln 70, by hand, as the comment says
  assert predicted == 50.5 and cross_entropy == round(np.log(70), 4)


def test_label_grid_example_runs_and_prints_what_its_comment_works_out(tmp_path):
  script = tmp_path / "grid_example.py"
  script.write_text(_code_block_after("<!-- example: label-grid -->"))
  result = subprocess.run([sys.executable, str(script)], cwd=tmp_path, capture_output=True, text=True, timeout=300)
  assert result.returncode == 0, result.stderr
  # The middle of 1.0..5.0; 3.44 is class round(24.4); |3.00 - 3.44|: worked out by hand beside the example.
  assert result.stdout.split() == ["3.00", "24", "0.44"]


def test_readme_quick_losses_example_runs_and_matches_the_loss_of_the_mean(tmp_path):
  """The README's first losses example prints the mean AMR loss and the first three expected ages; both are
  recomputed here from the same logits (float32: the printed 3 decimals agree)."""
  script = tmp_path / "losses_example.py"
  script.write_text(_code_block_after("<!-- example: losses-quick -->"))
  result = subprocess.run([sys.executable, str(script)], cwd=tmp_path, capture_output=True, text=True, timeout=300)
  assert result.returncode == 0, result.stderr
  import jax
  import jax.numpy as jnp

  from amr_jax.losses import adaptive_mean_residue_loss, expected_age

  logits = jax.random.normal(jax.random.key(0), (8, 70))
  loss = float(adaptive_mean_residue_loss(logits, jnp.array([3, 17, 25, 40, 8, 61, 12, 33])).mean())
  assert result.stdout.startswith(f"loss {loss:.3f}, predicted ages ["), result.stdout
  printed = [float(x) for x in result.stdout.split("[", 1)[1].split("]", 1)[0].split()]
  np.testing.assert_allclose(printed, np.asarray(expected_age(logits)[:3]), atol=5e-5)


def test_readme_nnx_sharded_jit_example_runs_on_two_devices_as_on_one(tmp_path):
  script = tmp_path / "nnx_example.py"
  script.write_text(_code_block_after("<!-- example: nnx-sharded-jit -->"))
  outputs = {}
  for devices in (1, 2):
    env = {**os.environ, "XLA_FLAGS": f"--xla_force_host_platform_device_count={devices}"}
    result = subprocess.run([sys.executable, str(script)], cwd=tmp_path, env=env, capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stderr
    outputs[devices] = result.stdout.splitlines()
    assert outputs[devices][-1].startswith(f"{devices} device(s): MAE ")
  # The same training and metrics: equal up to float32 summation order (~1e-6 relative), so each printed value
  # is within one unit of its last printed decimal (4 for the logs; 2 for MAE, 3 for CS(5)).
  for one, two in zip(outputs[1][:3], outputs[2][:3]):
    logs_one, logs_two = (ast.literal_eval(line.split(" ", 1)[1]) for line in (one, two))
    assert logs_one.keys() == logs_two.keys() and "top_k" in logs_one
    for name in logs_one:
      assert abs(logs_one[name] - logs_two[name]) <= 1e-4 + 1e-9, (name, one, two)
  pattern = r"MAE ([\d.]+), CS\(5\) ([\d.]+) over (\d+) images"
  (mae_1, cs_1, count_1), (mae_2, cs_2, count_2) = (re.search(pattern, lines[-1]).groups()
                                                    for lines in (outputs[1], outputs[2]))
  assert abs(float(mae_1) - float(mae_2)) <= 0.01 + 1e-9 and abs(float(cs_1) - float(cs_2)) <= 0.001 + 1e-9
  assert count_1 == count_2 == "64"


def _amr_jax_import_graph() -> dict[str, set[str]]:
  """Module -> the amr_jax modules it imports, anywhere in it (function-level imports included), from the AST."""
  paths = {".".join(path.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__"): path
           for path in (ROOT / "amr_jax").rglob("*.py")}
  graph = {}
  for name, path in paths.items():
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    imported = set()
    for node in ast.walk(ast.parse(path.read_text())):
      if isinstance(node, ast.Import):
        imported.update(alias.name for alias in node.names)
      elif isinstance(node, ast.ImportFrom):
        base = node.module or ""
        if node.level:
          base = ".".join(package.split(".")[:len(package.split(".")) - node.level + 1] + ([base] if base else []))
        imported.update(f"{base}.{alias.name}" if f"{base}.{alias.name}" in paths else base for alias in node.names)
    graph[name] = {module for module in imported if module in paths and module != name}
  return graph


def test_no_import_cycle_in_the_package():
  """Every strongly connected component of the import graph is one module (Tarjan's algorithm)."""
  graph = _amr_jax_import_graph()
  assert "amr_jax.training.fold_loop" in graph["amr_jax.experiment"]  # the graph is real: experiment drives the loop
  index, low, stack, on_stack, cycles = {}, {}, [], set(), []

  def visit(module):
    index[module] = low[module] = len(index)
    stack.append(module)
    on_stack.add(module)
    for other in graph[module]:
      if other not in index:
        visit(other)
        low[module] = min(low[module], low[other])
      elif other in on_stack:
        low[module] = min(low[module], index[other])
    if low[module] == index[module]:
      component = []
      while not component or component[-1] != module:
        component.append(stack.pop())
        on_stack.discard(component[-1])
      if len(component) > 1:
        cycles.append(sorted(component))

  for module in sorted(graph):
    if module not in index:
      visit(module)
  assert not cycles, f"modules that import each other: {cycles}"


def test_evaluation_imports_no_training_module():
  graph = _amr_jax_import_graph()
  offenders = {module: sorted(other for other in imported if other.startswith("amr_jax.training"))
               for module, imported in graph.items() if module.startswith("amr_jax.evaluation")}
  assert not any(offenders.values()), offenders


def test_no_module_is_over_450_lines():
  sizes = {path.relative_to(ROOT).as_posix(): len(path.read_text().splitlines()) for path in (ROOT / "amr_jax").rglob("*.py")}
  assert max(sizes.values()) > 100  # the walk found the modules
  assert not {path: size for path, size in sizes.items() if size > 450}, sorted(sizes.items(), key=lambda item: -item[1])[:5]


# Runs each benchmark as `python -m benchmarks.<name> --help` does (runpy's run_module as __main__, with that argv),
# all in one process so that JAX and TFDS are imported once; prints "<name> <exit status> <first line of usage>".
_RUN_EACH_HELP = """
import contextlib, io, runpy, sys
for name in sys.argv[1:]:
  out = io.StringIO()
  sys.argv = [f"benchmarks/{name}.py", "--help"]
  with contextlib.redirect_stdout(out):
    try:
      runpy.run_module(f"benchmarks.{name}", run_name="__main__", alter_sys=True)
      code = "returned"
    except SystemExit as exit:
      code = exit.code or 0
  print(name, code, out.getvalue().splitlines()[0] if out.getvalue() else "")
"""


def test_each_benchmark_runs_as_a_module_from_the_repository_root():
  """`python -m benchmarks.<name> --help` for every benchmark, as the README and docs give the commands: it exits 0
  with its usage line, with no sys.path set-up."""
  result = subprocess.run([sys.executable, "-c", _RUN_EACH_HELP, *BENCHMARK_SCRIPTS], cwd=ROOT, capture_output=True,
                          text=True, timeout=600)
  assert result.returncode == 0, result.stderr[-3000:]
  lines = dict(line.split(" ", 1) for line in result.stdout.splitlines())
  assert sorted(lines) == BENCHMARK_SCRIPTS
  for name, rest in lines.items():
    assert rest.startswith(f"0 usage: python -m benchmarks.{name} "), (name, rest[:300])


def test_benchmark_commands_name_modules_that_exist():
  """Every benchmark command in the README, docs/, datasets/ and benchmarks/ is `python -m benchmarks.<name>` with a
  script that exists; none runs a benchmark's file (`python benchmarks/<name>.py`)."""
  assert len(BENCHMARK_SCRIPTS) >= 13, BENCHMARK_SCRIPTS
  texts = {**DOCUMENTS, **{path.relative_to(ROOT).as_posix(): path.read_text() for folder in ("benchmarks", "datasets")
                          for path in sorted((ROOT / folder).rglob("*")) if path.suffix in (".py", ".sh", ".md")}}
  named = set()
  for name, text in texts.items():
    assert not re.search(r"(python3?|\$PYTHON\"?)\s+benchmarks/\w+\.py", text), f"{name} runs a benchmark's file"
    named |= set(re.findall(r"\s-m\s+benchmarks\.(\w+)", text))
  assert named <= set(BENCHMARK_SCRIPTS), f"commands of benchmarks that do not exist: {named - set(BENCHMARK_SCRIPTS)}"
  assert {"speed", "fgnet_losses", "lopo_speed"} <= named


def _sys_path_edits(tree: ast.AST) -> list[int]:
  """The lines that change ``sys.path``: assigning or deleting it or a slice of it, or calling a method that edits
  it."""
  def is_sys_path(node):
    return (isinstance(node, ast.Attribute) and node.attr == "path" and isinstance(node.value, ast.Name)
            and node.value.id == "sys")

  edits = []
  for node in ast.walk(tree):
    if isinstance(node, (ast.Assign, ast.Delete)):
      targets = node.targets
    elif isinstance(node, (ast.AugAssign, ast.AnnAssign)):
      targets = [node.target]
    else:
      targets = []
    if any(is_sys_path(t) or isinstance(t, ast.Subscript) and is_sys_path(t.value) for t in targets):
      edits.append(node.lineno)
    if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and is_sys_path(node.func.value)
        and node.func.attr in ("insert", "append", "extend", "remove", "pop", "clear", "__setitem__", "__iadd__")):
      edits.append(node.lineno)
  return sorted(edits)


def test_no_test_or_benchmark_edits_sys_path():
  """Tests and benchmarks import what they share as the `benchmarks` package (pytest's pythonpath and `python -m`
  put the repository root on the path), never by editing sys.path."""
  examples = ("sys.path[:0] = [a]\nsys.path.insert(0, a)\nsys.path.append(a)\nsys.path += [a]\nsys.path = [a]\n"
              "print(sys.path)")
  assert _sys_path_edits(ast.parse(examples)) == [1, 2, 3, 4, 5]
  edits = {path.relative_to(ROOT).as_posix(): lines for folder in ("tests", "benchmarks")
           for path in sorted((ROOT / folder).rglob("*.py")) if (lines := _sys_path_edits(ast.parse(path.read_text())))}
  assert not edits, f"sys.path edited at (file: lines) {edits}"
