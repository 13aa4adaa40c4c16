"""amr_jax.evaluation.paired_comparison: group sign-flip test, group bootstrap, Holm, and reading runs' predictions."""

from __future__ import annotations

import itertools
import math
import pathlib
import re

import numpy as np
import pytest

from amr_jax.evaluation import paired_comparison, reports

RESULTS = pathlib.Path(__file__).resolve().parents[1] / "benchmarks" / "results"


def test_hand_computed_exact_test():
  # Group differences d = [1, 2, 3] (group "y" holds two images, 0.5 + 1.5). The 8 sign patterns give
  # |sum| = 6, 4, 2, 0, 0, 2, 4, 6: two reach the observed 6, so p = 2 / 8.
  a = np.array([2.0, 1.0, 2.0, 3.5])
  b = np.array([1.0, 0.5, 0.5, 0.5])
  groups = np.array(["x", "y", "y", "z"])
  result = paired_comparison.compare(a, b, groups)
  assert result.exact and result.p_value == pytest.approx(0.25)
  assert result.mae_difference == pytest.approx(6 / 4)
  assert (result.mae_a, result.mae_b) == (pytest.approx(8.5 / 4), pytest.approx(2.5 / 4))
  assert (result.num_images, result.num_groups, result.groups_a_better, result.groups_b_better) == (4, 3, 0, 3)


def test_group_sums():
  sums, counts = paired_comparison.group_sums(np.array([1.0, 2.0, 4.0, 8.0]), np.array([7, 3, 7, 3]))
  np.testing.assert_array_equal(sums, [10.0, 5.0])  # groups sorted: 3, then 7
  np.testing.assert_array_equal(counts, [2, 2])


def test_exact_p_value_matches_brute_force_enumeration():
  d = np.random.default_rng(1).normal(0.3, 1.0, 10)
  extreme = sum(abs(sum(s * x for s, x in zip(signs, d))) >= abs(d.sum()) - 1e-12
                for signs in itertools.product((-1, 1), repeat=len(d)))
  p, exact = paired_comparison.sign_flip_p_value(d)
  assert exact and p == pytest.approx(extreme / 2 ** len(d))


def test_exact_p_value_counts_ties_with_the_observed_sum():
  # d = [0.1, 0.2, -0.3, 1.0]: with e = +-0.1 +-0.2 -+0.3, the sum is +-1 + e and |sum| >= 1 when e has the sign of
  # the 1.0 term or is 0. e takes 0, 0.6, -0.4, 0.2, -0.2, 0.4, -0.6, 0 over the 8 patterns, so 5 of 8 per sign of
  # the 1.0 term: p = 10 / 16, counting the two patterns where e is 0 in exact arithmetic but 5.6e-17 in floating
  # point.
  p, exact = paired_comparison.sign_flip_p_value(np.array([0.1, 0.2, -0.3, 1.0]))
  assert exact and p == 10 / 16
  # Differences that cancel exactly: every sign pattern's |sum| is >= 0 = the observed one, so p is 1, though the
  # floating-point sum is 1.1e-16 and the sums of the patterns that cancel too are other rounding errors (a
  # tolerance relative to the observed |sum| alone would count 2 of them as less extreme: p = 0.9375).
  d = np.array([-0.7, 0.7, -0.1, 0.8, -0.7])
  assert d.sum() != 0
  assert paired_comparison.sign_flip_p_value(d) == (1.0, True)
  p, exact = paired_comparison.sign_flip_p_value(np.tile(d, 4), num_draws=2000)  # 20 groups: Monte Carlo
  assert not exact and p == 1.0


def test_a_single_group():
  result = paired_comparison.compare(np.array([3.0, 1.0]), np.array([1.0, 2.0]), np.array([5, 5]))
  assert (result.p_value, result.exact, result.interval) == (1.0, True, (0.5, 0.5))


