"""Host (CPU) memory allocator settings for CPU-only runs.

Why this exists: XLA:CPU allocates every step's temporaries afresh (1.9 GB for
tools/bench_train's medium config) and glibc malloc serves blocks that large
with mmap and returns them with munmap when they are freed. The kernel then
page-faults and zeroes the pages again on the next step: with 4 KiB pages
~465,000 minor faults per medium step. On the 2-core CI machine that is
13-30% of the step time across tools/bench_train's configs (2026-11-25 A/B:
medium 4.51 -> 3.68 s, small 965 -> 740 ms, tiny 186 -> 129 ms); a fresh 64 MB
einsum output costs 26 ms where an in-place write of the same bytes takes 2 ms.
Keeping freed memory in the process makes the next step reuse pages that are
already mapped. How large the effect is depends on the kernel: one that maps
larger folios or faults around (mTHP, huge pages) takes several to hundreds of
times fewer faults for the same bytes, so it gains less (tests/test_host.py
therefore measures the host's own default before judging the setting).

The price is host memory: the process keeps what it freed, and first-fit
placement in one heap leaves holes, so resident memory settles at up to ~1.7x
the default's peak (bench medium: 4.3 GB instead of 2.6 GB; small: 1.6 GB
instead of 1.2 GB), reached within the first few steps and flat after that.
LM_KEEP_FREED_MEMORY=0 turns it off. On accelerators the step's memory lives on
the device, so this is only applied where JAX has no accelerator plugin (or
JAX_PLATFORMS=cpu).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import importlib.metadata
import importlib.util
import os
import sys

# glibc's mallopt parameters (malloc.h).
_M_TRIM_THRESHOLD, _M_MMAP_MAX, _M_ARENA_MAX = -1, -4, -8


def cpu_only() -> bool:
  """True when JAX will run on the CPU: JAX_PLATFORMS=cpu, or no GPU/TPU plugin
  is installed. Decided without starting a JAX backend (see keep_freed_memory)."""
  platforms = os.environ.get('JAX_PLATFORMS', '')
  if platforms:
    return platforms.split(',')[0].strip() == 'cpu'
  # PJRT plugins (CUDA, ROCm, ...) are found by entry point or as a module of
  # the jax_plugins namespace package; TPUs through libtpu.
  if any(importlib.util.find_spec(m) is not None for m in ('libtpu', 'jax_plugins')):
    return False
  return not list(importlib.metadata.entry_points(group='jax_plugins'))


def keep_freed_memory(force: bool = False) -> bool:
  """Tell glibc malloc to keep freed memory for reuse instead of unmapping it.

  Three mallopt settings: no mmap for large blocks; no heap trimming (-1
  turns it off, see `man mallopt`; a positive threshold is an int, so below
  2 GiB, and the free memory at the top of the heap after a medium step
  exceeds that in tools/bench_train: 280K faults per step came back); and
  one arena, so the threads XLA starts later allocate from the heap this
  keeps. Threads that already exist keep their own arenas: call this before
  the first JAX device query or computation. The process then keeps what it
  freed (the module docstring gives the memory this costs). Returns whether
  the settings were applied: only on Linux with glibc, unless
  LM_KEEP_FREED_MEMORY=0, and (unless `force`) when cpu_only().
  """
  if os.environ.get('LM_KEEP_FREED_MEMORY', '1') == '0':
    return False
  if not sys.platform.startswith('linux') or not (force or cpu_only()):
    return False
  try:
    libc = ctypes.CDLL(ctypes.util.find_library('c') or 'libc.so.6')
    mallopt = libc.mallopt
  except (OSError, AttributeError):  # Not glibc (e.g. musl has no mallopt).
    return False
  mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
  return all(mallopt(p, v) == 1 for p, v in (
      (_M_MMAP_MAX, 0), (_M_TRIM_THRESHOLD, -1), (_M_ARENA_MAX, 1)))
