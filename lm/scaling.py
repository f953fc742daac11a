"""Scaling-law fits (Hoffmann et al. 2022, "Chinchilla", Sec. 3), with uncertainty.

Approach 1: the lower envelope of loss versus compute over all training
curves; the runs on it give N_opt(C) and D_opt(C), fitted as power laws.
Approach 2: per compute budget, a parabola in log N through the final losses
(IsoFLOP profile); its minima give N_opt(C) = k C^a and D_opt(C) = k' C^b.
Approach 3: L(N, D) = E + A / N^alpha + B / D^beta, fitted in log space with
log L = LSE(a - alpha log N, b - beta log D, e) (A = e^a, B = e^b, E = e^e),
the Huber loss (delta 1e-3) summed over points, minimised from a full grid
of starts; its compute-optimal frontier has N_opt ~ C^a with
a = beta / (alpha + beta) when C = k N D exactly (`ParametricFit.a_kND`), and
is found numerically (`frontier_exponents`) when C is counted as the sweep
counts it (logits and attention make FLOPs per token grow slower than N, so
the two differ: 0.18 against 0.28 on a law simulated with 6N + 24,000 FLOPs per
token), which is the exponent Approaches 1 and 2 estimate.

Intervals: Approach 2 by a residual bootstrap within budgets (the design is
kept, only the noise is redrawn; resampling rows instead drops sizes and made
the intervals ~10x wider than the estimate's real spread), widened when the
budgets' optima scatter about the power law more than their noise explains;
Approaches 1 and 3 by resampling runs. tools/fit_coverage.py checks on
simulated sweeps from a known law that the 95% intervals cover it.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
from typing import Callable, Sequence

import numpy as np


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
  if not abs(intercept) < 700:  # exp() would overflow (or NaN): a degenerate fit.
    raise FitError(f'the power law\'s constant exp({intercept:.3g}) is out of range')
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
  if len(np.unique(n)) < 2:  # Runs of one size (seeds, LRs) give a slope of exactly 0.
    raise FitError(f'approach 1 needs at least 2 model sizes on the envelope, got '
                   f'{len(np.unique(n))} (from {len({e[2] for e in env})} runs): one size '
                   'dominated everywhere')
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
    if not _convex(c2, np.ptp(x), np.abs(loss[sel]).max()):
      raise FitError(f'the IsoFLOP profile at budget {c:.3g} is not convex (curvature {c2:.3g}); '
                     'the sizes do not bracket a minimum')
    x_min = -c1 / (2 * c2)
    if not abs(x_min) < MAX_LOG_N:
      raise FitError(f'the IsoFLOP profile at budget {c:.3g} is nearly straight: its parabola\'s '
                     f'minimum is at N = e^{x_min:.3g}, beyond any model size')
    brack.append(bool(x.min() <= x_min <= x.max()))
    n_opt.append(math.exp(x_min))
    l_opt.append(c0 - c1 * c1 / (4 * c2))
    pars.append((c2, c1, c0))
  n_opt = np.array(n_opt)
  d_opt = np.array([tokens_for(c, m) for c, m in zip(budgets, n_opt)])
  return IsoFlopFit(budgets, n_opt, np.array(l_opt), pars, brack,
                    fit_power_law(budgets, n_opt), fit_power_law(budgets, d_opt))


# A parabola minimum beyond e^700 (~1e304 parameters) overflows float64.
MAX_LOG_N = 700.0


def _convex(c2, span, scale):
  """Curvature that rises above rounding: c2 > 0 is not enough, since a flat
  profile's fitted c2 is +-1e-16 noise whose sign depends on the loss value."""
  return c2 * span * span > 1e-9 * np.maximum(scale, 1.0)


def _percentiles(draws: dict[str, np.ndarray], level: float) -> dict:
  lo, hi = (1 - level) / 2 * 100, (1 + level) / 2 * 100
  return {k: (float(np.percentile(v, lo)), float(np.percentile(v, hi)))
          for k, v in draws.items() if len(v)}


