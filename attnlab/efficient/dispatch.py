"""``jax.nn.dot_product_attention``'s signature, attnlab's semantics, the implementation picked.

:func:`dot_product_attention` takes the arguments of ``jax.nn.dot_product_attention``
(``query, key, value, bias=None, mask=None, *, scale, is_causal, query_seq_lengths,
key_value_seq_lengths, local_window_size, implementation``; batched ``[B, T, N, H]`` or
unbatched ``[T, N, H]``; grouped K/V heads) and returns one array, so ``jax.jit`` and
``jax.vmap`` apply as to jax.nn's. Which implementation runs is a pure function of static
facts (:func:`choose_implementation`): the shapes, dtype and mask kind of the call, and the
:class:`DeviceFacts` of the device it runs on; :func:`dispatch_implementation` answers it for
a call without running it:

  * An NVIDIA GPU on which cuDNN's fused attention runs (:func:`cudnn_unsupported_reason`:
    CUDA, compute capability >= 8.0 (Ampere), cuDNN loaded), float16/bfloat16, head dim a
    multiple of 8 and <= 128 (<= 256 from compute capability 9.0, Hopper), no bias, no mask
    or causal only: ``jax.nn.dot_product_attention(implementation="cudnn")`` (fused flash
    kernel). ROCm, pre-Ampere cards and machines without cuDNN get attnlab's own forms
    instead of an error. With an arbitrary mask cuDNN could produce rows with no visible
    key, which jax.nn turns into a uniform average; attnlab's semantics (zeros) would be
    lost, so those go to attnlab. This is the one place in attnlab that picks code by device.
  * Otherwise attnlab's own: the plain vmapped :func:`attnlab.multi_head_soft_attention`
    for small problems or with a bias, :func:`multi_head_chunked_attention` (online
    softmax, O(T) memory, flash-style VJP, causal/window tiles skipped) for larger ones.

All implementations give the same result (to float32 rounding), including zero context for
queries with no visible key: the jax.nn paths are corrected for that when a mask could
produce one.

The device: the one that holds ``query`` when it is a concrete ``jax.Array`` (or a
``jax.ShapeDtypeStruct`` with a sharding); otherwise (numpy inputs, shapes alone, and tracers
inside ``jax.jit``, which carry no device) JAX's default device
(``jax.config.jax_default_device``, else the first device of the default backend), which is
where ``jit`` runs a computation whose inputs are not committed elsewhere.
"""

from __future__ import annotations

import dataclasses
import functools

import chex
import jax
import jax.numpy as jnp

from attnlab import masks as masks_lib
from attnlab import multihead, scores
from attnlab.efficient import chunked
from attnlab.enums import Choice

_CUDNN_DTYPES = ("bfloat16", "float16")
# cuDNN's fused (flash) attention: NVIDIA Ampere or newer; head dims up to 128 before Hopper
# and 256 from Hopper on (the limits jax.nn's cuDNN path checks,
# jax._src.cudnn.fused_attention_stablehlo.check_is_flash_attention).
CUDNN_MIN_COMPUTE_CAPABILITY = (8, 0)
_HOPPER = (9, 0)
# The plain form is chosen for up to PLAIN_MAX_KEYS keys, or while the B·H·Tq·Tk scores
# stay within PLAIN_MAX_SCORES elements (8 MiB of float32); the chunked kernel beyond.
# Measured on 2 CPU cores, forward+backward, 8 heads, dim 64 (soft / chunked time): B=4
# T=256 0.82, B=1 T=512 0.93 (both 2^21 scores), B=4 T=512 1.43, B=1 T=1024 1.70.
PLAIN_MAX_KEYS = 256
PLAIN_MAX_SCORES = 2**21


class Implementation(Choice):
  """Available implementations of :func:`dot_product_attention`."""

  CUDNN = "cudnn"  # jax.nn.dot_product_attention(implementation="cudnn"); GPU only.
  XLA = "xla"  # jax.nn.dot_product_attention(implementation="xla").
  SOFT = "soft"  # attnlab.multi_head_soft_attention (materialises the scores).
  CHUNKED = "chunked"  # attnlab.efficient.multi_head_chunked_attention (O(T) memory).


class MaskKind(Choice):
  """What constrains which keys a query sees."""

  NONE = "none"
  CAUSAL = "causal"  # is_causal only, top-left aligned.
  KEY_PADDING = "key_padding"  # a [B|1, 1, 1, S] mask or key lengths, maybe with causal.
  DENSE = "dense"  # any other mask or a local window, maybe with causal.


