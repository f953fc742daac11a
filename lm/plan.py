"""Model ladders and sweep plans: IsoFLOP, N x D grid, WSD cooldown branches.

Ladder rule: d_model = aspect * num_layers (so d_model / num_layers is fixed,
as in Kaplan et al. 2020, Sec. 3), heads = d_model / head_dim, MLP 4 x
d_model, KV heads gcd(heads, base KV heads) for a grouped-query base (else
multi-head); rung k has k layers. Every one of these fields is a run override
(RUNG_FIELDS), so the planned count is the trained model's. A target size maps to the rung whose
non-embedding parameter count is closest in log space. A plan is a list of `Run`s, each a set of
config overrides on the sweep's base config with its planned N, D and C.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any


from lm import flops
from lm.config import ARCH, ConfigError, ModelConfig, field_kind


@dataclasses.dataclass(frozen=True)
class Run:
  name: str
  overrides: dict[str, Any]  # 'section.field' -> value, on top of the base config.
  n: int  # Non-embedding parameters.
  tokens: int  # D: training tokens (steps x tokens per step).
  compute: float  # C under the sweep's FLOP convention.
  budget: float  # The planned budget this run belongs to (0 for grids).
  design: str
  branch_from: str = ''  # WSD: the run whose checkpoint this one continues.
  branch_step: int = 0


# The model fields a ladder rung sets (the rest come from the sweep's base config).
RUNG_FIELDS = ('d_model', 'num_layers', 'num_heads', 'num_kv_heads', 'head_dim', 'mlp_dim')
# Rungs differ in architecture only (lm/config.FIELD_KINDS), so every other
# setting of a run is the sweep's base config.
assert all(field_kind(f'model.{f}') == ARCH for f in RUNG_FIELDS)


def ladder_model(target_n: float, base: ModelConfig, aspect: int, head_dim: int,
                 max_layers: int = 64) -> ModelConfig:
  """The ladder model whose non-embedding count is nearest `target_n` (log)."""
  all_ = rungs(base, aspect, head_dim, max_layers)
  n, m = min(all_, key=lambda r: abs(math.log(r[0] / target_n)))
  if abs(math.log(n / target_n)) > math.log(2):
    raise ConfigError(
        f'no ladder model is within 2x of {target_n:.3g} non-embedding params (closest: '
        f'{n:,} with {m.num_layers} layers, d_model {m.d_model}); the rule d_model = '
        f'{aspect} x layers allows {all_[0][0]:,}..{all_[-1][0]:,}')
  return m


def ladder(targets: list[float], base: ModelConfig, aspect: int, head_dim: int) -> list[ModelConfig]:
  return [ladder_model(t, base, aspect, head_dim) for t in targets]


def _model_overrides(m: ModelConfig) -> dict[str, Any]:
  """Every field a rung sets, so the run trains the model the plan counted."""
  out = {f'model.{k}': getattr(m, k) for k in RUNG_FIELDS}
  if m.family == 'encoder_decoder':  # Its decoder's depth follows the rung's too.
    out['model.num_decoder_layers'] = m.num_decoder_layers
  return out


def _steps(tokens: float, tokens_per_step: int, what: str) -> int:
  steps = int(round(tokens / tokens_per_step))
  if steps < 1:
    raise ConfigError(f'{what}: {tokens:.3g} tokens is less than one step of '
                      f'{tokens_per_step} tokens; raise the budget or shrink the batch')
  return steps


def _rung(base: ModelConfig, d: int, layers: int, head_dim: int) -> ModelConfig:
  heads = d // head_dim
  # Grouped-query bases keep their KV heads where they divide the rung's heads;
  # num_kv_heads == num_heads is multi-head attention, as 0 is (ModelConfig.canonical).
  gqa = base.num_kv_heads and base.num_kv_heads != base.num_heads
  kv = math.gcd(heads, base.num_kv_heads) if gqa else 0
  # An encoder-decoder's decoder keeps its depth's ratio to the encoder's (0:
  # the same depth), so rung k is k encoder layers and its decoder in proportion.
  dec = 0
  if base.num_decoder_layers and base.num_decoder_layers != base.num_layers:
    dec = max(1, round(layers * base.num_decoder_layers / base.num_layers))
  return dataclasses.replace(base, d_model=d, num_layers=layers, num_heads=heads,
                             num_kv_heads=kv, head_dim=0, mlp_dim=4 * d,
                             num_decoder_layers=dec)


def rungs(base: ModelConfig, aspect: int, head_dim: int, max_layers: int = 64
          ) -> list[tuple[int, ModelConfig]]:
  """Every ladder model, smallest first, with its non-embedding count."""
  if aspect % head_dim:
    raise ConfigError(f'sweep.aspect={aspect} must be a multiple of sweep.head_dim={head_dim} '
                      'so that every rung has whole heads')
  out = []
  for layers in range(1, max_layers + 1):
    m = _rung(base, aspect * layers, layers, head_dim)
    out.append((flops.param_counts(m)['non_embedding'], m))
  return out


def fine_rungs(base: ModelConfig, aspect: int, head_dim: int, max_layers: int = 16
               ) -> list[tuple[int, ModelConfig]]:
  """A finer ladder for sweep.size_ratio: d_model any multiple of head_dim,
  d_model / layers within a factor 2 of `aspect` (Kaplan et al. 2020, Fig. 5:
  loss depends weakly on shape over a wider range); smallest first."""
  out = []
  for layers in range(1, max_layers + 1):
    for d in range(head_dim, 2 * aspect * layers + 1, head_dim):
      if 2 * d >= aspect * layers:
        m = _rung(base, d, layers, head_dim)
        out.append((flops.param_counts(m)['non_embedding'], m))
  return sorted(out, key=lambda x: x[0])


def spaced_sizes(n_star: float, sizes: int, ratio: float, candidates) -> list:
  """For targets n_star x ratio^(k - (sizes - 1) / 2), each the candidate
  nearest in log N; they must be distinct and within a factor `ratio` of
  their targets (small models come in coarse steps), or it is an error."""
  picked = []
  for k in range(sizes):
    target = n_star * ratio ** (k - (sizes - 1) / 2)
    if not 0 < target < math.inf:  # ratio ** k under- or overflowed.
      raise ConfigError(f'sweep.size_ratio={ratio}: {sizes} sizes spaced by it span past '
                        'floating point; use a ratio such as 1.5')
    n, m = min(candidates, key=lambda c: abs(math.log(c[0] / target)))
    if abs(math.log(n / target)) > math.log(ratio) or (n, m) in picked:
      raise ConfigError(
          f'sweep.size_ratio={ratio}: no distinct ladder model near {target:.3g} non-embedding '
          f'params (the ladder spans {candidates[0][0]:,}..{candidates[-1][0]:,}); raise the '
          'budget, the ratio or lower sweep.head_dim')
    picked.append((n, m))
  return picked


def isoflop(budgets: list[float], base: ModelConfig, seq_len: int, tokens_per_step: int,
            convention: str, aspect: int, head_dim: int, sizes: int = 5,
            tokens_per_param: float = 20.0, min_steps: int = 20,
            lengths: tuple[int, int] = (0, 0), size_ratio: float = 0.0) -> list[Run]:
  """Per budget C: `sizes` consecutive ladder models centred on the rung
  nearest the expected optimum N* = sqrt(C / (6 r)) (D = r N, r =
  tokens_per_param, Hoffmann et al. 2022), or with size_ratio > 1 spaced by
  that ratio on fine_rungs; each trains for D = C / (FLOPs per token of that
  model). Centring on N* is a heuristic, not a guarantee that the minimum is
  bracketed: the report flags a budget whose lowest loss is at an end."""
  if sizes < 3:
    raise ConfigError(f'sweep.sizes={sizes}: an IsoFLOP profile needs at least 3 sizes '
                      '(5 recommended) to bracket its minimum')
  ladder_ = rungs(base, aspect, head_dim)
  fine = fine_rungs(base, aspect, head_dim) if size_ratio else None
  runs = []
  for c in sorted(budgets):
    n_star = math.sqrt(c / (6 * tokens_per_param))
    if not 0 < n_star < math.inf:
      raise ConfigError(f'sweep.tokens_per_param={tokens_per_param}: the expected optimum '
                        f'N* = sqrt(C / (6 r)) of budget {c:.3g} is {n_star}; use a ratio '
                        'D/N such as 20')
    if fine:
      chosen = spaced_sizes(n_star, sizes, size_ratio, fine)
    else:
      centre = min(range(len(ladder_)), key=lambda i: abs(math.log(ladder_[i][0] / n_star)))
      lo = centre - sizes // 2
      if lo < 0 or lo + sizes > len(ladder_):
        low = lo < 0
        raise ConfigError(
            f'budget {c:.3g} is too {"small" if low else "large"} for this ladder: its '
            f'expected optimum N* = sqrt(C / (6 x sweep.tokens_per_param={tokens_per_param:g})) '
            f'= {n_star:.3g} is rung {centre + 1}, and {sizes} sizes centred there need rungs '
            f'{lo + 1}..{lo + sizes} of 1..{len(ladder_)}; '
            + ('raise the budget or lower sweep.tokens_per_param or sweep.aspect' if low else
               'lower the budget or raise sweep.tokens_per_param'))
      chosen = ladder_[lo:lo + sizes]
    for n, m in chosen:
      fpt = flops.train_flops_per_token(m, seq_len, convention, None, *lengths)
      steps = _steps(c / fpt, tokens_per_step, f'budget {c:.3g}, {m.num_layers} layers')
      if steps < min_steps:
        raise ConfigError(
            f'budget {c:.3g} is too small: the {m.num_layers}-layer model would train '
            f'{steps} steps (< sweep.min_steps={min_steps}); raise the smallest budget')
      d = steps * tokens_per_step
      runs.append(Run(name=f'C{c:.2e}_L{m.num_layers}_d{m.d_model}',
                      overrides={**_model_overrides(m), 'train.steps': steps},
                      n=n, tokens=d, compute=fpt * d, budget=c, design='isoflop'))
  return runs


def grid(targets_n: list[float], tokens: list[float], base: ModelConfig, seq_len: int,
         tokens_per_step: int, convention: str, aspect: int, head_dim: int,
         lengths: tuple[int, int] = (0, 0)) -> list[Run]:
  """Every ladder model for every token count."""
  runs = []
  for m in ladder(targets_n, base, aspect, head_dim):
    fpt = flops.train_flops_per_token(m, seq_len, convention, None, *lengths)
    for t in tokens:
      steps = _steps(t, tokens_per_step, f'grid D={t:.3g}')
      d = steps * tokens_per_step
      runs.append(Run(name=f'L{m.num_layers}_d{m.d_model}_D{d:.2e}',
                      overrides={**_model_overrides(m), 'train.steps': steps},
                      n=flops.param_counts(m)['non_embedding'], tokens=d, compute=fpt * d,
                      budget=0.0, design='grid'))
  return runs


def wsd_branches(targets_n: list[float], tokens: list[float], base: ModelConfig, seq_len: int,
                 tokens_per_step: int, convention: str, aspect: int, head_dim: int,
                 cooldown_fraction: float = 0.2, lengths: tuple[int, int] = (0, 0),
                 *, warmup_steps: int) -> list[Run]:
  """One stable (constant-LR) run per size, checkpointed where each branch
  starts; each branch continues from there with a cooldown of
  `cooldown_fraction` of its own length (Hägele et al. 2024), so a size yields
  several D for about the cost of the longest. A branch of S steps shares
  its first (1 - f) S steps with the stable run exactly, which is what makes
  starting it from that checkpoint correct. So every branch records the warmup
  the stable run trained with (`warmup_steps`, shortened as the sweep shortens
  any run's: to a tenth of the stable run, and to end before the first branch
  starts), not one shortened to its own length."""
  runs = []
  for m in ladder(targets_n, base, aspect, head_dim):
    fpt = flops.train_flops_per_token(m, seq_len, convention, None, *lengths)
    n = flops.param_counts(m)['non_embedding']
    stable = f'L{m.num_layers}_d{m.d_model}_stable'
    branch_steps = sorted(_steps(t, tokens_per_step, f'WSD D={t:.3g}') for t in tokens)
    # As opt.schedule=wsd counts a run's cooldown (round, at least one step): a
    # float floor of s x (1 - f) had started 90 x 0.7 at 62, 10 x 0.1 at 0.
    starts = [s - max(round(cooldown_fraction * s), 1) for s in branch_steps]
    if min(starts) < 1:  # The stable run has no step-0 checkpoint to branch from.
      raise ConfigError(f'sweep.tokens: a WSD branch of {branch_steps[0]} steps with '
                        f'sweep.cooldown_fraction={cooldown_fraction} cools down from step 0, '
                        'leaving nothing to share with the stable run; give it more tokens or '
                        'lower the cooldown fraction')
    # Every branch starts after the warmup (the shortest may start early).
    warmup = {'opt.warmup_steps': min(warmup_steps, max(max(starts) // 10, 1), min(starts))}
    runs.append(Run(name=stable, overrides={
        **_model_overrides(m), **warmup, 'train.steps': max(starts), 'opt.schedule': 'constant',
        'train.extra_checkpoints': tuple(starts), 'train.checkpoint_every': max(starts),
        'train.keep_checkpoints': len(starts) + 1},
        n=n, tokens=max(starts) * tokens_per_step, compute=fpt * max(starts) * tokens_per_step,
        budget=0.0, design='wsd_stable'))
    for s, s0 in zip(branch_steps, starts):
      d = s * tokens_per_step
      runs.append(Run(name=f'L{m.num_layers}_d{m.d_model}_D{d:.2e}', overrides={
          **_model_overrides(m), **warmup, 'train.steps': s, 'opt.schedule': 'wsd',
          'opt.cooldown_fraction': (s - s0) / s},
          n=n, tokens=d, compute=fpt * d, budget=0.0, design='wsd', branch_from=stable,
          branch_step=s0))
  return runs


def check_widens(m: ModelConfig, who: str) -> None:
  """Width transfer grows the head dimension at a fixed head count, so q, k
  and v widen with d_model: an explicit model.head_dim would hold H x Dh fixed."""
  if m.head_dim:
    raise ConfigError(f'model.head_dim={m.head_dim}: {who} grows the head dimension with '
                      'width at a fixed head count; set model.head_dim=0')


def transfer(widths: list[int], parametrizations: list[str], tokens: float, base: ModelConfig,
             seq_len: int, tokens_per_step: int, convention: str,
             lengths: tuple[int, int] = (0, 0)) -> list[Run]:
  """Learning-rate transfer (the sweep's lrs multiply these): the base model at
  each width, in each parametrization, for the same tokens. Depth and heads
  stay the base config's; the MLP keeps its ratio to d_model; muP's base width
  is the base config's model.base_width, else the smallest width."""
  check_widens(base, 'a transfer sweep')
  base_width = base.base_width or min(widths)
  ratio = base.ff_dim / base.d_model
  steps = _steps(tokens, tokens_per_step, f'transfer D={tokens:.3g}')
  runs = []
  for p in parametrizations:
    for w in sorted(widths):
      if w % base.num_heads:
        raise ConfigError(f'sweep.widths: {w} is not divisible by model.num_heads='
                          f'{base.num_heads}')
      m = dataclasses.replace(base, d_model=w, mlp_dim=int(round(ratio * w)),
                              parametrization=p, base_width=base_width)
      fpt = flops.train_flops_per_token(m, seq_len, convention, None, *lengths)
      d = steps * tokens_per_step
      runs.append(Run(name=f'{p}_d{w}', overrides={
          'model.d_model': w, 'model.mlp_dim': m.mlp_dim, 'model.parametrization': p,
          'model.base_width': base_width, 'train.steps': steps},
          n=flops.param_counts(m)['non_embedding'], tokens=d, compute=fpt * d, budget=0.0,
          design='transfer'))
  return runs