def approach2_intervals(budget, n, loss, tokens_for: Callable[[float, float], float],
                        resamples: int = 1000, seed: int = 0, level: float = 0.95,
                        draws_out: dict | None = None) -> dict:
  """Residual-bootstrap intervals of a, b, log k_N and log k_D.

  Each budget's parabola is refitted to its fitted values plus residuals
  drawn with replacement (leverage-adjusted and centred: Davison & Hinkley
  1997, Alg. 6.3) from that budget when it has at least 10 points, else from
  all budgets pooled; every size stays in every resample. A resample whose
  parabola is not convex at some budget counts as failed. The intervals are
  percentiles, widened about the estimate by sqrt(chi2/dof) when the
  budgets' optima scatter about the fitted power law more than their
  bootstrap variances explain (chi2 over budgets - 2 dof; the widening is
  reported as '_lack_of_fit'). Vectorised: 1000 resamples take milliseconds.
  """
  budget, n, loss = (np.asarray(a, float) for a in (budget, n, loss))
  fit = approach2(budget, n, loss, tokens_for)
  rng = np.random.default_rng(seed)
  groups = [budget == c for c in fit.budgets]
  if sum(int(g.sum()) - 3 for g in groups) < 2:  # Parabolas through 3 points: no residuals.
    counts = ', '.join(str(int(g.sum())) for g in groups)
    return {'_failed': (0, 0), '_lack_of_fit': 1.0, '_lack_of_fit_tested': False,
            '_why': f'the budgets have {counts} points and each parabola fits 3 of them '
                    'exactly, leaving fewer than 2 residuals to resample (use 4+ sizes or '
                    '2+ seeds)'}
  designs, fitted, resid = [], [], []
  for sel in groups:
    x = np.log(n[sel])
    X = np.stack([x * x, x, np.ones_like(x)], 1)
    coef, *_ = np.linalg.lstsq(X, loss[sel], rcond=None)
    h = np.einsum('ij,jk,ik->i', X, np.linalg.pinv(X.T @ X), X)
    r = (loss[sel] - X @ coef) / np.sqrt(np.clip(1 - h, 1e-3, None))
    designs.append(np.linalg.pinv(X))
    fitted.append(X @ coef)
    resid.append(r - r.mean())
  # Budgets of exactly 3 points have no residuals (their parabolas interpolate:
  # ~1e-16), and pooling those zeros shrank the others' resampled noise.
  pooled = np.concatenate([r for r, sel in zip(resid, groups) if sel.sum() > 3])
  log_n = np.empty((resamples, len(groups)))
  ok = np.ones(resamples, bool)
  with np.errstate(all='ignore'):
    for j, (pinv, yhat, r) in enumerate(zip(designs, fitted, resid)):
      pool = r if len(r) >= 10 else pooled
      y = yhat + rng.choice(pool, (resamples, len(yhat)))
      c2, c1, _ = (y @ pinv.T).T
      log_n[:, j] = -c1 / (2 * c2)
      ok &= _convex(c2, np.ptp(np.log(n[groups[j]])), np.abs(yhat).max())
      ok &= np.abs(log_n[:, j]) < MAX_LOG_N
  log_c = np.log(fit.budgets)
  xc = log_c - log_c.mean()

  def slope_intercept(y):  # Least squares of y (R x budgets) on log C, per row.
    sl = (y - y.mean(1, keepdims=True)) @ xc / (xc @ xc)
    return sl, y.mean(1) - sl * log_c.mean()

  log_n = log_n[ok]
  with np.errstate(all='ignore'):
    log_d = np.log(tokens_for(fit.budgets[None, :], np.exp(log_n)))
  a, log_kn = slope_intercept(log_n)
  b, log_kd = slope_intercept(log_d)
  draws = {'a': a, 'b': b, 'log_kn': log_kn, 'log_kd': log_kd}
  finite = np.all([np.isfinite(v) for v in draws.values()], 0)  # Rows stay paired.
  draws = {k: v[finite] for k, v in draws.items()}
  if draws_out is not None:
    draws_out.update(draws)
  out = _percentiles(draws, level)
  # Lack of fit: the optima's scatter about the line vs their bootstrap spread.
  factor, dof = 1.0, len(groups) - 2
  tested = dof > 0 and len(log_n) > 10  # 2 budgets: a line passes through both.
  if tested:
    var = (np.diff(np.percentile(log_n, [2.5, 97.5], axis=0), axis=0)[0] / 3.92) ** 2
    line = math.log(fit.N_opt.k) + fit.N_opt.exponent * log_c
    chi2 = float(np.sum((np.log(fit.n_opt) - line) ** 2 / np.maximum(var, 1e-12)))
    factor = max(1.0, math.sqrt(chi2 / dof))
  centre = {'a': fit.N_opt.exponent, 'b': fit.D_opt.exponent,
            'log_kn': math.log(fit.N_opt.k), 'log_kd': math.log(fit.D_opt.k)}
  for k, (lo, hi) in list(out.items()):
    out[k] = (centre[k] - factor * (centre[k] - lo), centre[k] + factor * (hi - centre[k]))
  out['_failed'] = (int(resamples - finite.sum()), resamples)  # Non-convex or non-finite.
  out['_lack_of_fit'] = factor
  out['_lack_of_fit_tested'] = tested
  return out


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