def _pre_scipy_reference(d, n, *, seed, num_draws, num_bootstrap_draws):
  """The p-value and interval as the hand-written code computed them for the committed tables (until issue 27)."""
  rng = np.random.default_rng(seed)
  observed, tolerance = abs(d.sum()), 1e-9 * max(1.0, np.abs(d).sum())
  hits = 0
  for start in range(0, num_draws, 8192):
    signs = rng.integers(0, 2, (min(8192, num_draws - start), len(d))) * 2 - 1
    hits += int(np.sum(np.abs(signs @ d) >= observed - tolerance))
  estimates = []
  for start in range(0, num_bootstrap_draws, 8192):
    picks = rng.integers(0, len(d), (min(8192, num_bootstrap_draws - start), len(d)))
    estimates.append(d[picks].sum(axis=1) / n[picks].sum(axis=1))
  return (1 + hits) / (1 + num_draws), tuple(np.percentile(np.concatenate(estimates), [2.5, 97.5]))


@pytest.mark.parametrize("seed", [0, 1])
def test_the_same_draws_as_the_committed_tables(seed):
  # The committed tables' p-values and intervals (benchmarks/results, 82 subjects) came from the hand-written sign
  # flips and resamples above; scipy is given the same draws from the same generator, so it gives the same numbers.
  rng = np.random.default_rng(10 + seed)
  groups = np.repeat(np.arange(82), rng.integers(4, 20, 82))
  ages = rng.integers(0, 70, len(groups))
  a = np.abs(np.round(ages + rng.normal(0, 6, len(groups)), 4) - ages)
  b = np.abs(np.round(ages + rng.normal(0.1, 6, len(groups)), 4) - ages)
  result = paired_comparison.compare(a, b, groups, seed=seed)
  d, n = paired_comparison.group_sums(a - b, groups)
  p, interval = _pre_scipy_reference(d, n.astype(float), seed=seed, num_draws=paired_comparison.SIGN_FLIP_DRAWS,
                                     num_bootstrap_draws=paired_comparison.BOOTSTRAP_DRAWS)
  assert not result.exact and result.p_value == p
  np.testing.assert_allclose(result.interval, interval, rtol=1e-12)


def _paired_tables(text: str):
  """Each Markdown table of ``text`` with a sign-flip p column and a Holm column: ``(p, Holm p)`` as printed."""
  for table in re.findall(r"(?:^\|.*\|\n)+", text, re.MULTILINE):
    header, _, *rows = [[cell.strip() for cell in line.strip("|").split("|")] for line in table.splitlines()]
    if "Holm p" in header:
      p_column = next(i for i, name in enumerate(header) if name.startswith("p (sign flip"))
      yield [row[p_column] for row in rows], [row[header.index("Holm p")] for row in rows]


def _half_unit(printed: str) -> float:
  """Half a unit in the last place of a p-value as format_p_value prints it."""
  if "e" in printed:
    return 0.05 * 10 ** int(printed.split("e")[1])
  return 0.5 * 10 ** -len(printed.split(".")[1])


def test_holm_reproduces_the_committed_tables():
  # Each committed paired table's Holm column is holm() of its p column, up to the printed rounding of the p-values
  # (times the number of pairs, which Holm multiplies by) and of the Holm p-values.
  tables = [table for path in sorted(RESULTS.glob("*.md")) for table in _paired_tables(path.read_text())]
  assert len(tables) >= 10
  for p_printed, holm_printed in tables:
    adjusted = paired_comparison.holm([float(p) for p in p_printed])
    rounding = len(p_printed) * max(map(_half_unit, p_printed))
    for value, printed in zip(adjusted, holm_printed):
      assert abs(value - float(printed)) <= rounding + _half_unit(printed), (p_printed, holm_printed)


