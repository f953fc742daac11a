"""Device mesh and the map from logical axis names to mesh shardings."""

from __future__ import annotations

import math
import sys
from typing import Any

import flax.linen as nn
import jax
import numpy as np
from jax.experimental import mesh_utils
from jax.sharding import Mesh, NamedSharding

from lm.config import MESH_AXES, Config, ConfigError, MeshConfig

Rules = tuple[tuple[str, Any], ...]


def mesh_shape(m: MeshConfig, num_devices: int) -> dict[str, int]:
  """Total size per axis (ICI x DCN), resolving -1; the product must be the
  device count."""
  dcn = {ax: getattr(m, f'dcn_{ax}') for ax in MESH_AXES}
  n_dcn = math.prod(dcn.values())
  if num_devices % n_dcn:
    raise ConfigError(f'config.mesh dcn_* factors {dcn} multiply to {n_dcn}, which does '
                      f'not divide the {num_devices} devices')
  sizes = {ax: getattr(m, ax) for ax in MESH_AXES}
  num_devices //= n_dcn
  known = math.prod(v for v in sizes.values() if v != -1)
  for ax, v in sizes.items():
    if v == -1:
      if num_devices % known:
        raise ConfigError(
            f'config.mesh={sizes}: the fixed axes multiply to {known}, which does '
            f'not divide the {num_devices} devices')
      sizes[ax] = num_devices // known
  if math.prod(sizes.values()) != num_devices:
    raise ConfigError(
        f'config.mesh={sizes}: the axis sizes multiply to {math.prod(sizes.values())} '
        f'but there are {num_devices * n_dcn} devices'
        + (f' ({num_devices} per DCN slice)' if n_dcn > 1 else '')
        + f'; make the product {num_devices} or set one axis to -1')
  return {ax: sizes[ax] * dcn[ax] for ax in MESH_AXES}