def _residuals(x, logn, logd, logl):
  """(log-space residuals S x P, softmax weights 3 x S x P) for parameters x (S x 5)."""
  a, b, e, alpha, beta = (x[:, i:i + 1] for i in range(5))
  z = np.stack(np.broadcast_arrays(a - alpha * logn, b - beta * logd, e))
  top = z.max(0)
  ez = np.exp(z - top)
  total = ez.sum(0)
  return top + np.log(total) - logl, ez / total


def _objective(x, logn, logd, logl, w, delta):
  return np.sum(w * _huber(_residuals(x, logn, logd, logl)[0], delta), axis=-1)


def minimize(x0, logn, logd, logl, w=1.0, delta: float = 1e-3, iters: int = 100,
             tol: float = 0.0):
  """Many Approach-3 fits at once: (x S x 5, objective S, gradient norm S).

  Each row of x0 is a start (a, b, e, alpha, beta); w (S x P or scalar)
  weights the points (bootstrap counts). Levenberg-Marquardt on the Huber
  objective through iteratively reweighted Gauss-Newton (Huber's weights
  min(1, delta/|r|) make J^T W r its exact gradient), a step kept only when
  it lowers the objective. Vectorised over starts in numpy float64: the 4500
  grid starts on 70 points take ~50 ms per iteration, where scipy's L-BFGS
  took ~30 s for them one by one; it reaches the same optimum (to 1e-11 in
  the objective; tests/test_scaling.py). With tol > 0 a row stops once its
  gradient norm is below tol (checked every 10 iterations), so the rows
  still moving no longer pay for the converged ones."""
  x = np.array(x0, float)
  w = np.array(np.broadcast_to(np.asarray(w, float), (len(x), len(logl))))
  lam = np.full(len(x), 1e-3)
  eye = np.eye(5)

  def jac(sm):
    return np.stack(np.broadcast_arrays(sm[0], sm[1], sm[2], -sm[0] * logn, -sm[1] * logd), -1)

  def grad(J, w, r):  # J^T W r with Huber's weights: w * clip(r, -delta, delta).
    return np.einsum('spi,sp->si', J, w * np.clip(r, -delta, delta))

  with np.errstate(all='ignore'):
    f = _objective(x, logn, logd, logl, w, delta)
    live = np.arange(len(x))  # The rows still iterating.
    for it in range(iters):
      xl, wl = x[live], w[live]
      r, sm = _residuals(xl, logn, logd, logl)
      J = jac(sm)
      g = grad(J, wl, r)
      if tol and it and it % 10 == 0:  # Converged rows leave, from this step's gradient.
        moving = ~(np.linalg.norm(g, axis=-1) < tol)
        if not moving.any():
          break
        live, xl, wl, r, J, g = (v[moving] for v in (live, xl, wl, r, J, g))
      om = wl * np.minimum(1.0, delta / np.abs(r))
      H = np.einsum('spi,sp,spj->sij', J, om, J)
      damp = lam[live, None] * np.einsum('sii->si', H) + 1e-12
      try:
        step = np.linalg.solve(H + damp[:, :, None] * eye, -g[..., None])[..., 0]
      except np.linalg.LinAlgError:  # A singular row: take none of this round's steps.
        step = np.zeros_like(xl)
      f_new = _objective(xl + step, logn, logd, logl, wl, delta)
      better = np.isfinite(f_new) & (f_new <= f[live])
      x[live] = np.where(better[:, None], xl + step, xl)
      f[live] = np.where(better, f_new, f[live])
      lam[live] = np.clip(np.where(better, lam[live] / 3, lam[live] * 4), 1e-12, 1e12)
    r, sm = _residuals(x, logn, logd, logl)
    return x, f, np.linalg.norm(grad(jac(sm), w, r), axis=-1)


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
  def a_kND(self) -> float:
    """N_opt ~ C^a with a = beta / (alpha + beta), when C = k N D exactly."""
    return self.beta / (self.alpha + self.beta)  # approach3 refuses alpha + beta = 0.

  @property
  def b_kND(self) -> float:
    return self.alpha / (self.alpha + self.beta)

  def frontier(self, tokens_for: Callable, budgets) -> dict[str, float]:
    """{'a', 'b'}: the frontier's exponents over `budgets`, C counted as
    `tokens_for` counts it (see frontier_exponents)."""
    return {k: float(v[0]) for k, v in
            frontier_exponents(np.asarray([self.x]), tokens_for, budgets).items()}

  def loss(self, n, d):
    n, d = np.asarray(n, float), np.asarray(d, float)
    return self.E + self.A / n ** self.alpha + self.B / d ** self.beta

  def optimal(self, c, flops_per_param_token: float = 6.0):
    """N_opt(C), D_opt(C) on the frontier when C = k N D (k = 6 by default)."""
    c = np.asarray(c, float) / flops_per_param_token
    g = (self.alpha * self.A / (self.beta * self.B)) ** (1 / (self.alpha + self.beta))
    n = g * c ** self.a_kND
    return n, c / n


