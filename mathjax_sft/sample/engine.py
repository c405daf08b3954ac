"""Pass@N sampling engine: a scheduler over a fixed pool of decode rows for a whole run.

All problems x N samples go through one pool of `rows` decode rows:
  * prompt pool: `prefix_slots` prompts are resident at once (keys/values, prompt length, the N
    first tokens drawn from the prompt's last logits). A problem is prefilled into a free slot
    (one prompt per call, one compiled program per prompt-length bucket) when one frees, and
    its slot frees when its last sample ends.
  * decode: compiled chunks of `chunk_steps` steps (one program per run). Inside a chunk a row
    whose sample ends (EOS, budget) takes the next item of a work queue the host filled with
    pending samples of resident problems (oldest problem first), so no row decodes padding
    while work is queued and no problem is ever decoded as padding. Every row reads its own
    problem's prompt from the pool (`llama.Prefix.row_slot`) and keeps only its generated keys
    in a ring-buffer cache of `max_new_tokens` slots.
  * host, between chunks (`scheduler.Scheduler`): the chunk's token events are appended to their
    samples (`book.SampleBook`); stop strings are matched on decoded text (`stops.StopStrings`)
    and a sample that hit one ends there (its row is released at the start of the next chunk,
    `rows.RowMap`); finished problems are handed to `on_problem`; free slots are refilled
    (`pool.SlotPool`); the next queue is built.
  * tail: once every sample has started, rows only go idle. Whenever the live rows fit in half
    the pool, they are moved there (a gather of their state and caches) and decoding goes on
    with the smaller program, down to `EngineConfig.min_tail_rows`.
`Engine.generate` runs the loop: prefill into free slots, queue, (shrink,) decode a chunk, record.
Sample j of problem `key` draws its t-th token with the uniform
`fold_in(fold_in(fold_in(seed, key), j), t)`, and a row's arithmetic does not depend on the
other rows or prompts, so samples do not depend on the pool size, chunk size or problem order.

Memory: the decode state is kept in the layout its compiled program takes, and the rows are
planned from that program's memory before any weight is loaded (`Engine.plan`, `programs`).
The engine holds one copy of the weights, in its decode layout (per-layer; q/k/v and
gate/up concatenated when `tensor` is 1, gate/up stacked as [2, embed, mlp] otherwise).
`prepare_params` builds it one tensor at a time; with `donate=True` each stacked input buffer is
freed as soon as its slices exist, so the peak is the weights plus one stacked tensor. Under a
mesh, rows and their caches are sharded by the rule table's `batch` / `cache_*` axes and the
prompt pool by `cache_heads` (traced under `rules.with_mesh`).
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import math
import time
import zlib
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding

from mathjax_sft import errors
from mathjax_sft.model import llama, weights
from mathjax_sft.model.weights import Weights
from mathjax_sft.model.config import ModelConfig
from mathjax_sft.sample.book import SampleBook, SampleEnd, Samples
from mathjax_sft.sample import programs
from mathjax_sft.sample.pool import Problem, SlotPool, WorkItem
from mathjax_sft.sample.rows import RowMap, tail_size
from mathjax_sft.sample.scheduler import OnProblem, Scheduler
from mathjax_sft.sample.stats import EngineStats
from mathjax_sft.sample.stops import Detokenize, StopStrings
from mathjax_sft.sample.strategies import Sampler, SamplingParams, sample_many, sample_tokens
from mathjax_sft.sharding import rules as sharding_rules

log = logging.getLogger(__name__)

MIN_PROMPT_BUCKET = 64
ROWS_CAP = {"cpu": 64}         # more rows do not decode faster on a CPU (compute-bound)
DEFAULT_ROWS_CAP = 256


@dataclasses.dataclass(frozen=True)
class EngineConfig:
  max_new_tokens: int = 512        # longest sample, in tokens
  rows: int | None = None          # decode rows in the pool (None: `default_rows`)
  prefix_slots: int | None = None  # prompts resident at once (None: rows // N + 3)
  chunk_steps: int = 8             # decode steps per compiled call; the host schedules between
  stop_token_ids: tuple[int, ...] = ()   # besides the model's EOS ids (matched on device)
  stop_strings: tuple[str, ...] = ()     # matched on decoded text (needs `detokenize`)
  max_prompt_len: int | None = None
  cache_read_buckets: int = 1      # see llama.decode_step (the pool's ring is shared, so the
                                   # written part is all of it after the first chunks)
  min_tail_rows: int = 8           # once no sample is left to queue, the rows halve whenever the
                                   # live ones fit, down to this many (one more decode program per
                                   # size; 0: never)

  def __post_init__(self):
    for name in ("max_new_tokens", "rows", "prefix_slots", "chunk_steps", "cache_read_buckets"):
      value = getattr(self, name)
      if value is not None and value <= 0:
        raise ValueError(f"EngineConfig.{name} must be positive, got {value}")
    if self.min_tail_rows < 0:
      raise ValueError(f"EngineConfig.min_tail_rows must be >= 0, got {self.min_tail_rows}")


def prompt_bucket(length: int) -> int:
  return max(MIN_PROMPT_BUCKET, 1 << max(0, math.ceil(math.log2(max(length, 1)))))


POOL_WIDTH_MULTIPLE = 16   # whole f32 (8) and bf16 (16) sublane tiles on TPU, AVX-512 vectors


def pool_width(length: int) -> int:
  """Prompt-pool width for a run whose longest prompt has `length` tokens: every row attends over
  all of it, every step, so it is rounded up to a multiple of 16 only (prefill buckets are powers
  of two, capped at this width). GSM8K's first 8 prompts (56-140 tokens): 144, not 192 (the
  64-row decode step 3-7% faster, A/B on a 2-core CPU)."""
  return max(MIN_PROMPT_BUCKET, -(-length // POOL_WIDTH_MULTIPLE) * POOL_WIDTH_MULTIPLE)


def default_slots(rows: int, num_samples: int) -> int:
  """Prompts resident at once: those the rows draw from (rows / N), plus three for problems whose
  last samples are still running and the next one, prefilled ahead."""
  return -(-rows // num_samples) + 3


def problem_key(problem_id: str) -> int:
  """A stable 31-bit integer for a problem id (seeds its samples)."""
  return zlib.crc32(problem_id.encode("utf-8")) & 0x7FFFFFFF


def batch_shards(mesh: Mesh | None) -> int:
  """How many ways the decode rows are split (the mesh's data x fsdp size; 1 without a mesh)."""
  return 1 if mesh is None else math.prod(mesh.shape[a] for a in ("data", "fsdp")
                                          if a in mesh.shape)


def default_rows(cfg: ModelConfig, max_new_tokens: int, work: int, mesh: Mesh | None = None,
                 platform: str = "cpu", memory: int | None = None) -> int:
  """A first guess of the decode rows that fit a device with `memory` bytes (None: unknown):
  the rows' ring caches, logits and sort buffers within `programs.MEMORY_FRACTION` of it, less
  the weights; capped per platform, never more than the work, rounded to the batch shards.
  `Engine.plan` checks the guess against the compiled program."""
  shards = batch_shards(mesh)
  tensor = 1 if mesh is None else mesh.shape.get("tensor", 1)
  itemsize = jnp.dtype(cfg.compute_dtype).itemsize
  per_row = (2 * cfg.num_layers * cfg.num_kv_heads * cfg.head_dim * max_new_tokens * itemsize
             / tensor + 4 * cfg.vocab_size * 4)
  cap = ROWS_CAP.get(platform, DEFAULT_ROWS_CAP)
  if memory:
    weight_bytes = cfg.num_params() * jnp.dtype(cfg.param_dtype).itemsize / tensor
    budget = programs.MEMORY_FRACTION * memory - weight_bytes
    cap = min(cap, max(1, int(budget * shards // per_row)))
  rows = min(cap, work)
  return max(shards, -(-rows // shards) * shards)


def step_flops(cfg: ModelConfig, rows: int, keys: int) -> float:
  """FLOPs of one decode step of `rows` rows that each attend over `keys` keys: 2 x the weight
  matmuls (LM head included) + 4 x layers x heads x head_dim x keys (scores and values)."""
  e, m, h, k, d = (cfg.hidden_size, cfg.intermediate_size, cfg.num_heads, cfg.num_kv_heads,
                   cfg.head_dim)
  matmul = cfg.num_layers * (e * d * (2 * h + 2 * k) + 3 * e * m) + e * cfg.vocab_size
  return rows * (2.0 * matmul + 4.0 * cfg.num_layers * h * d * keys)


def fuses(mesh: Mesh | None) -> bool:
  """Whether the decode layout concatenates q/k/v and gate/up (only where `tensor` is
  unsharded); under tensor parallelism it stacks gate/up instead (`weights.fuse_layers`)."""
  return mesh is None or mesh.shape.get("tensor", 1) == 1


def engine_param_axes(cfg: ModelConfig, mesh: Mesh | None) -> Weights:
  return weights.fused_param_axes(cfg, concat=fuses(mesh))


def engine_param_shardings(cfg: ModelConfig, mesh: Mesh | None) -> Weights | None:
  """Shardings of the decode layout's params (None without a mesh: default device)."""
  if mesh is None:
    return None
  return sharding_rules.tree_shardings(mesh, engine_param_axes(cfg, mesh),
                                       abstract_engine_params(cfg, mesh))


def abstract_engine_params(cfg: ModelConfig, mesh: Mesh | None) -> Weights:
  """Shapes / dtypes of the decode layout's params."""
  return jax.eval_shape(lambda p: _relayout(p, fuses(mesh)), llama.abstract_params(cfg))


def _relayout(params: Weights, concat: bool) -> Weights:
  return weights.fuse_layers(weights.unstack_layers(params), concat)


def _split_layers(params: Weights, mesh: Mesh | None, donate: bool) -> Weights:
  """Stacked layers -> per-layer weights, one stacked tensor at a time."""
  layers = params.layers
  n = jax.tree.leaves(layers)[0].shape[0]
  per_layer: list[dict] = [{} for _ in range(n)]
  for name, stacked in weights.layer_to_dict(layers).items():
    out_sh = None
    if mesh is not None:
      spec = stacked.sharding.spec
      out_sh = NamedSharding(mesh, jax.sharding.PartitionSpec(*tuple(spec)[1:]))
    split = jax.jit(lambda x: tuple(x[i] for i in range(n)),
                    out_shardings=None if out_sh is None else (out_sh,) * n)
    for i, piece in enumerate(split(stacked)):
      per_layer[i][name] = piece
    if donate:
      stacked.delete()
  return dataclasses.replace(params, layers=tuple(type(layers)(**d) for d in per_layer))


def prepare_params(params: Weights, cfg: ModelConfig, mesh: Mesh | None,
                   donate: bool = False) -> Weights:
  """Stacked (or per-layer) train-layout weights -> the decode layout, one stacked tensor at a
  time.

  With `donate`, each input buffer is deleted as soon as its slices (or its fused tensor) exist:
  the caller's arrays are consumed and at most one stacked tensor exists twice at any moment.
  (XLA cannot alias a stacked buffer to its slices, so the buffers are deleted explicitly.)"""
  weights.check_layout(params, cfg, "sampler params")
  if params.layer_type is not weights.LayerWeights:
    raise TypeError(f"sampler params: expected the train layout (LayerWeights), got "
                    f"{params.layer_type.__name__}")
  fuse = fuses(mesh)   # concatenate (else stack gate/up)
  if params.stacked:
    params = _split_layers(params, mesh, donate)
  layer_sh = None
  if mesh is not None:
    layer_sh = engine_param_shardings(cfg, mesh).layers[0]
  fuse_one = jax.jit(lambda layer: weights.fuse_layer(layer, fuse), out_shardings=layer_sh)
  groups = weights.FUSED if fuse else weights.STACKED
  fused = []
  for layer in params.layers:
    fused.append(fuse_one(layer))
    if donate:
      for parts in groups.values():
        for part in parts:
          getattr(layer, part).delete()
  return dataclasses.replace(params, layers=tuple(fused))


# ---- device state ----------------------------------------------------------------------------

@jax.tree_util.register_dataclass
@dataclasses.dataclass
class PromptPool:
  """The resident prompts: Q slots of up to T tokens (T: the run's longest prompt, bucketed)."""
  prefix: llama.Prefix          # keys / values [kv_heads, Q, T, head_dim] per layer, valid [Q, T]
  length: jax.Array             # int32 [Q]: prompt lengths
  key: jax.Array                # int32 [Q]: problem keys (seed the samples)
  first: jax.Array              # int32 [Q, N]: every sample's first token, drawn at prefill


@jax.tree_util.register_dataclass
@dataclasses.dataclass
class DecodeState:
  """What the decode rows carry from step to step (and from chunk to chunk): B rows."""
  cache: llama.KVCache          # the rows' own generated keys / values (prompts: `PromptPool`)
  slot: jax.Array               # int32 [B]: the prompt slot a row's sample belongs to
  sample_index: jax.Array       # int32 [B]: the sample's index within its problem
  sample_id: jax.Array          # int32 [B]: the host's id of the row's sample (`pool`)
  token: jax.Array              # int32 [B]: the row's last token, the next step's input
  length: jax.Array             # int32 [B]: tokens the row's sample has so far
  active: jax.Array             # bool [B]: the row is decoding a sample
  pending: jax.Array            # bool [B]: its sample just ended: take new work next step


@jax.tree_util.register_dataclass
@dataclasses.dataclass
class WorkQueue:
  """Pending samples handed to a chunk, in order; rows that need work take them in turn."""
  slot: jax.Array               # int32 [W]
  sample_index: jax.Array       # int32 [W]
  sample_id: jax.Array          # int32 [W]
  count: jax.Array              # int32 []: valid items


def queue_length(rows: int) -> int:
  """Work items handed to one chunk of `rows` rows (W)."""
  return 2 * rows


@jax.tree_util.register_dataclass
@dataclasses.dataclass
class Events:
  """Per step and row of a chunk [K, B]: the sample a row started (`start_*`: its first token)
  and the token it decoded (`token_*`). Sample id -1: no event. The end codes are
  `book.SampleEnd`s."""
  start_sample: jax.Array
  start_token: jax.Array
  start_end: jax.Array
  token_sample: jax.Array
  token: jax.Array
  token_end: jax.Array


class Engine:
  """Holds params (decode layout, see `prepare_params`) and the compiled prefill / decode programs.

  `params=None` builds the programs only: `plan` and `decode_program` compile against abstract
  weights (ahead-of-time compilation, `aot.check_sample`; the run's rows are chosen before its
  weights are loaded), and `load` brings the weights. `device` (default: the mesh's first, or
  this process's first device) and `memory` (its bytes; default: what the runtime reports, None
  on a CPU) are what the rows must fit."""

  def __init__(self, params: Weights | None, cfg: ModelConfig, engine_cfg: EngineConfig,
               mesh: Mesh | None = None, donate: bool = False,
               detokenize: Detokenize | None = None, device=None, memory: int | None = None):
    self.cfg = cfg
    self.ecfg = engine_cfg
    self.mesh = mesh
    self.device = device or (mesh.devices.flat[0] if mesh is not None else jax.local_devices()[0])
    self.memory = memory if memory is not None else programs.device_memory(self.device)
    self.params = None
    if params is not None:
      self.load(params, donate)
    self.stop_ids = tuple(sorted(set(cfg.eos_token_ids) | set(engine_cfg.stop_token_ids)))
    if engine_cfg.stop_strings and detokenize is None:
      raise ValueError("EngineConfig.stop_strings needs a detokenize function")
    self.detokenize = detokenize
    self.stops = StopStrings(engine_cfg.stop_strings, detokenize) if detokenize else None
    if not self.stop_ids and not engine_cfg.stop_strings:
      log.warning("no EOS or stop tokens: every sample runs to max_new_tokens")
    self.compiled_shapes: set[tuple] = set()
    self._prefill = jax.jit(self._prefill_fn, static_argnames=("num_samples",),
                            donate_argnames=("pool",))
    self._programs: dict[tuple, programs.DecodeProgram] = {}
    # jitted programs that make or move the decode state: the empty pool per shape, the tail's
    # row moves per (rows, new rows) and per cache format
    self._state_programs: dict[Any, Callable] = {}
    self.stats = EngineStats()

  def load(self, params: Weights, donate: bool = False) -> None:
    """The weights, moved into the decode layout (`prepare_params`; `donate`: consumed)."""
    self.params = prepare_params(params, self.cfg, self.mesh, donate)

  # ---- shapes --------------------------------------------------------------------------------
  def plan(self, prompt_lengths: Sequence[int], num_samples: int,
           sampling: SamplingParams) -> tuple[int, int, int]:
    """(rows B, prompt slots Q, prompt width T) for a run of these prompts, with its decode
    program compiled. Rows: `EngineConfig.rows`, else the most that fit (`default_rows`, then
    fewer until the compiled program's peak fits the device's memory). Raises `BadInput` when
    the rows given, or a single row per shard, do not fit."""
    work = len(prompt_lengths) * num_samples
    shards = batch_shards(self.mesh)
    rows = self.ecfg.rows or default_rows(self.cfg, self.ecfg.max_new_tokens, work, self.mesh,
                                          self.device.platform, self.memory)
    width = pool_width(max(prompt_lengths))
    sampler = sampling.traced()
    while True:
      slots = max(1, min(self.ecfg.prefix_slots or default_slots(rows, num_samples),
                         len(prompt_lengths)))
      try:
        peak = self.decode_program(rows, slots, width, num_samples, sampler).peak_bytes
      except Exception as e:  # pylint: disable=broad-except
        if not programs.over_memory(e):
          raise
        peak = None
      if programs.fits(peak, self.memory):
        return rows, slots, width
      if self.ecfg.rows or rows <= shards:
        raise errors.BadInput(programs.does_not_fit(rows, self.ecfg.max_new_tokens, peak,
                                                    self.memory), flag="--rows")
      budget = programs.MEMORY_FRACTION * self.memory
      smaller = rows // 2 if peak is None else int(rows * budget / peak)
      smaller = max(shards, min(smaller // shards * shards, rows - shards))
      log.info("%d decode rows do not fit the device's memory: trying %d", rows, smaller)
      rows = smaller

  def _sharding(self, axes, shape):
    if self.mesh is None:
      return None
    return sharding_rules.named_sharding(self.mesh, axes, shape, name="sampler state")

  def specs(self, rows: int, slots: int, width: int, num_samples: int):
    """Shapes, dtypes and shardings of the programs' state: (PromptPool, DecodeState, WorkQueue,
    kill mask), as ShapeDtypeStructs (ahead-of-time compilation, and `init_state`)."""
    cfg = self.cfg
    dtype = jnp.dtype(cfg.compute_dtype)
    sds = lambda shape, dt, axes: jax.ShapeDtypeStruct(shape, jnp.dtype(dt),
                                                       sharding=self._sharding(axes, shape))
    rep = lambda shape, dt: sds(shape, dt, (None,) * len(shape))
    pool_kv = lambda: tuple(sds((cfg.num_kv_heads, slots, width, cfg.head_dim), dtype, POOL_AXES)
                            for _ in range(cfg.num_layers))
    pool = PromptPool(prefix=llama.Prefix(k=pool_kv(), v=pool_kv(), valid=rep((slots, width), bool)),
                      length=rep((slots,), jnp.int32), key=rep((slots,), jnp.int32),
                      first=rep((slots, num_samples), jnp.int32))
    new = self.ecfg.max_new_tokens
    shapes = llama.cache_shapes(cfg, rows, new)
    cache_kv = lambda i, axes: tuple(sds(shapes[i], dtype, axes) for _ in range(cfg.num_layers))
    cache = llama.KVCache(k=cache_kv(0, llama.CACHE_K_AXES), v=cache_kv(1, llama.CACHE_V_AXES),
                          valid=sds((rows, new), bool, ("cache_batch", None)),
                          index=rep((), jnp.int32))
    vec = lambda dt: sds((rows,), dt, ("batch",))
    state = DecodeState(cache=cache, slot=vec(jnp.int32), sample_index=vec(jnp.int32),
                        sample_id=vec(jnp.int32), token=vec(jnp.int32), length=vec(jnp.int32),
                        active=vec(bool), pending=vec(bool))
    items = lambda: rep((queue_length(rows),), jnp.int32)
    queue = WorkQueue(slot=items(), sample_index=items(), sample_id=items(),
                      count=rep((), jnp.int32))
    return pool, state, queue, vec(bool)

  def on_device(self, spec: jax.ShapeDtypeStruct) -> jax.ShapeDtypeStruct:
    """`spec` with a sharding: its own, or (without a mesh) the engine's device."""
    sharding = spec.sharding or jax.sharding.SingleDeviceSharding(self.device)
    return jax.ShapeDtypeStruct(spec.shape, spec.dtype, sharding=sharding)

  def param_specs(self) -> Weights:
    """The decode layout's weights as abstract arrays on the engine's devices."""
    shardings = engine_param_shardings(self.cfg, self.mesh)
    abstract = abstract_engine_params(self.cfg, self.mesh)
    if shardings is None:
      return jax.tree.map(self.on_device, abstract)
    return jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                        abstract, shardings)

  def decode_program(self, rows: int, slots: int, width: int, num_samples: int,
                     sampler: Sampler) -> programs.DecodeProgram:
    """The compiled decode chunk of a pool of this shape (compiled once per shape), its state
    in the layout the compiler chose (`programs`)."""
    key = self._decode_key(rows, slots, width, num_samples, sampler)
    if key not in self._programs:
      self._note_shape(key)
      pool, state, queue, kill = jax.tree.map(self.on_device,
                                              self.specs(rows, slots, width, num_samples))
      scalar = lambda x: self.on_device(jax.ShapeDtypeStruct(
          jnp.shape(x), jnp.result_type(x), sharding=self._sharding((), ())))
      args = (self.param_specs(), pool, state, queue, kill, scalar(jnp.int32(0)),
              jax.tree.map(scalar, sampler))
      steps = self.ecfg.chunk_steps
      per_step = self.on_device(jax.ShapeDtypeStruct(
          (steps, rows), jnp.int32, sharding=self._sharding((None, "batch"), (steps, rows))))
      events = Events(**{f.name: per_step.sharding for f in dataclasses.fields(Events)})
      self._programs[key] = programs.compile_decode(
          functools.partial(self._decode_fn, steps=steps), args, state_arg=2,
          other_outputs=(queue.count.sharding, events))
    return self._programs[key]

  def init_state(self, pool_spec: PromptPool, state_spec: DecodeState,
                 state_formats: DecodeState):
    """An empty prompt pool and idle rows (all zeros: no row is active, no slot valid) from
    their `specs`, the rows in their decode program's `state_formats`."""
    pool_spec = jax.tree.map(self.on_device, pool_spec)
    key = ("init", state_spec.slot.shape[0]) + pool_spec.prefix.valid.shape + pool_spec.first.shape
    if key not in self._state_programs:    # one program per pool shape
      zeros = lambda t: jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), t)
      self._state_programs[key] = jax.jit(
          lambda: (zeros(pool_spec), zeros(state_spec)),
          out_shardings=(jax.tree.map(lambda s: s.sharding, pool_spec), state_formats))
    return self._state_programs[key]()

  # ---- jitted programs ----------------------------------------------------------------------
  def _prefill_fn(self, params, pool, tokens, length, slot, key, seed, sampler,
                  num_samples: int):
    with sharding_rules.with_mesh(self.mesh, PREFILL_RULES):
      return self._prefill_body(params, pool, tokens, length, slot, key, seed, sampler,
                                num_samples)

  def _decode_fn(self, params, pool, state, queue, kill, seed, sampler, steps: int):
    with sharding_rules.with_mesh(self.mesh):
      return self._decode_body(params, pool, state, queue, kill, seed, sampler, steps)

  def _prefill_body(self, params, pool, tokens, length, slot, key, seed, sampler,
                    num_samples: int):
    """One prompt tokens [1, t] (right-padded to its bucket) into pool slot `slot`, with the
    first token of each of its N samples."""
    t = tokens.shape[1]
    valid = jnp.arange(t)[None, :] < length
    cache = llama.init_cache(self.cfg, 1, t, stacked=False, dtype=self.cfg.compute_dtype)
    hidden, cache = llama.prefill(params, self.cfg, tokens, cache,
                                  segment_ids=valid.astype(jnp.int32))
    last = jax.lax.dynamic_index_in_dim(hidden[0], length - 1, axis=0)      # [1, E]
    logits = llama.lm_head(params, self.cfg, last)                          # [1, V]
    keys = _sample_keys(seed, key, jnp.arange(num_samples))
    u0 = jax.vmap(lambda k: jax.random.uniform(jax.random.fold_in(k, 0)))(keys)
    first = sample_many(logits, u0[None], sampler)[0]                        # [N]
    width = pool.prefix.valid.shape[1]
    written = llama.prefix_from_cache(cache)
    put = lambda store, x: jax.lax.dynamic_update_slice(         # x [1, kvh, t, d]
        store, jnp.pad(x.swapaxes(0, 1), ((0, 0), (0, 0), (0, width - t), (0, 0))).astype(
            store.dtype), (0, slot, 0, 0))
    prefix = llama.Prefix(
        k=tuple(put(s, x) for s, x in zip(pool.prefix.k, written.k)),
        v=tuple(put(s, x) for s, x in zip(pool.prefix.v, written.v)),
        valid=pool.prefix.valid.at[slot].set(jnp.arange(width) < length))
    return PromptPool(prefix=prefix, length=pool.length.at[slot].set(length),
                      key=pool.key.at[slot].set(key), first=pool.first.at[slot].set(first))

  def _decode_body(self, params, pool, state, queue, kill, seed, sampler, steps: int):
    """`steps` decode steps of every row. At each step, rows that need work (their sample
    ended, they were killed by the host, or they are idle) first take queue items in turn;
    then every active row decodes one token. Returns (state, queue items taken, Events)."""
    cfg, max_new = self.cfg, self.ecfg.max_new_tokens
    goes_on, stop_token, max_tokens = (int(SampleEnd.CONTINUES), int(SampleEnd.STOP_TOKEN),
                                       int(SampleEnd.MAX_TOKENS))
    stop_ids = jnp.asarray(self.stop_ids or (-1,), jnp.int32)
    width = queue.slot.shape[0]
    is_stop = lambda tok: jnp.any(tok[:, None] == stop_ids[None, :], axis=-1)
    state = dataclasses.replace(state, active=state.active & ~kill, pending=state.pending | kill)

    def step(carry, _):
      st, head = carry
      need = st.pending | ~st.active
      qi = head + jnp.cumsum(need) - 1
      take = need & (qi < queue.count)
      qi = jnp.clip(qi, 0, width - 1)
      slot = jnp.where(take, queue.slot[qi], st.slot)
      index = jnp.where(take, queue.sample_index[qi], st.sample_index)
      sample_id = jnp.where(take, queue.sample_id[qi], st.sample_id)
      first = pool.first[slot, index]
      start_end = jnp.where(is_stop(first), stop_token, max_tokens if max_new == 1 else goes_on)
      active = jnp.where(take, start_end == goes_on, st.active & ~need)
      token = jnp.where(take, first, st.token)
      length = jnp.where(take, 1, st.length)
      cache = dataclasses.replace(st.cache, valid=st.cache.valid & ~take[:, None])
      head = head + jnp.sum(take)

      positions = (pool.length[slot] + length - 1)[:, None]
      prefix = dataclasses.replace(pool.prefix, row_slot=slot)
      logits, cache = llama.decode_step(params, cfg, token[:, None], positions, cache,
                                        segment_ids=active[:, None].astype(jnp.int32),
                                        prefix=prefix,
                                        cache_read_buckets=self.ecfg.cache_read_buckets)
      keys = _sample_keys(seed, pool.key[slot], index)
      u = jax.vmap(lambda k, i: jax.random.uniform(jax.random.fold_in(k, i)))(keys, length)
      nxt = sample_tokens(logits[:, 0], u, sampler)
      token_end = jnp.where(is_stop(nxt), stop_token,
                            jnp.where(length + 1 >= max_new, max_tokens, goes_on))
      ended = active & (token_end != goes_on)
      events = Events(start_sample=jnp.where(take, sample_id, -1), start_token=first,
                      start_end=start_end, token_sample=jnp.where(active, sample_id, -1),
                      token=nxt, token_end=token_end)
      st = DecodeState(cache=cache, slot=slot, sample_index=index, sample_id=sample_id,
                       token=jnp.where(active, nxt, token),
                       length=jnp.where(active, length + 1, length), active=active & ~ended,
                       pending=(take & (start_end != goes_on)) | ended)
      return (st, head), events

    (state, head), events = jax.lax.scan(step, (state, jnp.zeros((), jnp.int32)), None,
                                         length=steps)
    return state, head, events

  def _shrink(self, state: DecodeState, order: np.ndarray, live: int,
              formats: DecodeState) -> DecodeState:
    """The rows `order` (the `live` ones first) of `state`, as a pool of len(order) rows whose
    other rows are idle, in `formats` (the smaller decode program's). The caches move one layer
    at a time, each old layer freed once moved: the peak is the old pool plus one new layer."""
    order_dev = self._put(order.astype(np.int32), (None,))
    cache = state.cache

    def move(olds, fmts):
      news = []
      for old, fmt in zip(olds, fmts):
        news.append(self._mover(fmt)(old, order_dev))
        old.delete()
      return tuple(news)

    k, v = move(cache.k, formats.cache.k), move(cache.v, formats.cache.v)
    rest = lambda st: dataclasses.replace(st, cache=dataclasses.replace(st.cache, k=(), v=()))
    key = ("shrink", state.slot.shape[0], len(order))
    if key not in self._state_programs:
      self._note_shape(key)

      def shrink(state, order, live):
        take = lambda x: jnp.take(x, order, axis=0)
        on = jnp.arange(order.shape[0]) < live
        cache = dataclasses.replace(state.cache, valid=take(state.cache.valid))
        return DecodeState(cache=cache, slot=take(state.slot),
                           sample_index=take(state.sample_index),
                           sample_id=take(state.sample_id), token=take(state.token),
                           length=take(state.length), active=take(state.active) & on,
                           pending=take(state.pending) & on)

      self._state_programs[key] = jax.jit(shrink, out_shardings=rest(formats))
    small = self._state_programs[key](rest(state), order_dev, jnp.int32(live))
    return dataclasses.replace(small, cache=dataclasses.replace(small.cache, k=k, v=v))

  def _mover(self, fmt) -> Callable:
    """Rows `order` of one layer's cache, into `fmt` (a jitted gather per output format)."""
    if fmt not in self._state_programs:
      self._state_programs[fmt] = jax.jit(lambda x, order: jnp.take(x, order, axis=0),
                                     out_shardings=fmt)
    return self._state_programs[fmt]

  # ---- host side ----------------------------------------------------------------------------
  def _put(self, x, axes):
    if self.mesh is None:
      return jnp.asarray(x)
    return jax.device_put(np.asarray(x), self._sharding(axes, np.shape(x)))

  def generate(self, prompts: Sequence[Sequence[int]], problem_ids: Sequence[str],
               num_samples: int, sampling: SamplingParams, seed: int = 0,
               on_problem: OnProblem | None = None) -> list[Samples]:
    """N samples of every prompt (token ids) through the row pool. `on_problem(i, samples)` is
    called as soon as problem i's last sample ends (problems end roughly in order)."""
    self._check_prompts(prompts, problem_ids)
    if not prompts:
      return []
    n = num_samples
    rows, slots, width = self.plan([len(p) for p in prompts], n, sampling)
    sampler, seed = sampling.traced(), jnp.int32(seed)
    program = self.decode_program(rows, slots, width, n, sampler)
    pool, state = self.init_state(*self.specs(rows, slots, width, n)[:2], program.state_formats)
    problems = [Problem(i, list(p), problem_key(pid))
                for i, (p, pid) in enumerate(zip(prompts, problem_ids))]
    run = Scheduler(slots=SlotPool.create(problems, slots, n),
                    book=SampleBook.create(len(problems), n, self.detokenize, self.stops),
                    rows=RowMap.idle(rows), stats=self.stats, on_problem=on_problem)
    while run.remaining:
      tic = time.perf_counter()
      while (problem := run.slots.admit()) is not None:      # prefill into free slots
        pool = self._prefill_problem(pool, problem, width, seed, sampler, n)
      jax.block_until_ready(pool)
      toc = time.perf_counter()
      self.stats.prefill_s += toc - tic
      items = run.queue(queue_length(run.rows.size))
      if not items and not run.rows.any_live():
        raise RuntimeError("sampler scheduler stalled: no queued work and no live row")
      if not items and run.slots.all_admitted:             # the tail: only live rows are left
        state = self._shrink_tail(state, run.rows, slots, width, n, sampler)
      queue = self._work_queue(items, queue_length(run.rows.size))
      tic = time.perf_counter()
      self.stats.host_s += tic - toc
      program = self.decode_program(run.rows.size, slots, width, n, sampler)
      state, taken, events = program(self.params, pool, state, queue,
                                     self._put(run.rows.kill, ("batch",)), seed, sampler)
      taken = int(taken)
      events = jax.tree.map(np.asarray, events)
      toc = time.perf_counter()
      self.stats.decode_s += toc - tic
      self._count_chunk(events, run.rows.size, slots * width, queue_left=taken < len(items))
      run.record_chunk(items[:taken], events)
      self.stats.host_s += time.perf_counter() - toc
    return run.results

  def _check_prompts(self, prompts: Sequence[Sequence[int]], problem_ids: Sequence[str]) -> None:
    if len(prompts) != len(problem_ids):
      raise ValueError("prompts and problem_ids differ in length")
    limit = self.ecfg.max_prompt_len or self.cfg.max_position_embeddings - self.ecfg.max_new_tokens
    for i, p in enumerate(prompts):
      if not len(p):
        raise ValueError(f"prompt {i} ({problem_ids[i]}) is empty")
      if len(p) > limit:
        raise ValueError(f"prompt {i} ({problem_ids[i]}) has {len(p)} tokens, over the limit "
                         f"{limit} (max_position_embeddings - max_new_tokens)")

  def _decode_key(self, rows: int, slots: int, width: int, num_samples: int, sampler) -> tuple:
    """The decode program's compile key (`compiled_shapes`)."""
    return ("decode", rows, slots, width, num_samples, self.ecfg.max_new_tokens,
            self.ecfg.chunk_steps, tuple(type(r).__name__ for r in sampler.rules))

  def _prefill_problem(self, pool: PromptPool, problem: Problem, width: int, seed, sampler,
                       num_samples: int) -> PromptPool:
    """`problem`'s prompt into its pool slot, right-padded to its bucket (at most `width`)."""
    t = min(prompt_bucket(len(problem.prompt)), width)
    tokens = np.zeros((1, t), np.int32)
    tokens[0, :len(problem.prompt)] = problem.prompt
    self._note_shape(("prefill", t, num_samples))
    return self._prefill(self.params, pool, self._put(tokens, (None, None)),
                         jnp.int32(len(problem.prompt)), jnp.int32(problem.slot),
                         jnp.int32(problem.key), seed, sampler, num_samples=num_samples)

  def _shrink_tail(self, state: DecodeState, rows: RowMap, slots: int, width: int,
                   num_samples: int, sampler) -> DecodeState:
    """The tail's live rows moved into a smaller pool if they fit one (`tail_size`);
    `rows` is remapped to it."""
    live = rows.live()
    size = tail_size(rows.size, len(live), self.ecfg.min_tail_rows, batch_shards(self.mesh))
    if size == rows.size:
      return state
    order = rows.tail_order(size)
    program = self.decode_program(size, slots, width, num_samples, sampler)
    state = self._shrink(state, order, len(live), program.state_formats)
    rows.reorder(order)
    self.stats.shrinks += 1
    return state

  def _work_queue(self, items: Sequence[WorkItem], length: int) -> WorkQueue:
    """The queue handed to a chunk: `items`, zero-padded to `length`."""
    q = np.zeros((3, length), np.int32)
    if items:
      q[:, :len(items)] = np.array(items, np.int32).T
    put = lambda x: self._put(x, (None,))
    return WorkQueue(slot=put(q[0]), sample_index=put(q[1]), sample_id=put(q[2]),
                     count=jnp.int32(len(items)))

  def _count_chunk(self, events: Events, rows: int, prompt_keys: int, queue_left: bool) -> None:
    """A chunk's row-steps, FLOPs and tokens drawn (`EngineStats`). `prompt_keys`: the pool's
    slots x width (every slot is computed); `queue_left`: the chunk did not use up its queue."""
    st, steps = self.stats, self.ecfg.chunk_steps
    st.chunks += 1
    st.row_steps += rows * steps
    st.decode_flops += steps * step_flops(self.cfg, rows, prompt_keys + self.ecfg.max_new_tokens)
    started = events.start_sample >= 0
    drawn = int((events.token_sample >= 0).sum())
    st.decoded += drawn + int(started.sum())
    if queue_left:     # row-steps without a token drawn or a sample started and ended at once
      st.idle_while_queued += rows * steps - drawn - int(
          (started & (events.start_end != SampleEnd.CONTINUES)).sum())

  def _note_shape(self, key: tuple) -> None:
    if key not in self.compiled_shapes:
      self.compiled_shapes.add(key)
      log.debug("compiling %s (programs so far: %d)", key, len(self.compiled_shapes))

POOL_AXES = ("cache_heads", None, None, "head_dim")   # prompt slots are read by every row
# the prefill of one prompt: its batch of 1 is not split over the data-parallel axes
PREFILL_RULES = {**sharding_rules.DEFAULT_RULES, "batch": None, "cache_batch": None}


def _sample_keys(seed, problem_key_, j):
  """The key of sample j of a problem (vectorised over j / rows)."""
  base = jax.random.key(seed)
  return jax.vmap(lambda k, jj: jax.random.fold_in(jax.random.fold_in(base, k), jj))(
      jnp.broadcast_to(problem_key_, jnp.shape(j)), j)