def make_mesh(m: MeshConfig, devices: list | None = None) -> Mesh:
  """A (data, fsdp, tensor) mesh whose device order follows the topology."""
  devices = jax.devices() if devices is None else list(devices)
  sizes = mesh_shape(m, len(devices))
  dcn = tuple(getattr(m, f'dcn_{ax}') for ax in MESH_AXES)
  shape = tuple(sizes[ax] // d for ax, d in zip(MESH_AXES, dcn))
  if math.prod(dcn) > 1:
    # TPU slices are the DCN granules; devices without a slice (GPU hosts) are
    # grouped by process instead.
    granule = 'slice' if hasattr(devices[0], 'slice_index') else 'process'
    try:
      arr = mesh_utils.create_hybrid_device_mesh(shape, dcn, devices=devices,
                                                 process_is_granule=granule == 'process')
    except ValueError as e:
      raise ConfigError(
          f'config.mesh dcn_data/dcn_fsdp/dcn_tensor={dcn}: these {len(devices)} devices '
          f'do not form {math.prod(dcn)} DCN groups by {granule} ({" ".join(str(e).split())[:160]}'
          '); give each group (a TPU slice, or one process\'s devices) its share, or set '
          'the dcn_* sizes to 1') from None
  else:
    try:
      arr = mesh_utils.create_device_mesh(shape, devices=devices)
    except (ValueError, NotImplementedError, AssertionError):
      arr = np.asarray(devices).reshape(shape)  # Topology unknown (e.g. CPU).
  return Mesh(arr, MESH_AXES)


def strip_boxes(tree: Any) -> Any:
  """Removes flax's axis-name boxes without applying sharding constraints
  (which abstract ShapeDtypeStructs cannot take)."""
  is_box = lambda x: isinstance(x, nn.meta.AxisMetadata)  # noqa: E731
  return jax.tree_util.tree_map(
      lambda x: x.unbox(apply_constraint=False) if is_box(x) else x, tree, is_leaf=is_box)


def logical_to_sharding(tree: Any, mesh: Mesh, rules: Rules) -> Any:
  """Tree of logical PartitionSpecs (or boxed values) -> NamedShardings.

  A box around an empty subtree (optax.masked's MaskedNode in place of a
  frozen parameter's Adam moments) stays that empty subtree, so the shardings
  have the unboxed state's structure (checkpoint restore maps one onto the
  other)."""
  is_box = lambda x: isinstance(x, nn.meta.AxisMetadata)  # noqa: E731
  tree = jax.tree_util.tree_map(
      lambda x: x.unbox(apply_constraint=False)
      if is_box(x) and not jax.tree_util.tree_leaves(x.unbox(apply_constraint=False)) else x,
      tree, is_leaf=is_box)
  specs = nn.get_partition_spec(tree)
  return nn.logical_to_mesh_sharding(specs, mesh, list(rules))


def batch_sharding(mesh: Mesh, rules: Rules, ndim: int = 2) -> NamedSharding:
  """Leading (batch) axis sharded by the rules, the rest replicated."""
  spec = nn.logical_to_mesh_axes(('batch',) + (None,) * (ndim - 1), list(rules))
  return NamedSharding(mesh, spec)


def check_divisible(abstract_params: Any, mesh: Mesh, rules: Rules) -> None:
  """Every sharded dimension must divide by the product of its mesh axes."""
  shardings = logical_to_sharding(abstract_params, mesh, rules)
  flat, _ = jax.tree_util.tree_flatten_with_path(strip_boxes(abstract_params))
  flat_sh = jax.tree_util.tree_leaves(shardings)
  for (path, leaf), sh in zip(flat, flat_sh):
    for dim, axes in zip(leaf.shape, sh.spec):
      if axes is None:
        continue
      axes = axes if isinstance(axes, tuple) else (axes,)
      n = math.prod(mesh.shape[a] for a in axes)
      if dim % n:
        raise ConfigError(
            f'parameter {jax.tree_util.keystr(path)} of shape {leaf.shape} has a '
            f'dimension {dim} sharded over mesh axes {axes} of total size {n}, which '
            'does not divide it; change the model size, the mesh or config.rules')


def check_batch(c: Config, mesh: Mesh) -> None:
  spec = nn.logical_to_mesh_axes(('batch',), list(c.rules))[0]
  axes = () if spec is None else (spec if isinstance(spec, tuple) else (spec,))
  n = math.prod(mesh.shape[a] for a in axes)
  micro = c.train.batch_size // c.train.grad_accum
  if micro % n:
    raise ConfigError(
        f'config.train.batch_size={c.train.batch_size} (micro-batch {micro} with '
        f'grad_accum={c.train.grad_accum}) is not divisible by the data-parallel '
        f'size {n} (mesh axes {axes} = {[mesh.shape[a] for a in axes]})')
  P = jax.process_count()
  if P > 1 and n % P:  # Each process feeds its own rows: they must be its own.
    raise ConfigError(
        f'config.mesh: the batch is split over mesh axes {axes} of size {n}, which the '
        f'{P} processes do not divide: processes would feed different rows to one '
        'replicated batch (silently wrong losses); split data or fsdp across the '
        'processes and keep tensor parallelism within one (e.g. mesh.data=-1)')
  if micro % P:
    raise ConfigError(
        f'config.train.batch_size={c.train.batch_size}: micro-batch {micro} is not '
        f'divisible by the {P} processes')


def init_distributed(coordinator: str = '', num_processes: int = 0, process_id: int = -1,
                     auto: bool = False, timeout_s: int = 300) -> None:
  """Starts jax.distributed: explicitly (coordinator, count, id) or, with
  `auto`, from the environment (TPU VMs, SLURM, Open MPI, ...). No-op otherwise.

  CPU collectives go through gloo so CPU processes can train together.
  """
  if process_id < -1:
    raise ConfigError(f'--process_id={process_id}: process ids count from 0 (-1: unset)')
  if coordinator:  # gRPC crashed the process (SIGSEGV) on a port it could not parse.
    host, _, port = coordinator.rpartition(':')
    if not (host and port.isdigit() and 1 <= int(port) <= 65535):
      raise ConfigError(f'--coordinator_address={coordinator!r}: give HOST:PORT, a port '
                        'in 1..65535 (e.g. 10.0.0.1:1234)')
  if not (coordinator or auto):
    if num_processes > 1 or process_id >= 0:
      raise ConfigError(f'--num_processes={num_processes} / --process_id={process_id} '
                        'need --coordinator_address=HOST:PORT (or --auto_distributed)')
    return
  if coordinator and (num_processes < 1 or not 0 <= process_id < num_processes):
    raise ConfigError(f'--coordinator_address={coordinator!r} needs --num_processes >= 1 '
                      f'and 0 <= --process_id < num_processes (got {num_processes}, '
                      f'{process_id})')
  jax.config.update('jax_cpu_collectives_implementation', 'gloo')
  # jax aborts the process (it does not raise) when not every process registers
  # in time, so say first what this process expects.
  print(f'jax.distributed: process {process_id if coordinator else "auto"} of '
        f'{num_processes or "auto"}, coordinator {coordinator or "auto"}; waiting up to '
        f'{timeout_s} s for all processes. DEADLINE_EXCEEDED below means they did not '
        'all start, or disagree on --num_processes or the coordinator.',
        file=sys.stderr, flush=True)
  kw = {} if auto and not coordinator else dict(
      coordinator_address=coordinator, num_processes=num_processes, process_id=process_id)
  try:
    jax.distributed.initialize(initialization_timeout=timeout_s, **kw)
  except Exception as e:  # Timeouts surface as several error types.
    raise ConfigError(
        f'jax.distributed could not start (coordinator {coordinator or "auto"}, '
        f'{num_processes or "auto"} processes, this is process {process_id}): '
        f'{str(e).splitlines()[0][:300]}. Check that every process got the same '
        '--num_processes and coordinator address, and that all were started') from None
  if num_processes and jax.process_count() != num_processes:
    raise ConfigError(f'--num_processes={num_processes} but the coordinator reports '
                      f'{jax.process_count()} processes')
