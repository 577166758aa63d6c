"""The statistics of the experiment suite: sample spread, Welch's test, a trend test.

Pure functions of per-seed numbers (top-1 as fractions); scipy gives the t distribution.

- :func:`sample_std`: the standard deviation with Bessel's correction (ddof=1).
- :func:`welch`: Welch's two-sample t-test (unequal variances) of a row against its
  reference row, two-sided.
- :func:`trend`: least-squares slope of top-1 on log2 of a swept setting (K regions, G
  sets) over every run of the sweep, with its t statistic and two-sided p-value (H0: no
  trend).
"""

import math
from typing import Dict, Optional, Sequence

import numpy as np
from scipy import stats

SIGNIFICANCE = 0.05


def sample_std(values: Sequence[float]) -> float:
  """Standard deviation with ddof=1; 0.0 for fewer than two values."""
  values = np.asarray(values, np.float64)
  return float(values.std(ddof=1)) if len(values) > 1 else 0.0


def welch(a: Sequence[float], b: Sequence[float]) -> Optional[Dict[str, float]]:
  """Welch's t-test of ``mean(a) - mean(b)``: ``{"t", "dof", "p"}``, or None with fewer
  than two values on either side. Both samples without spread: ``p`` is 1 for equal
  means and 0 otherwise (``t`` infinite)."""
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  if len(a) < 2 or len(b) < 2:
    return None
  va, vb = a.var(ddof=1) / len(a), b.var(ddof=1) / len(b)
  diff = a.mean() - b.mean()
  if va + vb == 0:
    same = math.isclose(diff, 0.0, abs_tol=1e-12)
    return dict(t=0.0 if same else math.copysign(math.inf, diff),
                dof=float(len(a) + len(b) - 2), p=1.0 if same else 0.0)
  t = diff / math.sqrt(va + vb)
  dof = (va + vb) ** 2 / (va ** 2 / (len(a) - 1) + vb ** 2 / (len(b) - 1))
  return dict(t=float(t), dof=float(dof), p=float(2 * stats.t.sf(abs(t), dof)))


def trend(settings: Sequence[float], top1: Sequence[float]) -> Optional[Dict[str, float]]:
  """Slope of ``top1`` on ``log2(settings)`` (points of top-1 per doubling, as a fraction),
  ``{"slope", "t", "dof", "p", "runs"}``; None with fewer than 3 runs or one setting."""
  x = np.log2(np.asarray(settings, np.float64))
  y = np.asarray(top1, np.float64)
  if len(x) < 3 or np.ptp(x) == 0:
    return None
  dof = len(x) - 2
  xc = x - x.mean()
  slope = float((xc * (y - y.mean())).sum() / (xc ** 2).sum())
  residual = y - y.mean() - slope * xc
  se = math.sqrt((residual ** 2).sum() / dof / (xc ** 2).sum())
  if se == 0:
    return dict(slope=slope, t=math.copysign(math.inf, slope) if slope else 0.0,
                dof=float(dof), p=0.0 if slope else 1.0, runs=len(x))
  t = slope / se
  return dict(slope=slope, t=float(t), dof=float(dof), p=float(2 * stats.t.sf(abs(t), dof)),
              runs=len(x))


def paired(a: Sequence[float], b: Sequence[float]) -> Optional[Dict[str, float]]:
  """Paired t-test of ``a - b`` (seed for seed): ``{"mean", "sd", "t", "dof", "p", "low",
  "high"}`` with the 95% interval of the mean difference ``[low, high]``; None with fewer
  than two pairs. Differences without spread: ``p`` 1 for a zero mean, else 0."""
  d = np.asarray(a, np.float64) - np.asarray(b, np.float64)
  if len(d) < 2:
    return None
  dof = len(d) - 1
  mean, sd = float(d.mean()), float(d.std(ddof=1))
  if sd == 0:
    same = math.isclose(mean, 0.0, abs_tol=1e-12)
    return dict(mean=mean, sd=0.0, t=0.0 if same else math.copysign(math.inf, mean),
                dof=float(dof), p=1.0 if same else 0.0, low=mean, high=mean)
  se = sd / math.sqrt(len(d))
  t = mean / se
  half = float(stats.t.ppf(0.975, dof)) * se
  return dict(mean=mean, sd=sd, t=float(t), dof=float(dof), p=float(2 * stats.t.sf(abs(t), dof)),
              low=mean - half, high=mean + half)


def holm(p_values: Sequence[float]) -> list:
  """Holm-Bonferroni adjusted p-values, in the order given (each at most 1)."""
  p = np.asarray(p_values, np.float64)
  order = np.argsort(p, kind="stable")
  adjusted = np.empty_like(p)
  running = 0.0
  for rank, i in enumerate(order):
    running = max(running, (len(p) - rank) * p[i])
    adjusted[i] = min(1.0, running)
  return [float(x) for x in adjusted]


def minimum_detectable_difference(sd: float, pairs: int, power: float = 0.8,
                                  alpha: float = SIGNIFICANCE) -> float:
  """The smallest true mean difference a two-sided paired t-test at ``alpha`` detects with
  ``power``, for ``pairs`` pairs whose differences have standard deviation ``sd`` (the
  noncentral t, solved for the noncentrality)."""
  from scipy import optimize  # pylint: disable=import-outside-toplevel
  dof = pairs - 1
  critical = stats.t.ppf(1 - alpha / 2, dof)

  def shortfall(delta):
    nc = delta / (sd / math.sqrt(pairs))
    lower = np.nan_to_num(stats.nct.cdf(-critical, dof, nc))  # NaN where it underflows
    return stats.nct.sf(critical, dof, nc) + lower - power

  se = sd / math.sqrt(pairs)
  return float(optimize.brentq(shortfall, 1e-9 * se, 60.0 * se))


def pairs_needed(sd: float, difference: float, power: float = 0.8,
                 alpha: float = SIGNIFICANCE, most: int = 200) -> int:
  """The fewest pairs (2 or more) whose :func:`minimum_detectable_difference` is at most
  ``difference``; ``most`` if none up to it is."""
  for n in range(2, most + 1):
    if minimum_detectable_difference(sd, n, power, alpha) <= difference:
      return n
  return most