def test_the_committed_tables_name_the_draws_the_code_makes():
  # The committed p-values and intervals reproduce only with the same numbers of draws.
  notes = [text for text in map(pathlib.Path.read_text, RESULTS.glob("*.md"))
           if "sign-flip test over subjects (every" in text]
  assert notes
  for text in notes:
    bootstrap, exact_max, sign_flips = re.search(r"resamples subjects \(([\d,]+) draws\).*?every sign pattern up to "
                                                 r"(\d+) subjects, else ([\d,]+) random", text).groups()
    assert int(bootstrap.replace(",", "")) == paired_comparison.BOOTSTRAP_DRAWS
    assert int(exact_max) == paired_comparison.EXACT_MAX_GROUPS
    assert int(sign_flips.replace(",", "")) == paired_comparison.SIGN_FLIP_DRAWS


def test_monte_carlo_p_value_matches_the_binomial_formula():
  # 30 groups of equal magnitude, 20 positive: sum sigma d = 2K - 30 with K ~ Binomial(30, 1/2), observed 10.
  d = np.array([1.0] * 20 + [-1.0] * 10)
  expected = sum(math.comb(30, k) for k in range(31) if abs(2 * k - 30) >= 10) / 2 ** 30
  p, exact = paired_comparison.sign_flip_p_value(d, num_draws=100_000, rng=np.random.default_rng(0))
  assert not exact
  assert p == pytest.approx(expected, abs=0.006)  # 4 standard errors of a 100,000-draw estimate


def test_monte_carlo_p_value_is_never_zero():
  p, exact = paired_comparison.sign_flip_p_value(np.full(40, 5.0), num_draws=1000)
  assert not exact and p == 1 / 1001


