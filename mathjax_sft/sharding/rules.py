"""THE table: logical axis name -> mesh axes. Every sharding in the project comes from here.

Parameters, activations, caches and batches name their dimensions with logical axes
(`embed`, `heads`, ...). `logical_to_spec` turns those names into a `PartitionSpec` over the mesh
axes `data`, `fsdp`, `tensor`. A dimension that does not divide the size of its mesh axes is an
error (never a silent replication).

Activations are pinned with `constrain(x, axes)`, which the model calls at its embedding output,
block boundaries, attention / MLP intermediates and logits. It reads the mesh from context
(`jax.set_mesh(mesh)` outside a jit, or `with_mesh(mesh)` inside a traced function, which the
train step and the sampler use) so the model code takes no mesh argument; with no mesh in
context it does nothing. Without these constraints GSPMD is free to keep the whole global
batch's activations on every chip when the weights are FSDP-sharded on `embed` (measured:
121 GiB instead of 10 GiB of temporaries per chip for the 7B train step on v5p-128).
"""

from __future__ import annotations

import contextlib
from typing import Any, Iterator, Mapping, Sequence

import jax
from jax.sharding import AbstractMesh, Mesh, NamedSharding, PartitionSpec

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
    # activations and batches: the batch (or the sampler's decode rows, or its problems) is
    # split over data and fsdp; heads / mlp / vocab intermediates over tensor (Megatron-style
    # tensor parallelism: one all-reduce after the attention output and MLP down projections).
    "batch": ("data", "fsdp"),
    "seq": None,
    "act_embed": None,
    "act_heads": "tensor",
    "act_kv_heads": "tensor",
    "act_mlp": "tensor",
    "act_vocab": "tensor",
    # KV caches [batch, kv_heads, time, head_dim] (and the sampler's shared prompt prefixes)
    "cache_batch": ("data", "fsdp"),
    "cache_heads": "tensor",
    "cache_time": None,
}


def _mesh_axes_of(rule: Any) -> tuple[str, ...]:
  if rule is None:
    return ()
  if isinstance(rule, str):
    return (rule,)
  return tuple(rule)


def logical_to_spec(axes: Sequence[str | None], rules: Mapping[str, Any] = DEFAULT_RULES,
                    mesh: Mesh | AbstractMesh | None = None, shape: Sequence[int] | None = None,
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


# ---- activations: the mesh in context ---------------------------------------------------------

_RULES_IN_CONTEXT: list[Mapping[str, Any]] = []


@contextlib.contextmanager
def with_mesh(mesh: Mesh | AbstractMesh | None,
              rules: Mapping[str, Any] | None = None) -> Iterator[None]:
  """Makes `constrain` pin activations to `mesh` (usable inside a traced function, unlike
  `jax.set_mesh`), with `rules` (default: DEFAULT_RULES). `mesh=None` is a no-op context."""
  if mesh is None:
    yield
    return
  abstract = mesh if isinstance(mesh, AbstractMesh) else mesh.abstract_mesh
  _RULES_IN_CONTEXT.append(DEFAULT_RULES if rules is None else rules)
  try:
    with jax.sharding.use_abstract_mesh(abstract):
      yield
  finally:
    _RULES_IN_CONTEXT.pop()


def constrain(x: jax.Array, axes: Sequence[str | None], name: str = "activation") -> jax.Array:
  """`x` pinned to the sharding its logical `axes` get on the mesh in context (no mesh: `x`).
  A dimension that does not divide its mesh axes is an error naming `name`."""
  mesh = jax.sharding.get_abstract_mesh()
  if mesh.empty:
    return x
  if len(axes) != x.ndim:
    raise ValueError(f"{name}: {len(axes)} logical axes {tuple(axes)} for a {x.ndim}-d array")
  rules = _RULES_IN_CONTEXT[-1] if _RULES_IN_CONTEXT else DEFAULT_RULES
  spec = logical_to_spec(axes, rules, mesh, x.shape, name)
  return jax.lax.with_sharding_constraint(x, NamedSharding(mesh, spec))