@dataclasses.dataclass(frozen=True)
class DeviceFacts:
  """What the choice needs to know about the device a call runs on (declared or read).

  Attributes:
    platform: ``"cpu"``, ``"cuda"`` (NVIDIA), ``"rocm"`` (AMD), ``"tpu"``, ...
    compute_capability: an NVIDIA GPU's ``(major, minor)``, e.g. ``(8, 0)`` for an A100,
      ``(9, 0)`` for an H100; None elsewhere (or unknown).
    cudnn_version: the loaded cuDNN's version as cuDNN reports it (e.g. 90300 for 9.3.0);
      None when no cuDNN is loaded.
  """

  platform: str
  compute_capability: tuple[int, int] | None = None
  cudnn_version: int | None = None

  @classmethod
  def of(cls, device: jax.Device) -> DeviceFacts:
    """The facts of a JAX device (read once per device: cached)."""
    return _facts_of(device)


@functools.cache
def _facts_of(device: jax.Device) -> DeviceFacts:
  platform = device.platform.lower()
  if platform not in ("gpu", "cuda", "rocm"):
    return DeviceFacts(platform)
  capability = str(getattr(device, "compute_capability", "") or "")
  try:
    version = str(device.client.platform_version).lower()
  except Exception:  # noqa: BLE001 - an unusual client: decide from the capability alone.
    version = ""
  if "rocm" in version or capability.startswith("gfx") or platform == "rocm":
    return DeviceFacts("rocm")
  return DeviceFacts("cuda", parse_compute_capability(capability), _cudnn_version())


def parse_compute_capability(text: str) -> tuple[int, int] | None:
  """``"8.6"`` -> ``(8, 6)``; None for anything else (e.g. ``""``, ``"gfx90a"``)."""
  major, _, minor = text.strip().partition(".")
  return (int(major), int(minor or 0)) if major.isdigit() and (minor or "0").isdigit() else None


def _cudnn_version() -> int | None:
  """The loaded cuDNN's version, or None (no CUDA plugin, or cuDNN not loadable)."""
  try:
    from jax._src.lib import cuda_versions  # What jax.nn's cuDNN path itself asks.

    return None if cuda_versions is None else int(cuda_versions.cudnn_get_version())
  except Exception:  # noqa: BLE001 - no cuDNN is an answer, not an error.
    return None


def cudnn_unsupported_reason(
  device: DeviceFacts, dtype: str, head_dim: int, value_dim: int
) -> str | None:
  """Why cuDNN's fused attention cannot run these operands on ``device`` (None: it can).

  Args:
    device: the device's facts.
    dtype: the dtype name of query, key and value.
    head_dim: ``H`` of query and key.
    value_dim: ``Hv`` of value.

  Returns:
    None, or one phrase naming the first unmet requirement.
  """
  if device.platform != "cuda":
    return f"platform {device.platform!r} is not CUDA (NVIDIA)"
  capability = device.compute_capability
  if capability is None or capability < CUDNN_MIN_COMPUTE_CAPABILITY:
    shown = "unknown" if capability is None else ".".join(map(str, capability))
    return f"compute capability {shown} < 8.0 (cuDNN fused attention needs Ampere or newer)"
  if device.cudnn_version is None:
    return "no cuDNN is loaded"
  if capability == (10, 3) and device.cudnn_version < 91100:
    return "compute capability 10.3 needs cuDNN >= 9.11"
  if dtype not in _CUDNN_DTYPES:
    return f"dtype {dtype} is not float16 or bfloat16"
  max_dim = 256 if capability >= _HOPPER else 128
  if head_dim != value_dim or head_dim > max_dim or head_dim % 8:
    return f"head dims {head_dim}/{value_dim} are not equal, <= {max_dim} and multiples of 8"
  return None


@dataclasses.dataclass(frozen=True)
class AttentionProblem:
  """The static facts the choice depends on."""

  device: DeviceFacts  # where the call runs
  dtype: str  # dtype name of q/k/v, e.g. "float32"
  batch: int
  q_len: int
  k_len: int
  heads: int
  head_dim: int
  value_dim: int
  mask_kind: MaskKind
  has_bias: bool = False
  kv_heads: int | None = None  # None: as many as query heads


