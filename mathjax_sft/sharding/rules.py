"""THE table: logical axis name -> mesh axes. Every sharding in the project comes from here.

Parameters, activations, caches and batches name their dimensions with logical axes
(`embed`, `heads`, ...). `logical_to_spec` turns those names into a `PartitionSpec` over the mesh
axes `data`, `fsdp`, `tensor`. A dimension that does not divide the size of its mesh axes is an
error (never a silent replication).
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import jax
from jax.sharding import Mesh, NamedSharding, PartitionSpec

MESH_AXES = ("data", "fsdp", "tensor")

# logical axis -> mesh axis, tuple of mesh axes, or None (replicated).
DEFAULT_RULES: dict[str, Any] = {
    # parameters
    "vocab": "tensor",
    "embed": "fsdp",
    "heads": "tensor",
    "kv_heads": "tensor",
    "head_dim": None,
    "mlp": "tensor",
    "layers": None,
    "norm": None,
    # activations, batches and caches
    "batch": ("data", "fsdp"),
    "seq": None,
    "cache_time": None,
    "act_embed": None,
    "act_vocab": "tensor",
}


def _mesh_axes_of(rule: Any) -> tuple[str, ...]:
  if rule is None:
    return ()
  if isinstance(rule, str):
    return (rule,)
  return tuple(rule)


def logical_to_spec(axes: Sequence[str | None], rules: Mapping[str, Any] = DEFAULT_RULES,
                    mesh: Mesh | None = None, shape: Sequence[int] | None = None,
                    name: str = "array") -> PartitionSpec:
  """PartitionSpec for a tensor whose dimensions are named `axes`.

  With `mesh` and `shape`, checks every sharded dimension divides its mesh axes (error naming
  `name`). Mesh axes of size 1 are dropped, and a mesh axis already used by an earlier dimension
  is not reused (so e.g. `heads` and `mlp` can share `tensor` in different tensors).
  """
  used: set[str] = set()
  spec: list[Any] = []
  for dim, axis in enumerate(axes):
    if axis is None:
      spec.append(None)
      continue
    if axis not in rules:
      raise KeyError(f"{name}: logical axis {axis!r} has no sharding rule; known: {sorted(rules)}")
    mesh_axes = tuple(a for a in _mesh_axes_of(rules[axis]) if a not in used)
    if mesh is not None:
      unknown = [a for a in mesh_axes if a not in mesh.shape]
      if unknown:
        raise KeyError(f"{name}: rule {axis!r} -> {unknown} names axes missing from the mesh {dict(mesh.shape)}")
      mesh_axes = tuple(a for a in mesh_axes if mesh.shape[a] > 1)
      if shape is not None and mesh_axes:
        size = 1
        for a in mesh_axes:
          size *= mesh.shape[a]
        if shape[dim] % size:
          raise ValueError(
              f"{name}: dimension {dim} ({axis!r}, size {shape[dim]}) does not divide mesh axes "
              f"{mesh_axes} of total size {size}; change the mesh or the sharding rules")
    used.update(mesh_axes)
    spec.append(None if not mesh_axes else mesh_axes[0] if len(mesh_axes) == 1 else mesh_axes)
  return PartitionSpec(*spec)


def named_sharding(mesh: Mesh, axes: Sequence[str | None], shape: Sequence[int] | None = None,
                   rules: Mapping[str, Any] = DEFAULT_RULES, name: str = "array") -> NamedSharding:
  return NamedSharding(mesh, logical_to_spec(axes, rules, mesh, shape, name))


def tree_shardings(mesh: Mesh, axes_tree: Any, shapes_tree: Any,
                   rules: Mapping[str, Any] = DEFAULT_RULES) -> Any:
  """NamedShardings for a pytree of logical-axes tuples with a matching pytree of shapes."""
  is_axes = lambda x: isinstance(x, tuple) and all(a is None or isinstance(a, str) for a in x)
  flat_axes, treedef = jax.tree_util.tree_flatten_with_path(axes_tree, is_leaf=is_axes)
  flat_shapes = treedef.flatten_up_to(shapes_tree)
  out = []
  for (path, axes), shape in zip(flat_axes, flat_shapes):
    shape = getattr(shape, "shape", shape)
    out.append(named_sharding(mesh, axes, shape, rules, name=jax.tree_util.keystr(path)))
  return treedef.unflatten(out)
