"""Is one model's MAE really lower than another's, on the same test images?

Two models tested on the same images give paired absolute errors. Photos of one
person are not independent (FG-NET has about 12 per subject, and a subject the
model finds hard is hard for every loss), so the unit of chance here is the
*group* (the subject), not the image:

* the difference of pooled MAEs, ``D = sum_i (|e_a,i| - |e_b,i|) / N`` over all
  ``N`` images, is written as ``sum_s d_s / N`` with ``d_s`` the sum of the
  differences over group ``s``'s images;
* **sign-flip test** (a paired permutation test over groups): if the two models
  were interchangeable, each ``d_s`` would be as likely to have the other sign,
  so ``p = P(|sum_s sigma_s d_s| >= |sum_s d_s|)`` over independent random signs
  ``sigma_s``; exact (all ``2**G`` signs, ``scipy.stats.permutation_test``) for
  ``G <= EXACT_MAX_GROUPS`` groups, otherwise Monte Carlo
  (``scipy.stats.monte_carlo_test``) with the ``(1 + hits) / (1 + draws)``
  estimate, which never gives 0;
* **group bootstrap** confidence interval (``scipy.stats.bootstrap``): groups
  drawn with replacement, ``D* = sum d_s* / sum n_s*``, the percentile interval;
* **Holm** adjustment when several pairs are compared at once (written here:
  scipy.stats has none).

References: P. Good, *Permutation, Parametric, and Bootstrap Tests of
Hypotheses*, Springer 2005 (the paired permutation test); C. A. Field and
A. H. Welsh, "Bootstrapping clustered data", J. R. Statist. Soc. B 69 (2007);
S. Holm, "A simple sequentially rejective multiple test procedure",
Scand. J. Statist. 6 (1979).
"""

from __future__ import annotations

import dataclasses
import os
from typing import Sequence

import numpy as np
from scipy import stats

from amr_jax.evaluation import reports

EXACT_MAX_GROUPS = 16
SIGN_FLIP_DRAWS = 100_000  # random sign patterns when the groups are too many to enumerate
BOOTSTRAP_DRAWS = 20_000
_CHUNK = 8192  # random sign or resample rows drawn at a time: bounded memory for any number of draws


@dataclasses.dataclass(frozen=True)
class PairedDifference:
  """Model a against model b on the same images; negative ``mae_difference`` means a is better."""

  mae_a: float
  mae_b: float
  mae_difference: float  # mae_a - mae_b
  interval: tuple[float, float]  # group-bootstrap percentile interval of mae_difference
  confidence: float
  p_value: float  # two-sided sign-flip test over groups
  exact: bool  # p_value enumerates every sign pattern
  num_images: int
  num_groups: int
  groups_a_better: int  # groups whose summed absolute error is lower for a
  groups_b_better: int