def mask_kind(mask: chex.Array | None, causal: bool) -> MaskKind:
  """Classifies a rank-4 ``[B|1, H|1, T|1, S]`` mask (or ``None``) plus ``causal``."""
  if mask is None:
    return MaskKind.CAUSAL if causal else MaskKind.NONE
  return MaskKind.KEY_PADDING if tuple(mask.shape[1:3]) == (1, 1) else MaskKind.DENSE


def choose_implementation(problem: AttentionProblem) -> Implementation:
  """Picks the fastest implementation that keeps attnlab's semantics; pure and static.

  Args:
    problem: device, dtype, shapes, bias and mask kind of the call.

  Returns:
    CUDNN where cuDNN's fused attention runs these operands on the device
    (:func:`cudnn_unsupported_reason` gives None: an NVIDIA GPU of compute capability >= 8.0
    with cuDNN, float16/bfloat16, equal head dims that are multiples of 8 and <= 128, or
    <= 256 from compute capability 9.0), with no bias and no mask or causal only. Otherwise
    SOFT (the plain vmapped form) with a bias, for ``Tk <= PLAIN_MAX_KEYS`` or up to
    ``PLAIN_MAX_SCORES`` score elements ``B·H·Tq·Tk``, and CHUNKED beyond: on CPU it was
    measured faster than the plain form from there on, needs O(T) memory and skips causal
    and local-window tiles.
  """
  if (
    not problem.has_bias
    and problem.mask_kind in (MaskKind.NONE, MaskKind.CAUSAL)
    and cudnn_unsupported_reason(problem.device, problem.dtype, problem.head_dim, problem.value_dim)
    is None
  ):
    return Implementation.CUDNN
  scores = problem.batch * problem.heads * problem.q_len * problem.k_len
  if problem.has_bias or problem.k_len <= PLAIN_MAX_KEYS or scores <= PLAIN_MAX_SCORES:
    return Implementation.SOFT
  return Implementation.CHUNKED


@dataclasses.dataclass(frozen=True)
class _Call:
  """One call's arguments brought to rank 4 and checked (arrays plus static options)."""

  query: chex.Array  # [B, T, N, H]
  key: chex.Array  # [B, S, K, H]
  value: chex.Array  # [B, S, K, Hv]
  bias: chex.Array | None  # [B|1, N|1, T|1, S|1]
  mask: chex.Array | None  # bool [B|1, N|1, T|1, S|1], key lengths folded in
  query_valid: chex.Array | None  # bool [B, T] from query_seq_lengths
  scale: float | None
  causal: bool
  window: tuple[int, int] | None
  unbatched: bool

  @property
  def groups(self) -> int:
    return self.query.shape[2] // self.key.shape[2]

  def problem(self, device: DeviceFacts) -> AttentionProblem:
    batch, q_len, heads, head_dim = self.query.shape
    window_or_dense = self.window is not None or (
      self.mask is not None and mask_kind(self.mask, False) is MaskKind.DENSE
    )
    kind = MaskKind.DENSE if window_or_dense else mask_kind(self.mask, self.causal)
    return AttentionProblem(
      device=device,
      dtype=jnp.dtype(self.query.dtype).name,
      batch=batch,
      q_len=q_len,
      k_len=self.key.shape[1],
      heads=heads,
      head_dim=head_dim,
      value_dim=self.value.shape[-1],
      mask_kind=kind,
      has_bias=self.bias is not None,
      kv_heads=self.key.shape[2],
    )


def _to_rank4(name: str, x, *, bool_only: bool = False) -> chex.Array | None:
  """A bias or mask of rank <= 4 left-padded to rank 4 (as jax.nn does), dtype checked."""
  if x is None:
    return None
  x = jnp.asarray(x)
  if bool_only and x.dtype != jnp.bool_:
    raise TypeError(
      f"attention masks must be boolean (True = attend), got dtype {x.dtype}; pass an "
      "additive float mask as `bias`."
    )
  if x.ndim > 4:
    raise ValueError(f"{name} must have rank <= 4 ([B, N, T, S]), got shape {x.shape}.")
  return x.reshape((1,) * (4 - x.ndim) + x.shape)


def _seq_lengths(name: str, lengths, batch: int) -> chex.Array | None:
  if lengths is None:
    return None
  lengths = jnp.asarray(lengths)
  if lengths.shape != (batch,) or not jnp.issubdtype(lengths.dtype, jnp.integer):
    raise ValueError(
      f"{name} must be an int array [B] = [{batch}], got {lengths.dtype}{lengths.shape}."
    )
  return lengths


