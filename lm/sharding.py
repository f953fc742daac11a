"""Device mesh and the map from logical axis names to mesh shardings."""

from __future__ import annotations

import math
from typing import Any

import flax.linen as nn
import jax
import numpy as np
from jax.experimental import mesh_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from lm.config import MESH_AXES, Config, ConfigError, MeshConfig

Rules = tuple[tuple[str, Any], ...]


def mesh_shape(m: MeshConfig, num_devices: int) -> dict[str, int]:
  """Resolves -1 and checks that the axis sizes multiply to the device count."""
  sizes = {ax: getattr(m, ax) for ax in MESH_AXES}
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
        f'but there are {num_devices} devices; make the product {num_devices} '
        'or set one axis to -1')
  return sizes


def make_mesh(m: MeshConfig, devices: list | None = None) -> Mesh:
  devices = jax.devices() if devices is None else devices
  sizes = mesh_shape(m, len(devices))
  shape = tuple(sizes[ax] for ax in MESH_AXES)
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
  """Tree of logical PartitionSpecs (or boxed values) -> NamedShardings."""
  specs = nn.get_partition_spec(tree)
  return nn.logical_to_mesh_sharding(specs, mesh, list(rules))


def batch_sharding(mesh: Mesh, rules: Rules, ndim: int = 2) -> NamedSharding:
  """Leading (batch) axis sharded by the rules, the rest replicated."""
  spec = nn.logical_to_mesh_axes(('batch',) + (None,) * (ndim - 1), list(rules))
  return NamedSharding(mesh, spec)


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


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
  if micro % jax.process_count():
    raise ConfigError(
        f'config.train.batch_size={c.train.batch_size}: micro-batch {micro} is not '
        f'divisible by the {jax.process_count()} processes')
