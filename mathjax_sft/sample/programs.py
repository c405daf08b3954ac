"""The sampler's compiled decode programs: the state in the compiler's layout, and their memory.

A decode chunk carries the rows' state (`engine.DecodeState`: the KV caches and per-row
scalars) from one call to the next. Its physical layout is left to the compiler
(`Layout.AUTO`), and the state is created, carried and shrunk in the layout the compiled program
takes. XLA:TPU keeps a layer's cache [rows, kv_heads, head_dim, slots] tiled in another order
inside the decode loop ([slots, kv_heads, rows, head_dim] at 64 rows); stored row-major, the cache
was copied into that order before every chunk and back after it, three copies at once: 7B at 256
rows x 512 new tokens on one v5p chip needed 141 GiB of temporaries, 3.3 GiB with the
compiler's layout. XLA:CPU picks the default layout, so its program is unchanged.

The compiled program also says what the pool costs before any weight exists (the weights are
abstract arguments): `peak_bytes` from XLA's `memory_analysis()`, which `Engine.plan` compares
with the device's memory (`MEMORY_FRACTION` of it) to pick or check the number of rows.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any, Callable, Sequence

import jax
from jax.experimental.layout import Format, Layout

MEMORY_FRACTION = 0.9   # of the device's memory a decode program's peak may take (the rest: the
                        # runtime, the prefill and the tail's row moves, one layer at a time)
GIB = 2 ** 30


@dataclasses.dataclass(frozen=True)
class DecodeProgram:
  """One compiled decode chunk and what it needs."""
  compiled: Any              # jax.stages.Compiled: (params, pool, state, queue, kill, seed, sampler)
  state_formats: Any         # DecodeState of Formats: the layout and sharding the state is kept in
  peak_bytes: int            # per device: arguments + temporaries + outputs not aliased to inputs
  compile_s: float

  def __call__(self, *args):
    return self.compiled(*args)


def peak_bytes(compiled) -> int:
  """Per-device peak of a compiled program (XLA's memory analysis): arguments + temporaries +
  outputs that do not reuse a donated argument."""
  m = compiled.memory_analysis()
  return int(m.argument_size_in_bytes + m.temp_size_in_bytes + m.output_size_in_bytes
             - m.alias_size_in_bytes)


def device_memory(device) -> int | None:
  """The memory a device offers its programs (bytes), or None where the runtime does not say
  (XLA:CPU)."""
  stats = device.memory_stats() if hasattr(device, "memory_stats") else None
  return int(stats["bytes_limit"]) if stats and stats.get("bytes_limit") else None


def compile_decode(fn: Callable, args: Sequence[Any], state_arg: int,
                   other_outputs: Sequence[Any]) -> DecodeProgram:
  """Compiles `fn(*args) -> (state, *others)` over abstract `args` (ShapeDtypeStructs with
  shardings), with argument `state_arg` donated and its layout, in and out, the compiler's
  choice; `other_outputs` are the shardings of the other outputs."""
  shardings = jax.tree.map(lambda a: a.sharding, tuple(args))
  auto = jax.tree.map(lambda s: Format(Layout.AUTO, s), shardings[state_arg])
  in_shardings = shardings[:state_arg] + (auto,) + shardings[state_arg + 1:]
  jitted = jax.jit(fn, in_shardings=in_shardings, out_shardings=(auto, *other_outputs),
                   donate_argnums=(state_arg,))
  tic = time.perf_counter()
  compiled = jitted.lower(*args).compile()
  seconds = time.perf_counter() - tic
  formats = compiled.input_formats[0][state_arg]
  return DecodeProgram(compiled, formats, peak_bytes(compiled), seconds)


def fits(peak: int | None, memory: int | None) -> bool:
  """Whether a program of this peak (None: the compiler found it over the device's memory)
  fits `MEMORY_FRACTION` of `memory` (None: unknown, e.g. a CPU: anything fits)."""
  return memory is None or (peak is not None and peak <= MEMORY_FRACTION * memory)


def over_memory(error: Exception) -> bool:
  """Whether a compile error is the compiler refusing a program over the device's memory."""
  return isinstance(error, jax.errors.JaxRuntimeError) and "RESOURCE_EXHAUSTED" in str(error)


def does_not_fit(rows: int, max_new_tokens: int, peak: int | None, memory: int) -> str:
  """The message for a pool that does not fit, naming the settings that shrink it."""
  need = "more than the device's memory" if peak is None else f"{_size(peak)} per device"
  return (f"the decode of {rows} rows x {max_new_tokens} new tokens needs {need}; at most "
          f"{100 * MEMORY_FRACTION:.0f}% of its {_size(memory)} may be used: lower --rows "
          "(or --max_new_tokens), or shard the rows and weights over more devices (--mesh_shape)")


def _size(n: float) -> str:
  for unit, size in (("GiB", GIB), ("MiB", 2 ** 20)):
    if n >= size:
      return f"{n / size:.1f} {unit}"
  return f"{n / 1024:.0f} KiB"