def _prepare(query, key, value, bias, mask, scale, is_causal, q_lengths, kv_lengths, window):
  query, key, value = jnp.asarray(query), jnp.asarray(key), jnp.asarray(value)
  ranks = {query.ndim, key.ndim, value.ndim}
  if ranks not in ({3}, {4}):
    raise ValueError(
      "query, key and value must all be [B, T, N, H] (or all unbatched [T, N, H]); got "
      f"shapes {query.shape}, {key.shape}, {value.shape}."
    )
  unbatched = ranks == {3}
  if unbatched:
    query, key, value = query[None], key[None], value[None]
  batch, _, heads, head_dim = query.shape
  if (
    key.shape[0] != batch
    or key.shape[3] != head_dim
    or value.shape[:3] != key.shape[:3]
    or heads % key.shape[2]
  ):
    raise ValueError(
      f"query {query.shape}, key {key.shape}, value {value.shape} disagree: expected "
      "query [B, T, N, H], key [B, S, K, H], value [B, S, K, Hv] with N a multiple of K "
      "(K < N: grouped-query attention)."
    )
  bias, mask = _to_rank4("bias", bias), _to_rank4("mask", mask, bool_only=True)
  kv_lengths = _seq_lengths("key_value_seq_lengths", kv_lengths, batch)
  q_lengths = _seq_lengths("query_seq_lengths", q_lengths, batch)
  if kv_lengths is not None:
    key_valid = masks_lib.padding_mask(kv_lengths, key.shape[1])[:, None, None, :]
    mask = masks_lib.combine_masks(mask, key_valid)
  query_valid = None if q_lengths is None else masks_lib.padding_mask(q_lengths, query.shape[1])
  expected = (batch, heads, query.shape[1], key.shape[1])
  for name, x in (("bias", bias), ("mask", mask)):
    if x is not None and any(m not in (1, e) for m, e in zip(x.shape, expected, strict=True)):
      raise ValueError(
        f"{name} of shape {x.shape} does not broadcast to [B, N, T, S] = {list(expected)}."
      )
  return _Call(
    query=query,
    key=key,
    value=value,
    bias=bias,
    mask=mask,
    query_valid=query_valid,
    scale=None if scale is None else float(scale),
    causal=bool(is_causal),
    window=chunked.parse_window(window),
    unbatched=unbatched,
  )


def _default_device() -> jax.Device:
  """Where ``jit`` runs uncommitted inputs: ``jax_default_device``, else the first device of
  the default backend."""
  default = jax.config.jax_default_device
  if isinstance(default, str):  # A platform name.
    return jax.devices(default)[0]
  return default if default is not None else jax.devices()[0]


def target_device(query) -> DeviceFacts:
  """The facts of the device a call with this ``query`` runs on (see the module docstring).

  Args:
    query: a concrete ``jax.Array`` (its device), a ``jax.ShapeDtypeStruct`` (the device of
      its sharding, if it has one), or anything else (a tracer, numpy): the default device.
  """
  devices = None
  if isinstance(query, jax.Array) and not isinstance(query, jax.core.Tracer):
    devices = query.devices()
  elif isinstance(query, jax.ShapeDtypeStruct) and getattr(query, "sharding", None) is not None:
    devices = getattr(query.sharding, "device_set", None)
  if devices:
    return DeviceFacts.of(min(devices, key=lambda d: d.id))
  return DeviceFacts.of(_default_device())


def _choice(call: _Call, implementation, device: DeviceFacts) -> Implementation:
  problem = call.problem(device)
  if implementation is None:
    return choose_implementation(problem)
  choice = Implementation.parse(implementation)
  if choice is Implementation.CUDNN:
    reason = cudnn_unsupported_reason(device, problem.dtype, problem.head_dim, problem.value_dim)
    if reason is None and problem.mask_kind not in (MaskKind.NONE, MaskKind.CAUSAL):
      reason = f"mask kind {problem.mask_kind.value!r} is not none or causal"
    if reason is not None:
      raise ValueError(f"implementation='cudnn' cannot run here: {reason} (device {device}).")
  return choice