def test_identical_models():
  errors = np.random.default_rng(2).uniform(0, 10, 50)
  result = paired_comparison.compare(errors, errors.copy(), np.arange(50) // 5)
  assert result.mae_difference == 0 and result.p_value == 1.0 and result.interval == (0.0, 0.0)
  assert result.groups_a_better == result.groups_b_better == 0


def test_bootstrap_interval():
  # The same mean difference in every group: every resample gives it.
  d, n = np.array([-2.0, -4.0, -1.0]), np.array([2, 4, 1])
  assert paired_comparison.bootstrap_interval(d, n, num_draws=500) == (-1.0, -1.0)
  # Many independent groups of one image: close to the normal-theory interval mean +- 1.96 se.
  x = np.random.default_rng(3).normal(0.5, 1.0, 400)
  low, high = paired_comparison.bootstrap_interval(x, np.ones(400), num_draws=20_000)
  half_width = 1.96 * x.std(ddof=1) / np.sqrt(len(x))
  assert low == pytest.approx(x.mean() - half_width, abs=0.02)
  assert high == pytest.approx(x.mean() + half_width, abs=0.02)


def test_holm_hand_computed():
  # Sorted 0.01, 0.03, 0.04 times 3, 2, 1 = 0.03, 0.06, 0.04, then made non-decreasing: 0.03, 0.06, 0.06.
  np.testing.assert_allclose(paired_comparison.holm([0.01, 0.04, 0.03]), [0.03, 0.06, 0.06])
  np.testing.assert_allclose(paired_comparison.holm([0.6, 0.7]), [1.0, 1.0])


def test_bad_input_is_named():
  with pytest.raises(ValueError, match="one length"):
    paired_comparison.compare(np.ones(3), np.ones(4), np.arange(3))
  with pytest.raises(ValueError, match="finite"):
    paired_comparison.compare(np.array([1.0, np.nan]), np.ones(2), np.arange(2))


def _write_run(path, file_names, subjects, ages, predicted):
  reports.write_predictions_csv(path, {"fold": [f"subject {s}" for s in subjects], "predicted_age": predicted,
                                       "file_name": file_names, "subject_id": subjects, "age": ages})
  return path


def test_runs_are_aligned_by_file_name_and_averaged_over_seeds(tmp_path):
  seed0 = _write_run(tmp_path / "s0.csv", ["b.jpg", "a.jpg", "c.jpg"], [2, 1, 2], [10.0, 20.0, 30.0],
                     [12.0, 20.0, 27.0])
  seed1 = _write_run(tmp_path / "s1.csv", ["c.jpg", "a.jpg", "b.jpg"], [2, 1, 2], [30.0, 20.0, 10.0],
                     [30.0, 21.0, 9.0])
  names, errors, groups = paired_comparison.seed_mean_errors([seed0, seed1])
  assert list(names) == ["a.jpg", "b.jpg", "c.jpg"]
  np.testing.assert_allclose(errors, [(0 + 1) / 2, (2 + 1) / 2, (3 + 0) / 2])
  np.testing.assert_array_equal(groups, [1, 2, 2])


def test_runs_on_other_images_are_refused(tmp_path):
  seed0 = _write_run(tmp_path / "s0.csv", ["a.jpg", "b.jpg"], [1, 2], [1.0, 2.0], [1.0, 2.0])
  other = _write_run(tmp_path / "other.csv", ["a.jpg", "x.jpg"], [1, 2], [1.0, 2.0], [1.0, 2.0])
  twice = _write_run(tmp_path / "twice.csv", ["a.jpg", "a.jpg"], [1, 1], [1.0, 2.0], [1.0, 2.0])
  with pytest.raises(ValueError, match="other.csv holds other images"):
    paired_comparison.seed_mean_errors([seed0, other])
  with pytest.raises(ValueError, match="twice.csv holds an image more than once"):
    paired_comparison.seed_mean_errors([twice])
  with pytest.raises(ValueError, match=r"'b' was tested on other images than 'a'"):
    paired_comparison.compare_runs({"a": [seed0], "b": [other]})
  reports.write_predictions_csv(tmp_path / "bare.csv", {"file_name": ["a.jpg"], "age": [1.0]})
  with pytest.raises(ValueError, match=r"bare.csv lacks the column\(s\) \['predicted_age', 'subject_id'\]"):
    paired_comparison.seed_mean_errors([tmp_path / "bare.csv"])
  reports.write_predictions_csv(tmp_path / "clap.csv", {"file_name": ["a.jpg", "b.jpg"], "age": [1.0, 2.0],
                                                        "predicted_age": [1.5, 2.0]})
  with pytest.raises(ValueError, match="pass group_field='file_name'"):
    paired_comparison.seed_mean_errors([tmp_path / "clap.csv"])
  names, errors, groups = paired_comparison.seed_mean_errors([tmp_path / "clap.csv"], group_field="file_name")
  np.testing.assert_array_equal(groups, names)
  np.testing.assert_allclose(errors, [0.5, 0.0])


def test_compare_runs_every_pair_with_holm(tmp_path):
  rng = np.random.default_rng(4)
  files = [f"{i:03d}.jpg" for i in range(60)]
  subjects = np.arange(60) // 3
  ages = rng.uniform(0, 60, 60)
  noise = {"good": 1.0, "medium": 3.0, "bad": 8.0}
  runs = {name: [_write_run(tmp_path / f"{name}{seed}.csv", files, subjects, ages,
                            ages + rng.normal(0, scale, 60)) for seed in (0, 1)] for name, scale in noise.items()}
  comparisons = paired_comparison.compare_runs(runs, num_draws=20_000)
  assert [(a, b) for a, b, _, _ in comparisons] == [("good", "medium"), ("good", "bad"), ("medium", "bad")]
  np.testing.assert_allclose([h for *_, h in comparisons],
                             paired_comparison.holm([r.p_value for _, _, r, _ in comparisons]))
  for _, _, result, adjusted in comparisons:
    assert result.mae_difference < 0 and result.interval[1] < 0  # a is the less noisy model each time
    assert adjusted < 0.01 and result.groups_a_better > result.groups_b_better
  _, errors_good, _ = paired_comparison.seed_mean_errors(runs["good"])
  assert comparisons[0][2].mae_a == pytest.approx(errors_good.mean())
  table = paired_comparison.markdown_table(comparisons).splitlines()
  assert len(table) == 2 + 3 and table[2].startswith("| good vs medium | -")