def frontier(x, tokens_for: Callable, budgets, span: float = 1e4, points: int = 801
             ) -> tuple[np.ndarray, np.ndarray]:
  """(N_opt, D_opt), each [R, K]: the compute-optimal frontier of each fitted
  law x [R, 5] ((log A, log B, log E, alpha, beta) rows) at K budgets, with
  D = tokens_for(C, N), so C is counted in the sweep's FLOP convention.

  N_opt minimises L(N, tokens_for(C, N)) on a log grid over `span` times the
  budget's 6ND optimum either way, refined by a parabola through the best grid
  point and its neighbours; an optimum at the grid's end (no minimum in reach)
  or a non-finite loss gives NaN."""
  x = np.atleast_2d(np.asarray(x, float))
  cs = np.asarray(budgets, float)[None, :, None]  # [1, K, 1]
  la, lb, le, alpha, beta = (v[:, None, None] for v in x.T)  # [R, 1, 1]
  with np.errstate(all='ignore'):
    h = 2 * np.log(span) / (points - 1)
    logn = np.log(np.sqrt(cs / 6)) + np.linspace(-np.log(span), np.log(span), points)
    logd = np.log(tokens_for(cs, np.exp(logn)))  # [1, K, G]
    loss = np.exp(le) + np.exp(la - alpha * logn) + np.exp(lb - beta * logd)  # [R, K, G]
    loss = np.where(np.isfinite(loss) & np.isfinite(logd), loss, np.inf)
    i = np.argmin(loss, axis=-1)  # [R, K]
    j = np.clip(i, 1, points - 2)
    l0, l1, l2 = (np.take_along_axis(loss, (j + o)[..., None], -1)[..., 0] for o in (-1, 0, 1))
    curv = l0 - 2 * l1 + l2
    shift = np.where(curv > 0, 0.5 * (l0 - l2) / curv, 0.0) * h
    at = np.take_along_axis(np.broadcast_to(logn, loss.shape), j[..., None], -1)[..., 0]
    ok = (i > 0) & (i < points - 1) & np.isfinite(l1)
    n_opt = np.where(ok, np.exp(at + shift), np.nan)
    return n_opt, tokens_for(cs[..., 0], n_opt)


def frontier_budgets(budget, c) -> np.ndarray:
  """The compute values a frontier's exponents are read over: an IsoFLOP
  sweep's budgets, else (grid and WSD runs have budget 0) six points across
  its runs' compute."""
  budget, c = np.asarray(budget, float), np.asarray(c, float)
  return np.unique(budget[budget > 0]) if (budget > 0).any() else np.geomspace(
      c.min(), c.max(), 6)


def e_at_zero(fit: 'ParametricFit', loss) -> bool:
  """E at its lower bound: the fit put the whole loss into the power-law
  terms, and bootstrap refits that start there stay there."""
  return fit.E < 1e-3 * float(np.min(loss))