def dispatch_implementation(
  query: chex.Array,
  key: chex.Array,
  value: chex.Array,
  bias: chex.Array | None = None,
  mask: chex.Array | None = None,
  *,
  scale: float | None = None,
  is_causal: bool = False,
  query_seq_lengths: chex.Array | None = None,
  key_value_seq_lengths: chex.Array | None = None,
  local_window_size: int | tuple[int, int] | None = None,
  implementation: str | Implementation | None = None,
  device: jax.Device | DeviceFacts | None = None,
) -> Implementation:
  """The :class:`Implementation` :func:`dot_product_attention` runs for these arguments.

  Pure and cheap: only shapes, dtypes, options and the device's facts are looked at (arrays
  may be ``jax.ShapeDtypeStruct``; nothing is computed), so it can be asked before or outside
  ``jit``, or for another device.

  Args:
    query: as in :func:`dot_product_attention`; so are ``key``, ``value``, ``bias``,
      ``mask``, ``scale``, ``is_causal``, ``query_seq_lengths``, ``key_value_seq_lengths``,
      ``local_window_size`` and ``implementation``.
    device: the device to decide for: a ``jax.Device`` or declared :class:`DeviceFacts`
      (e.g. ``DeviceFacts("cuda", (9, 0), 90300)``); default: the device
      :func:`dot_product_attention` would run on (:func:`target_device`).

  Returns:
    The implementation (after validating a forced one).
  """
  if device is None:
    device = target_device(query)
  elif not isinstance(device, DeviceFacts):
    device = DeviceFacts.of(device)
  choices = []

  def probe(query, key, value, bias, mask, query_seq_lengths, key_value_seq_lengths):
    call = _prepare(
      query, key, value, bias, mask, scale, is_causal, query_seq_lengths,
      key_value_seq_lengths, local_window_size,
    )  # fmt: skip
    choices.append(_choice(call, implementation, device))

  # Abstract evaluation: arrays, tracers and jax.ShapeDtypeStruct all work; nothing runs.
  jax.eval_shape(probe, query, key, value, bias, mask, query_seq_lengths, key_value_seq_lengths)
  return choices[0]


def _over_groups(fn, call: _Call, mask):
  """``fn(q [B, T, K, H], k, v, mask, bias) -> [B, T, K, Hv]`` for each of the ``G = N / K``
  query heads sharing a K/V head (query head ``n`` uses K/V head ``n // G``, as jax.nn)."""
  groups = call.groups
  if groups == 1:
    return fn(call.query, call.key, call.value, mask, call.bias)
  batch, q_len, heads, head_dim = call.query.shape
  kv_heads = heads // groups

  def split(x):  # [B|1, N|1, T|1, S|1] -> ([B|1, K, G, T|1, S|1], 2) or (x, None)
    if x is None or x.shape[1] == 1:
      return x, None
    return x.reshape((x.shape[0], kv_heads, groups) + x.shape[2:]), 2

  (mask, mask_axis), (bias, bias_axis) = split(mask), split(call.bias)
  q_BxTxKxGxH = call.query.reshape(batch, q_len, kv_heads, groups, head_dim)
  out = jax.vmap(fn, in_axes=(3, None, None, mask_axis, bias_axis), out_axes=3)(
    q_BxTxKxGxH, call.key, call.value, mask, bias
  )
  return out.reshape(batch, q_len, heads, out.shape[-1])


def _structural_mask(call: _Call) -> chex.Array | None:
  """``mask`` AND causal AND window as one rank-4 bool mask (for the plain form)."""
  q_len, k_len = call.query.shape[1], call.key.shape[1]
  extra = None
  if call.causal:
    extra = masks_lib.causal_mask(q_len, k_len)
  if call.window is not None:
    left, right = call.window
    extra = masks_lib.combine_masks(
      extra, masks_lib.local_mask(q_len, k_len, left=left, right=right)
    )
  return masks_lib.combine_masks(call.mask, None if extra is None else extra[None, None])


def _run_jax_nn(call: _Call, implementation: str):
  """jax.nn.dot_product_attention with attnlab's zero output for queries that see no key."""
  q_lengths = None
  if call.query_valid is not None:
    q_lengths = jnp.sum(call.query_valid, axis=-1).astype(jnp.int32)
  context = jax.nn.dot_product_attention(
    call.query, call.key, call.value, call.bias, call.mask, scale=call.scale,
    is_causal=call.causal, query_seq_lengths=q_lengths, local_window_size=call.window,
    implementation=implementation,
  )  # fmt: skip
  if call.mask is None and call.window is None:
    return context  # no key masked, or top-left causal: every query sees key 0
  nonempty_BxNxT = jnp.any(_structural_mask(call), axis=-1)
  batch, q_len, heads, _ = context.shape
  nonempty_BxTxN = jnp.broadcast_to(nonempty_BxNxT.transpose(0, 2, 1), (batch, q_len, heads))
  return jnp.where(nonempty_BxTxN[..., None], context, jnp.zeros((), context.dtype))