def group_sums(values: np.ndarray, groups: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """Per-group sums of ``values`` and per-group counts, groups in sorted order."""
  _, index, counts = np.unique(groups, return_inverse=True, return_counts=True)
  return np.bincount(index, weights=values), counts


def _abs_sum(x: np.ndarray, axis: int = -1) -> np.ndarray:
  """The sign-flip test's statistic: ``|sum_s x_s|``, plus ``sum_s |x_s|`` (scipy calls it on the data and on each
  sign pattern).

  ``sum_s |x_s|`` is the same for every sign pattern, so it changes no comparison; it is there for ties. scipy counts
  a pattern's statistic within 100 machine epsilons of the observed one, *relative to the observed statistic*, as
  equal to it. With ``|sum|`` alone, an observed sum that is 0 in exact arithmetic but a rounding error in floating
  point (group differences of 4-decimal errors that cancel) would leave no tolerance, and the patterns whose sums
  are 0 too would count as less extreme (p below 1 where it is 1); with the constant added, the tolerance is relative
  to the size of the differences, as the sums' rounding errors are.
  """
  return np.abs(np.sum(x, axis=axis)) + np.sum(np.abs(x), axis=axis)


def _ratio_of_sums(d: np.ndarray, n: np.ndarray, axis: int = -1) -> np.ndarray:
  """The bootstrap's statistic: ``sum d / sum n`` over the (resampled) groups."""
  return np.sum(d, axis=axis) / np.sum(n, axis=axis)


def sign_flip_p_value(group_differences: np.ndarray, *, num_draws: int = SIGN_FLIP_DRAWS,
                      rng: np.random.Generator | None = None) -> tuple[float, bool]:
  """Two-sided p-value of ``sum(group_differences)`` under random signs; returns ``(p, exact)``.

  The statistic is ``|sum|`` (``_abs_sum``) with scipy's one-sided ("greater") alternative, which is the
  two-sided test of the sum: the share of sign patterns with ``|sum sigma d| >= |sum d|``. (scipy's own
  ``"two-sided"`` on the sum doubles the smaller one-sided p-value instead: the same when exact, as the null
  distribution is symmetric, but from random draws another estimate, with a floor of ``2 / (1 + draws)``.)
  """
  d = np.asarray(group_differences, np.float64)
  if len(d) == 1:  # scipy wants two observations; one group's two signs give the same |sum|
    return 1.0, True
  if len(d) <= EXACT_MAX_GROUPS:
    # n_resamples >= the 2**G distinct sign patterns: scipy enumerates them all (an exact test, p = count / 2**G).
    result = stats.permutation_test((d,), _abs_sum, permutation_type="samples", vectorized=True,
                                    n_resamples=2 ** len(d), alternative="greater")
    return float(result.pvalue), True
  rng = rng or np.random.default_rng(0)
  # Random signs as a Monte Carlo test: under the null hypothesis the data are sigma * d. scipy's estimate is
  # (1 + hits) / (1 + draws). The signs are drawn _CHUNK rows at a time as rng.integers(0, 2) (bounded memory,
  # and the same draws, so the same p-values, as before scipy did the counting).
  result = stats.monte_carlo_test(d, lambda size: (rng.integers(0, 2, size) * 2 - 1) * d, _abs_sum,
                                  vectorized=True, n_resamples=num_draws, batch=_CHUNK, alternative="greater")
  return float(result.pvalue), False


def bootstrap_interval(group_differences: np.ndarray, group_counts: np.ndarray, *, confidence: float = 0.95,
                       num_draws: int = BOOTSTRAP_DRAWS, rng: np.random.Generator | None = None
                       ) -> tuple[float, float]:
  """Percentile interval of ``sum(d) / sum(n)`` with groups drawn with replacement."""
  d = np.asarray(group_differences, np.float64)
  n = np.asarray(group_counts, np.float64)
  if len(d) == 1:  # scipy wants two observations; every resample of one group is that group
    return float(d[0] / n[0]), float(d[0] / n[0])
  # paired=True: a resample draws group indices, rng.integers(0, G, (batch, G)), and takes each drawn group's d and
  # n together (the same resamples as before scipy did them).
  result = stats.bootstrap((d, n), _ratio_of_sums, paired=True, vectorized=True, n_resamples=num_draws,
                           batch=_CHUNK, confidence_level=confidence, method="percentile",
                           rng=rng or np.random.default_rng(0))
  return float(result.confidence_interval.low), float(result.confidence_interval.high)


def holm(p_values: Sequence[float]) -> np.ndarray:
  """Holm's step-down adjusted p-values (family-wise error), in the order given.

  Written here: scipy.stats has no Holm adjustment (``false_discovery_control`` is Benjamini-Hochberg and
  Benjamini-Yekutieli, which bound the false discovery rate, not the family-wise error).
  """
  p = np.asarray(p_values, np.float64)
  order = np.argsort(p, kind="stable")
  stepped = np.maximum.accumulate(p[order] * (len(p) - np.arange(len(p))))
  adjusted = np.empty_like(p)
  adjusted[order] = np.minimum(stepped, 1.0)
  return adjusted


def compare(abs_errors_a: np.ndarray, abs_errors_b: np.ndarray, groups: np.ndarray, *, confidence: float = 0.95,
            num_draws: int = SIGN_FLIP_DRAWS, num_bootstrap_draws: int = BOOTSTRAP_DRAWS,
            seed: int = 0) -> PairedDifference:
  """Model a against model b from their absolute errors on the same images, ``[N]`` each, and the images' groups.

  ``num_draws`` random sign patterns for the p-value (when there are too many groups to enumerate them all),
  ``num_bootstrap_draws`` resamples of the groups for the interval; both from ``numpy.random.default_rng(seed)``.
  """
  a = np.asarray(abs_errors_a, np.float64)
  b = np.asarray(abs_errors_b, np.float64)
  groups = np.asarray(groups)
  if not (a.ndim == 1 and a.shape == b.shape == groups.shape and len(a)):
    raise ValueError(f"abs_errors_a, abs_errors_b and groups must be non-empty [N] arrays of one length; got shapes "
                     f"{a.shape}, {b.shape}, {groups.shape}.")
  if not (np.isfinite(a).all() and np.isfinite(b).all()):
    raise ValueError("abs_errors_a and abs_errors_b must be finite.")
  differences, counts = group_sums(a - b, groups)
  rng = np.random.default_rng(seed)
  p_value, exact = sign_flip_p_value(differences, num_draws=num_draws, rng=rng)
  return PairedDifference(
      mae_a=float(a.mean()), mae_b=float(b.mean()), mae_difference=float(differences.sum() / len(a)),
      interval=bootstrap_interval(differences, counts, confidence=confidence, num_draws=num_bootstrap_draws, rng=rng),
      confidence=confidence, p_value=p_value, exact=exact, num_images=len(a), num_groups=len(differences),
      groups_a_better=int(np.sum(differences < 0)), groups_b_better=int(np.sum(differences > 0)))


def seed_mean_errors(paths: Sequence[str | os.PathLike], group_field: str = "subject_id"
                     ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """One model's absolute errors averaged over runs (seeds) from their ``predictions.csv`` files.

  Returns ``(file_names, abs_errors, groups)`` sorted by file name. Every file must hold the same images once each.
  ``group_field`` names the column whose values group the images (FG-NET: ``subject_id``; for data without
  subjects, ``file_name`` makes each image its own group).
  """
  if not paths:
    raise ValueError("seed_mean_errors needs at least one predictions.csv.")
  names, errors, groups = None, [], None
  for path in paths:
    table = reports.read_predictions_csv(path)
    missing = {"file_name", "predicted_age", "age", group_field} - set(table)
    if missing:
      hint = ("; for data without subjects (CLAP2016) pass group_field='file_name', each image its own group"
              if missing == {group_field} else "")
      raise ValueError(f"{path} lacks the column(s) {sorted(missing)}{hint}.")
    order = np.argsort(table["file_name"], kind="stable")
    file_names = table["file_name"][order]
    if len(np.unique(file_names)) != len(file_names):
      raise ValueError(f"{path} holds an image more than once; each image must be tested once per run.")
    if names is None:
      names, groups = file_names, table[group_field][order]
    elif not np.array_equal(names, file_names):
      raise ValueError(f"{path} holds other images than {paths[0]}; runs can be compared only on the same images.")
    errors.append(np.abs(table["predicted_age"][order] - table["age"][order]))
  return names, np.mean(errors, axis=0), groups


def compare_runs(runs: dict[str, Sequence[str | os.PathLike]], *, group_field: str = "subject_id",
                 **compare_kwargs) -> list[tuple[str, str, PairedDifference, float]]:
  """Every pair of models, each given by its runs' ``predictions.csv`` files: ``(a, b, result, Holm p)``.

  Each model's absolute errors are averaged over its runs (:func:`seed_mean_errors`); ``compare_kwargs`` go to
  :func:`compare`. Holm's adjustment is over all the pairs returned.
  """
  errors = {model: seed_mean_errors(paths, group_field) for model, paths in runs.items()}
  models = list(errors)
  reference_names, _, groups = errors[models[0]]
  for model in models[1:]:
    if not np.array_equal(errors[model][0], reference_names):
      raise ValueError(f"{model!r} was tested on other images than {models[0]!r}; runs can be compared only on "
                       "the same images.")
  pairs = [(a, b) for i, a in enumerate(models) for b in models[i + 1:]]
  results = [compare(errors[a][1], errors[b][1], groups, **compare_kwargs) for a, b in pairs]
  adjusted = holm([r.p_value for r in results]) if results else []
  return [(a, b, r, float(h)) for (a, b), r, h in zip(pairs, results, adjusted)]


def markdown_table(comparisons: list[tuple[str, str, PairedDifference, float]], group_name: str = "subjects") -> str:
  """The pairs as a Markdown table."""
  if not comparisons:
    return ""
  confidence = comparisons[0][2].confidence
  lines = [f"| a vs b | MAE a − b | {confidence:.0%} interval ({group_name} resampled) | p (sign flip over "
           f"{group_name}) | Holm p | {group_name} a better / b better |", "|---|---:|---:|---:|---:|---:|"]
  for a, b, r, adjusted in comparisons:
    lines.append(f"| {a} vs {b} | {r.mae_difference:+.2f} | [{r.interval[0]:+.2f}, {r.interval[1]:+.2f}] | "
                 f"{format_p_value(r.p_value)} | {format_p_value(adjusted)} | "
                 f"{r.groups_a_better} / {r.groups_b_better} |")
  return "\n".join(lines)


def format_p_value(p: float) -> str:
  """A p-value to 4 decimals, or in scientific notation below 1e-4."""
  return f"{p:.4f}" if p >= 1e-4 else f"{p:.1e}"
