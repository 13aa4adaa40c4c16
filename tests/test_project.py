"""The project's promises to a new user: README commands = CI commands, the examples of the README and the reference
site (docs/) run as written, their results tables are the benchmarks' outputs, and every module has an API page."""

import ast
import os
import pathlib
import re
import subprocess
import sys

import numpy as np

from amr_jax import reports

ROOT = pathlib.Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()
# The README and the reference site's pages: where the examples and quoted results live.
DOCUMENTS = {path.relative_to(ROOT).as_posix(): path.read_text()
             for path in [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))] if "_build" not in path.parts}


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
  # Each stage's limit: together within the 8 minutes the check is sized for.
  limits = [int(limit) for limit in re.findall(r"\bstage \w+ (\d+) ", script)]
  assert len(limits) == 5 and sum(limits) <= 8 * 60, limits


def test_readme_start_age_binding_example_runs(tmp_path):
  script = tmp_path / "bind_example.py"
  script.write_text(_code_block_after("<!-- example: bind-start-age -->"))
  result = subprocess.run([sys.executable, str(script)], cwd=tmp_path, capture_output=True, text=True, timeout=300)
  assert result.returncode == 0, result.stderr
  predicted, cross_entropy = map(float, result.stdout.split())
  assert result.stdout.split() == ["50.50", "4.2485"]  # the mean of 16..85 and ln 70, by hand, as the comment says
  assert predicted == 50.5 and cross_entropy == round(np.log(70), 4)


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
