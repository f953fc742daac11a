"""Eight fake CPU devices for sharding, a private data cache, a small corpus."""

import os
import tempfile

os.environ.setdefault('JAX_PLATFORMS', 'cpu')
os.environ['XLA_FLAGS'] = (os.environ.get('XLA_FLAGS', '')
                           + ' --xla_force_host_platform_device_count=8')
if os.environ['JAX_PLATFORMS'] == 'cpu':
  # Faster compiles (a tiny train step: 2.0 s -> 0.7 s, the same step time);
  # tests compare runs, not speed. CPU runs only: XLA aborts on a flag its
  # build does not know, and the jaxlib 0.11.2 of the device tool's H100
  # (2026-11-27) has no --xla_cpu_use_fusion_emitters (GPU test runs stopped
  # in collection with it). A CPU jaxlib newer than the pinned 0.10.2 may lack
  # it too: drop it then.
  # Without LLVM's expensive passes a compile takes ~7% less (tests/test_pack.py,
  # test_families' sharded and test_model's chunked-loss tests: 32.0 and 30.4 s
  # of compilation against 35.0 and 32.8 s, 2026-11-27).
  os.environ['XLA_FLAGS'] += (' --xla_backend_optimization_level=0'
                              ' --xla_cpu_use_fusion_emitters=false'
                              ' --xla_llvm_disable_expensive_passes=true')
# One persistent compilation cache for the test run (both workers and the CLI
# subprocesses they start): resumed runs, restarts and repeated shapes load
# their executables instead of compiling again.
os.environ.setdefault('JAX_COMPILATION_CACHE_DIR', os.path.join(
    tempfile.gettempdir(), 'lm_tests_jax_cache_' + os.environ.get(
        'PYTEST_XDIST_TESTRUNUID', str(os.getpid()))))
os.environ.setdefault('JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS', '0')
os.environ.setdefault('JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES', '0')

import pytest  # noqa: E402


def pytest_configure(config):
  config.addinivalue_line('markers', 'slow: over ~20 s on 2 cores; runs first')


def pytest_collection_modifyitems(items):
  """The slow tests first: xdist hands tests out in collection order, so a
  slow test collected last (test_sweep.py sorts late) would run alone at the
  end while the other worker idles."""
  items.sort(key=lambda item: item.get_closest_marker('slow') is None)  # Stable.


@pytest.fixture(scope='session', autouse=True)
def _cache(tmp_path_factory):
  os.environ['LM_CACHE'] = str(tmp_path_factory.mktemp('lm_cache'))


@pytest.fixture(scope='session')
def corpus_dir(tmp_path_factory):
  """40 small 'source files' of varied, learnable text (and one non-UTF-8 file)."""
  d = tmp_path_factory.mktemp('corpus')
  words = ['alpha', 'beta', 'gamma', 'delta', 'return', 'def', 'x', 'y', 'é', '→']
  for i in range(40):
    lines = [f'def f{i}_{j}(x):\n    return x * {j} + {" ".join(words[(i + j + k) % 10] for k in range(5))}\n'
             for j in range(30)]
    (d / f'mod_{i:02d}.py').write_text(''.join(lines), encoding='utf-8')
  (d / 'sub').mkdir()
  (d / 'sub' / 'notes.txt').write_text('nested file ' * 50, encoding='utf-8')
  (d / 'binary.bin').write_bytes(b'\xff\xfe\x00bad')
  return d