def dot_product_attention(
  query: chex.Array,
  key: chex.Array,
  value: chex.Array,
  bias: chex.Array | None = None,
  mask: chex.Array | None = None,
  *,
  scale: float | None = None,
  is_causal: bool = False,
  query_seq_lengths: chex.Array | None = None,
  key_value_seq_lengths: chex.Array | None = None,
  local_window_size: int | tuple[int, int] | None = None,
  implementation: str | Implementation | None = None,
) -> chex.Array:
  """Scaled-dot softmax attention with the signature of ``jax.nn.dot_product_attention``.

  ``out = softmax(scale · q kᵀ + bias, masked) v`` per batch element and head, through the
  implementation :func:`dispatch_implementation` names. A drop-in replacement for
  ``jax.nn.dot_product_attention`` (same arguments, positions and keywords; one array back,
  so ``jax.jit`` and ``jax.vmap`` work), with one documented difference: **a query that
  sees no key (every key masked, key length 0, outside its window) gets a zero output and
  zero gradient**, where jax.nn returns the uniform average of all values. Queries beyond
  ``query_seq_lengths`` are zero in both. ``return_residual`` is not supported.

  Args:
    query: ``[B, T, N, H]`` or unbatched ``[T, N, H]``.
    key: ``[B, S, K, H]`` (``[S, K, H]``); ``K < N`` (``N`` a multiple of ``K``) is
      grouped-query attention: query head ``n`` uses K/V head ``n // (N / K)``.
    value: ``[B, S, K, Hv]`` (``[S, K, Hv]``).
    bias: optional additive logits bias of rank <= 4, broadcastable to ``[B, N, T, S]``
      (lower ranks are left-padded, as jax.nn does).
    mask: optional bool mask of rank <= 4 broadcastable to ``[B, N, T, S]``; ``True`` =
      may attend. A float (additive) mask is an error: pass it as ``bias``.
    scale: logits scale; default ``1 / sqrt(H)``.
    is_causal: query ``i`` sees keys ``j <= i`` (top-left aligned, as jax.nn).
    query_seq_lengths: int ``[B]``; outputs of queries ``t >= length`` are zero.
    key_value_seq_lengths: int ``[B]``; keys ``s >= length`` are masked.
    local_window_size: ``(left, right)`` or ``w`` for ``(w, w)``: query ``i`` sees keys
      ``i - left <= j <= i + right``.
    implementation: ``None`` (choose), ``"xla"`` or ``"cudnn"`` (jax.nn's, corrected for
      queries with no visible key), or attnlab's ``"soft"`` / ``"chunked"``.

  Returns:
    ``[B, T, N, Hv]`` (``[T, N, Hv]`` for unbatched inputs) in ``value``'s dtype.

  References:
    Vaswani et al. 2017; Ainslie et al., "GQA", EMNLP 2023; Dao et al., "FlashAttention",
    NeurIPS 2022.
  """
  device = target_device(query)
  call = _prepare(
    query, key, value, bias, mask, scale, is_causal, query_seq_lengths,
    key_value_seq_lengths, local_window_size,
  )  # fmt: skip
  choice = _choice(call, implementation, device)
  if choice in (Implementation.CUDNN, Implementation.XLA):
    out = _run_jax_nn(call, choice.value)
  elif choice is Implementation.CHUNKED:

    def chunked_fn(q, k, v, mask, bias):
      del bias  # the chunked kernel takes no bias: the choice excludes it
      return chunked.multi_head_chunked_attention(
        q, k, v, mask, causal=call.causal, local_window_size=call.window, scale=call.scale
      )[0]

    if call.bias is not None:
      raise ValueError("implementation='chunked' does not take a bias; use 'soft' or 'xla'.")
    out = _over_groups(chunked_fn, call, call.mask)
  else:
    score_fn = functools.partial(scores.scaled_dot, scale=call.scale)

    def soft_fn(q, k, v, mask, bias):
      return multihead.multi_head_soft_attention(q, k, v, mask, score_fn=score_fn, bias=bias)[0]

    out = _over_groups(soft_fn, call, _structural_mask(call))
  if call.query_valid is not None:
    out = jnp.where(call.query_valid[:, :, None, None], out, jnp.zeros((), out.dtype))
  return out[0] if call.unbatched else out
