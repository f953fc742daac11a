"""Where a test run's time goes inside JAX, for work on the suite's speed.

python -m pytest -q -n 2 tests -p tests.jax_time

Each process that runs tests (both xdist workers; not the CLI subprocesses
tests start) sums JAX's own duration events (jax._src.monitoring) over its
tests' setup, call and teardown, and the controller adds them up at the end.
Measured 2026-11-29 on this project's 2-core machine at e07f54b (543 passed,
3 skipped in 677 s):

  [jax_time] 2 process(es), 1314 s in tests: backend compile 325 s (25%),
  tracing 155 s (12%), lowering 117 s (9%), persistent-cache loads 22 s (JAX
  counts 53 s of compiling saved)

So ~46% of the workers' time is turning Python into XLA executables (many
small configs, each compiled once), not running them; the persistent cache
pays only where a program repeats (resumed runs, a shape another test built).
Two A/Bs from the same day, the rest of the suite unchanged:

  in-process tests on 1 CPU device instead of 8 (the sharding tests kept 8):
    the sweep test 51 -> 32 s, the canary test 34 -> 22 s, the suite 713 -> 697 s (two runs: inside their noise)
  CLI subprocesses on 1 device instead of 8 (five CLI-heavy tests, serial):
    128 -> 117 s

Neither was kept: a few percent of the suite for the data-parallel default
path no longer running in most tests. XLA:CPU flags beyond conftest.py's
(--xla_cpu_parallel_codegen_split_count, the concurrency-optimised scheduler,
copy insertion, XNNPACK) moved a 4-config compile benchmark by less than its
run-to-run noise (8.4-12.2 s). What did pay: the CLI commands tests start
fork from a server that has done the imports (tests/forked_cli.py; the suite
616 -> 529 s).
"""

from __future__ import annotations

import collections
import time

import pytest

# Event name (jax/_src/monitoring) -> label; the names are JAX's and may move.
EVENTS = {
    '/jax/core/compile/backend_compile_duration': 'backend compile',
    '/jax/core/compile/jaxpr_trace_duration': 'tracing',
    '/jax/core/compile/jaxpr_to_mlir_module_duration': 'lowering',
}
CACHE_LOAD = '/jax/compilation_cache/cache_retrieval_time_sec'
CACHE_SAVED = '/jax/compilation_cache/compile_time_saved_sec'
_totals: collections.Counter = collections.Counter()
_reports: list[dict] = []  # One per process that ran tests.


def _listen(name: str, secs: float, **_) -> None:
  _totals[name] += secs


def pytest_configure(config) -> None:
  from jax._src import monitoring
  monitoring.register_event_duration_secs_listener(_listen)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item, nextitem):  # Setup (fixtures), call and teardown.
  t0 = time.perf_counter()
  yield
  _totals['test'] += time.perf_counter() - t0


def pytest_sessionfinish(session) -> None:
  if hasattr(session.config, 'workeroutput'):  # An xdist worker: to the controller.
    session.config.workeroutput['jax_time'] = dict(_totals)
  elif _totals['test']:  # No workers: this process ran the tests.
    _reports.append(dict(_totals))


@pytest.hookimpl(optionalhook=True)
def pytest_testnodedown(node, error) -> None:
  _reports.append(getattr(node, 'workeroutput', {}).get('jax_time', {}))


def pytest_terminal_summary(terminalreporter) -> None:
  if not _reports:
    return
  total: collections.Counter = collections.Counter()
  for r in _reports:
    total.update(r)
  if not total['test']:
    return
  pct = lambda s: f'{s:.0f} s ({100 * s / total["test"]:.0f}%)'  # noqa: E731
  parts = [f'{label} {pct(total[e])}' for e, label in EVENTS.items()]
  parts.append(f'persistent-cache loads {total[CACHE_LOAD]:.0f} s (JAX counts '
               f'{round(total[CACHE_SAVED])} s of compiling saved)')
  terminalreporter.write_line(f'[jax_time] {len(_reports)} process(es), {total["test"]:.0f} s '
                              'in tests: ' + ', '.join(parts))
