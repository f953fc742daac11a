"""Scaling-law fits (Hoffmann et al. 2022, "Chinchilla", Sec. 3), with uncertainty.

Approach 1: the lower envelope of loss versus compute over all training
curves; the runs on it give N_opt(C) and D_opt(C), fitted as power laws.
Approach 2: per compute budget, a parabola in log N through the final losses
(IsoFLOP profile); its minima give N_opt(C) = k C^a and D_opt(C) = k' C^b.
Approach 3: L(N, D) = E + A / N^alpha + B / D^beta, fitted in log space with
log L = LSE(a - alpha log N, b - beta log D, e) (A = e^a, B = e^b, E = e^e),
the Huber loss (delta 1e-3) summed over points, and L-BFGS from a full grid
of starts; the compute-optimal frontier follows with exponent
a = beta / (alpha + beta) for N_opt.
Every fit can be bootstrapped (resampling points) into percentile intervals.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
from typing import Callable, Sequence

import numpy as np
import scipy.optimize
import scipy.special


class FitError(ValueError):
  """Too few or invalid points for a method; the message says what is needed."""


def _check(name: str, **arrays) -> None:
  for k, v in arrays.items():
    v = np.asarray(v, float)
    if not np.all(np.isfinite(v)):
      bad = np.flatnonzero(~np.isfinite(v))[:5].tolist()
      raise FitError(f'{name}: {k} has non-finite values at rows {bad}')
    if np.any(v <= 0):
      raise FitError(f'{name}: {k} must be positive (rows {np.flatnonzero(v <= 0)[:5].tolist()})')


@dataclasses.dataclass(frozen=True)
class PowerLaw:
  """y = k * x^exponent, fitted by least squares in log-log space."""
  k: float
  exponent: float

  def __call__(self, x):
    return self.k * np.asarray(x, float) ** self.exponent


def fit_power_law(x, y) -> PowerLaw:
  x, y = np.asarray(x, float), np.asarray(y, float)
  _check('power law', x=x, y=y)
  if len(np.unique(x)) < 2:
    raise FitError(f'a power law needs at least 2 distinct x values, got {len(np.unique(x))}')
  slope, intercept = np.polyfit(np.log(x), np.log(y), 1)
  return PowerLaw(float(math.exp(intercept)), float(slope))


# --- Approach 1 ----------------------------------------------------------------

def envelope(curves: dict[str, tuple[np.ndarray, np.ndarray]], num_bins: int = 20
             ) -> list[tuple[float, float, str]]:
  """Lower envelope of loss vs compute: per log-spaced compute bin, the lowest
  loss any run reached at or below that compute. Returns (C, loss, run)."""
  pts = [(c, l, name) for name, (cs, ls) in curves.items() for c, l in zip(cs, ls)]
  if len(curves) < 2 or len(pts) < 3:
    raise FitError(f'the envelope needs at least 2 runs and 3 points, got {len(curves)} runs '
                   f'and {len(pts)} points')
  cs = np.array([p[0] for p in pts])
  _check('envelope', compute=cs, loss=[p[1] for p in pts])
  edges = np.geomspace(cs.min(), cs.max(), num_bins + 1)
  out = []
  for hi in edges[1:]:
    c, l, name = min((p for p in pts if p[0] <= hi * (1 + 1e-9)), key=lambda p: p[1])
    if not out or l < out[-1][1]:
      out.append((float(c), float(l), name))
  return out


def approach1(curves: dict[str, tuple[np.ndarray, np.ndarray]], n_of: dict[str, float],
              flops_per_token: Callable[[str], float], num_bins: int = 20) -> dict:
  """Power laws of N and D along the envelope (distinct runs only)."""
  env = envelope(curves, num_bins)
  c = np.array([e[0] for e in env])
  n = np.array([n_of[e[2]] for e in env])
  d = c / np.array([flops_per_token(e[2]) for e in env])
  if len({e[2] for e in env}) < 2:
    raise FitError('approach 1 needs at least 2 distinct runs on the envelope; the '
                   'smallest-compute run dominated everywhere')
  return {'envelope': env, 'N_opt': fit_power_law(c, n), 'D_opt': fit_power_law(c, d)}


# --- Approach 2 ----------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class IsoFlopFit:
  budgets: np.ndarray
  n_opt: np.ndarray
  loss_opt: np.ndarray
  parabolas: list  # (c2, c1, c0) of loss = c2 x^2 + c1 x + c0, x = log N.
  bracketed: list[bool]  # The minimum lies inside the sampled N range.
  N_opt: PowerLaw
  D_opt: PowerLaw


def approach2(budget, n, loss, tokens_for: Callable[[float, float], float]) -> IsoFlopFit:
  """Per budget: parabola in log N; minima -> power laws in C.

  tokens_for(C, N) gives D for a model of N params at budget C (the
  sweep's FLOP convention decides it).
  """
  budget, n, loss = (np.asarray(a, float) for a in (budget, n, loss))
  _check('approach 2', budget=budget, N=n, loss=loss)
  budgets = np.unique(budget)
  if len(budgets) < 2:
    raise FitError(f'approach 2 needs at least 2 compute budgets, got {len(budgets)}')
  n_opt, l_opt, pars, brack = [], [], [], []
  for c in budgets:
    sel = budget == c
    if len(np.unique(n[sel])) < 3:
      raise FitError(f'approach 2 needs at least 3 model sizes per budget; budget {c:.3g} has '
                     f'{len(np.unique(n[sel]))}')
    x = np.log(n[sel])
    c2, c1, c0 = np.polyfit(x, loss[sel], 2)
    if c2 <= 0:
      raise FitError(f'the IsoFLOP profile at budget {c:.3g} is not convex (curvature {c2:.3g}); '
                     'the sizes do not bracket a minimum')
    x_min = -c1 / (2 * c2)
    brack.append(bool(x.min() <= x_min <= x.max()))
    n_opt.append(math.exp(x_min))
    l_opt.append(c0 - c1 * c1 / (4 * c2))
    pars.append((c2, c1, c0))
  n_opt = np.array(n_opt)
  d_opt = np.array([tokens_for(c, m) for c, m in zip(budgets, n_opt)])
  return IsoFlopFit(budgets, n_opt, np.array(l_opt), pars, brack,
                    fit_power_law(budgets, n_opt), fit_power_law(budgets, d_opt))


# --- Approach 3 ----------------------------------------------------------------

# Hoffmann et al. 2022, App. D.2: the grid of initial values.
GRID = {'alpha': (0.0, 0.5, 1.0, 1.5, 2.0), 'beta': (0.0, 0.5, 1.0, 1.5, 2.0),
        'e': (-1.0, -0.5, 0.0, 0.5, 1.0), 'a': (0.0, 5.0, 10.0, 15.0, 20.0, 25.0),
        'b': (0.0, 5.0, 10.0, 15.0, 20.0, 25.0)}
# A 162-start subset for quick fits (tests, previews).
COARSE_GRID = {'alpha': (0.0, 0.5, 1.0), 'beta': (0.0, 0.5, 1.0), 'e': (0.0, 0.5),
               'a': (0.0, 5.0, 10.0), 'b': (0.0, 5.0, 10.0)}
_ORDER = ('a', 'b', 'e', 'alpha', 'beta')


def _huber(r, delta):
  a = np.abs(r)
  return np.where(a <= delta, 0.5 * r * r, delta * (a - 0.5 * delta))


def _objective(theta, logn, logd, logl, delta):
  a, b, e, alpha, beta = theta
  z = np.stack([a - alpha * logn, b - beta * logd, np.full_like(logn, e)])
  pred = scipy.special.logsumexp(z, axis=0)
  r = pred - logl
  w = scipy.special.softmax(z, axis=0)
  g_r = np.clip(r, -delta, delta)  # d huber / d r.
  grad = np.array([
      np.sum(g_r * w[0]), np.sum(g_r * w[1]), np.sum(g_r * w[2]),
      np.sum(g_r * w[0] * -logn), np.sum(g_r * w[1] * -logd)])
  return float(np.sum(_huber(r, delta))), grad


@dataclasses.dataclass(frozen=True)
class ParametricFit:
  E: float
  A: float
  B: float
  alpha: float
  beta: float
  objective: float
  grad_norm: float
  best_start: dict
  start_on_grid_edge: bool
  starts: int
  # The optimum as fitted, (log A, log B, log E, alpha, beta): exp(log E) can
  # underflow to E = 0 when the data want no irreducible loss.
  x: tuple[float, ...] = ()

  @property
  def a(self) -> float:
    """N_opt ~ C^a with a = beta / (alpha + beta)."""
    return self.beta / (self.alpha + self.beta)

  @property
  def b(self) -> float:
    return self.alpha / (self.alpha + self.beta)

  def loss(self, n, d):
    n, d = np.asarray(n, float), np.asarray(d, float)
    return self.E + self.A / n ** self.alpha + self.B / d ** self.beta

  def optimal(self, c, flops_per_param_token: float = 6.0):
    """N_opt(C), D_opt(C) on the frontier when C = k N D (k = 6 by default)."""
    c = np.asarray(c, float) / flops_per_param_token
    g = (self.alpha * self.A / (self.beta * self.B)) ** (1 / (self.alpha + self.beta))
    n = g * c ** self.a
    return n, c / n


def approach3(n, d, loss, delta: float = 1e-3, grid: dict | None = None,
              starts: Sequence[Sequence[float]] | None = None, polish: int = 10
              ) -> ParametricFit:
  """Hoffmann's parametric fit; `starts` (a, b, e, alpha, beta) replace the grid."""
  n, d, loss = (np.asarray(x, float) for x in (n, d, loss))
  _check('approach 3', N=n, D=d, loss=loss)
  if len(loss) < 5:
    raise FitError(f'approach 3 fits 5 parameters and needs at least 5 points, got {len(loss)}')
  if len(np.unique(n)) < 2 or len(np.unique(d)) < 2:
    raise FitError('approach 3 needs at least 2 distinct N and 2 distinct D')
  logn, logd, logl = np.log(n), np.log(d), np.log(loss)
  grid = grid or GRID
  from_grid = starts is None
  if from_grid:
    starts = list(itertools.product(*(grid[k] for k in _ORDER)))
  # Stage 1: every start with L-BFGS's default tolerances finds the basins.
  # Stage 2: the best `polish` of them again with tight tolerances: with
  # delta = 1e-3 most residuals sit in Huber's linear part, whose small,
  # nearly constant gradient otherwise stops L-BFGS early (and made the
  # bootstrap intervals far too narrow). Same optimum, ~4x less time.
  args = (logn, logd, logl, delta)
  rough = [(scipy.optimize.minimize(_objective, np.asarray(x0, float), args=args, jac=True,
                                    method='L-BFGS-B'), x0) for x0 in starts]
  rough.sort(key=lambda rx: rx[0].fun)
  best = None
  for r0, x0 in rough[:polish]:
    res = scipy.optimize.minimize(_objective, r0.x, args=args, jac=True, method='L-BFGS-B',
                                  options={'ftol': 1e-15, 'gtol': 1e-10, 'maxiter': 5000})
    if best is None or res.fun < best[0].fun:
      best = (res, x0)
  res, x0 = best
  a, b, e, alpha, beta = res.x
  start = dict(zip(_ORDER, (float(v) for v in x0)))
  on_edge = from_grid and any(start[k] in (min(grid[k]), max(grid[k])) for k in _ORDER)
  _, g = _objective(res.x, logn, logd, logl, delta)
  return ParametricFit(E=float(math.exp(e)), A=float(math.exp(a)), B=float(math.exp(b)),
                       alpha=float(alpha), beta=float(beta), objective=float(res.fun),
                       grad_norm=float(np.linalg.norm(g)), best_start=start,
                       start_on_grid_edge=bool(on_edge), starts=len(starts),
                       x=tuple(float(v) for v in res.x))


def bootstrap(fit_fn: Callable[[np.ndarray], dict[str, float]], num_points: int,
              resamples: int = 1000, seed: int = 0, level: float = 0.95,
              groups: np.ndarray | None = None, draws_out: dict | None = None
              ) -> dict[str, tuple[float, float]]:
  """Percentile intervals of each value fit_fn returns over resampled rows.

  With `groups`, rows are resampled within each group (e.g. per budget), so
  every resample keeps the design a method needs. Failed refits (errors,
  overflow, non-finite values) are skipped and counted in the '_failed' entry,
  never raised; a value no refit produced has no entry. `draws_out` receives
  every draw.
  """
  rng = np.random.default_rng(seed)
  rows = np.arange(num_points)
  draws: dict[str, list[float]] = {}
  failed = 0
  for _ in range(resamples):
    if groups is None:
      idx = rng.choice(rows, num_points)
    else:
      idx = np.concatenate([rng.choice(rows[groups == g], (groups == g).sum())
                            for g in np.unique(groups)])
    try:
      vals = fit_fn(idx)
    except (FitError, np.linalg.LinAlgError, FloatingPointError, OverflowError, ValueError):
      failed += 1  # E.g. a near-flat resampled parabola whose optimum overflows.
      continue
    if not all(math.isfinite(v) for v in vals.values()):
      failed += 1
      continue
    for k, v in vals.items():
      draws.setdefault(k, []).append(v)
  if draws_out is not None:
    draws_out.update({k: np.asarray(v) for k, v in draws.items()})
  lo, hi = (1 - level) / 2 * 100, (1 + level) / 2 * 100
  out = {k: (float(np.percentile(v, lo)), float(np.percentile(v, hi))) for k, v in draws.items()}
  out['_failed'] = (failed, resamples)
  return out


def approach3_intervals(n, d, loss, fit: ParametricFit, resamples: int = 1000, seed: int = 0
                        ) -> dict[str, tuple[float, float]]:
  """Bootstrap intervals of E, A, B, alpha, beta and a; each refit starts from
  the full fit's optimum (a grid search per resample would cost ~30 s each)."""
  n, d, loss = (np.asarray(x, float) for x in (n, d, loss))
  x_best = list(fit.x)

  def refit(idx):
    g = approach3(n[idx], d[idx], loss[idx], starts=[x_best])
    return {k: getattr(g, k) for k in ('E', 'A', 'B', 'alpha', 'beta', 'a')}

  return bootstrap(refit, len(loss), resamples, seed)


def tokens_at(n, c, d) -> Callable[[float, float], float]:
  """(C, N) -> D for a model of N params at budget C, with FLOPs per token
  interpolated in log N across the runs (n, c, d), so it follows whichever
  FLOP convention c was counted in."""
  n, c, d = (np.asarray(x, float) for x in (n, c, d))
  order = np.argsort(n)
  logn, fpt = np.log(n[order]), (c / d)[order]
  return lambda cc, nn: cc / np.interp(np.log(nn), logn, fpt)