def frontier_exponents(x, tokens_for: Callable, budgets) -> dict[str, np.ndarray]:
  """{'a': [R], 'b': [R]}: N_opt ~ C^a and D_opt ~ C^b along each law's
  frontier (see `frontier`), as the least-squares slopes of log N_opt and
  log D_opt on log C over the budgets, as Approach 2 fits its optima (with one
  budget, over [C/2, 2C]). NaN for a law with no optimum in reach at some budget."""
  cs = np.unique(np.asarray(budgets, float))
  if len(cs) == 1:
    cs = np.array([cs[0] / 2, cs[0] * 2])
  n_opt, d_opt = frontier(x, tokens_for, cs)
  logc = np.log(cs) - np.log(cs).mean()
  with np.errstate(all='ignore'):
    def slope(y):  # [R, K] -> [R]; NaN rows stay NaN.
      y = np.log(y)
      return (y - y.mean(-1, keepdims=True)) @ logc / (logc @ logc)
    return {'a': slope(n_opt), 'b': slope(d_opt)}


def approach3(n, d, loss, delta: float = 1e-3, grid: dict | None = None,
              starts: Sequence[Sequence[float]] | None = None, polish: int = 20
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
  x0 = np.asarray(starts, float).reshape(-1, 5)
  # Every start a few iterations to find the basins, then the best `polish`
  # of them to convergence: with delta = 1e-3 most residuals sit in Huber's
  # linear part, where a loose stop leaves the optimum (and the bootstrap
  # intervals) wrong.
  x, f, _ = minimize(x0, logn, logd, logl, delta=delta, iters=25)
  best = np.argsort(np.where(np.isfinite(f), f, np.inf))[:polish]
  x, f, g = minimize(x[best], logn, logd, logl, delta=delta, iters=200)
  i = int(np.argmin(np.where(np.isfinite(f), f, np.inf)))
  if not np.isfinite(f[i]):
    raise FitError('approach 3: no start reached a finite objective')
  a, b, e, alpha, beta = x[i]
  # a = beta / (alpha + beta) needs both terms to change the loss over the data:
  # a term that is flat there (an exponent near 0, or a coefficient driven to
  # ~0 with any exponent) leaves its exponent, and a, undetermined.
  span = lambda t: float(np.ptp(np.exp(t))) if np.all(np.isfinite(t)) else 0.0  # noqa: E731
  scale = float(np.exp(logl).mean())
  flat = [name for name, t in (('N', a - alpha * logn), ('D', b - beta * logd))
          if span(t) < 1e-6 * scale]
  if alpha + beta < 1e-6 or flat:
    raise FitError(f'approach 3: the fitted exponents are alpha = {alpha:.3g}, beta = '
                   f'{beta:.3g} and the {" and ".join(flat) or "N and D"} term(s) do not change '
                   'the loss over the data: the losses do not fall with N or D, so there is no '
                   'compute-optimal allocation to fit')
  # Many starts reach the same optimum; it counts as found from the grid's
  # edge only if every polished start that reached it lies on the edge.
  def on_edge_(j):  # A coordinate of 2 grid values has no inside: it does not count.
    st = dict(zip(_ORDER, x0[best[j]]))
    return any(st[k] in (min(grid[k]), max(grid[k])) for k in _ORDER if len(grid[k]) > 2)
  reached = [j for j in range(len(f)) if f[j] <= f[i] + 1e-8 * max(1.0, abs(f[i]))]
  if from_grid:
    inside = [j for j in reached if not on_edge_(j)]
    i_start = inside[0] if inside else i
  else:
    i_start = i
  start = dict(zip(_ORDER, (float(v) for v in x0[best[i_start]])))
  on_edge = from_grid and not inside
  return ParametricFit(E=float(math.exp(e)), A=float(math.exp(min(a, 700))),
                       B=float(math.exp(min(b, 700))), alpha=float(alpha), beta=float(beta),
                       objective=float(f[i]), grad_norm=float(g[i]), best_start=start,
                       start_on_grid_edge=bool(on_edge), starts=len(x0),
                       x=tuple(float(v) for v in x[i]))


def bootstrap(fit_fn: Callable[[np.ndarray], dict[str, float]], num_points: int,
              resamples: int = 1000, seed: int = 0, level: float = 0.95,
              draws_out: dict | None = None) -> dict[str, tuple[float, float]]:
  """Percentile intervals of each value fit_fn returns over resampled rows.

  Failed refits (errors,
  overflow, non-finite values) are skipped and counted in the '_failed' entry,
  never raised; a value no refit produced has no entry. `draws_out` receives
  every draw.
  """
  rng = np.random.default_rng(seed)
  rows = np.arange(num_points)
  draws: dict[str, list[float]] = {}
  failed = 0
  for _ in range(resamples):
    idx = rng.choice(rows, num_points)
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
  out = _percentiles({k: np.asarray(v) for k, v in draws.items()}, level)
  out['_failed'] = (failed, resamples)
  return out


def approach3_intervals(n, d, loss, fit: ParametricFit, resamples: int = 1000, seed: int = 0,
                        level: float = 0.95, tokens_for: Callable | None = None,
                        budgets=None) -> dict[str, tuple[float, float]]:
  """Bootstrap intervals of E, A, B, alpha, beta, a_kND and b_kND, and with
  `tokens_for` and `budgets` of the frontier's a and b in that FLOP convention
  (frontier_exponents): runs resampled with replacement (as point weights),
  every refit from the full fit's optimum, all refits at once
  (lm/scaling.minimize). A refit that does not converge (gradient norm above
  1e-6) or is not finite counts as failed."""
  n, d, loss = (np.asarray(x, float) for x in (n, d, loss))
  if resamples == 0:
    return {'_failed': (0, 0)}
  rng = np.random.default_rng(seed)
  P = len(loss)
  w = np.stack([np.bincount(rng.integers(0, P, P), minlength=P) for _ in range(resamples)])
  x0 = np.broadcast_to(np.asarray(fit.x, float), (resamples, 5))
  args = (np.log(n), np.log(d), np.log(loss))
  # A refit stops iterating once it has converged (the same 1e-6 that decides
  # below whether it counts): more iterations would only polish below it (the
  # intervals agree to 6 decimals) and took 4x the time.
  x, f, g = minimize(x0, *args, w, iters=50, tol=1e-6)
  slow = ~(g < 1e-6)  # Ill-conditioned resamples (E -> 0, a steep alpha): go on longer.
  if slow.any():
    x[slow], f[slow], g[slow] = minimize(x[slow], *args, w[slow], iters=1000, tol=1e-6)
  ok = np.isfinite(f) & (g < 1e-6) & np.all(np.isfinite(x), 1)
  a, b, e, alpha, beta = x[ok].T
  with np.errstate(all='ignore'):
    draws = {'log E': e, 'log A': a, 'log B': b, 'alpha': alpha, 'beta': beta,
             'a_kND': beta / (alpha + beta), 'b_kND': alpha / (alpha + beta)}
  if tokens_for is not None:
    draws.update(frontier_exponents(x[ok], tokens_for, budgets))
  out = _percentiles({k: v[np.isfinite(v)] for k, v in draws.items()}, level)
  if tokens_for is not None:  # Refits with no frontier optimum in reach: said, not hidden.
    out['_no_frontier'] = int(np.sum(~np.isfinite(draws['a'])))
  for k in ('E', 'A', 'B'):  # From the logs, so a draw past float64's range stays in (as inf).
    if f'log {k}' in out:
      out[k] = tuple(math.exp(v) if v < 709.0 else math.inf for v in out.pop(f'log {k}'))
  out['_failed'] = (int(resamples - ok.sum()), resamples)
  return out


def tokens_at(n, c, d) -> Callable[[float, float], float]:
  """(C, N) -> D for a model of N params at budget C, with FLOPs per token
  taken from the runs (n, c, d), so it follows whichever FLOP convention c was
  counted in: linear in N between the sampled sizes and extrapolated along the
  end segments beyond them (FLOPs per token grow about linearly in N; read in
  log N, or held at the ends, an optimum between or beyond the sizes got a D
  up to 2x off)."""
  n, c, d = (np.asarray(x, float) for x in (n, c, d))
  sizes = np.unique(n)
  fpt = np.array([np.mean((c / d)[n == s]) for s in sizes])

  def per_token(nn):  # Scalars or arrays (the bootstrap's).
    nn = np.asarray(nn, float)
    if len(sizes) == 1:
      return fpt[0] * nn / sizes[0]
    below = fpt[0] + (fpt[1] - fpt[0]) / (sizes[1] - sizes[0]) * (nn - sizes[0])
    above = fpt[-1] + (fpt[-1] - fpt[-2]) / (sizes[-1] - sizes[-2]) * (nn - sizes[-1])
    out = np.where(nn < sizes[0], below, np.where(nn > sizes[-1], above,
                                                   np.interp(nn, sizes, fpt)))
    return np.where(out > 0, out, fpt[0] * nn / sizes[0])
  def tokens(cc, nn):
    out = cc / per_token(nn)
    return float(out) if np.ndim(out) == 0 else out
  return tokens
