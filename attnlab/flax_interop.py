"""attnlab's attention behind Flax's ``attention_fn`` hook.

``flax.linen.MultiHeadDotProductAttention(attention_fn=attnlab.flax_attention_fn)`` (and
``flax.nnx.MultiHeadAttention``, whose contract adds ``is_causal``) then computes attention with
attnlab's per-head functions: one array back; float (``make_causal_mask``,
``make_attention_mask``) or bool masks; any number of batch dims, or none; Flax's dropout
arguments (``dropout_rng``, ``dropout_rate``, ``broadcast_dropout``, ``deterministic``)
honoured exactly as ``flax.linen.dot_product_attention`` does (the same keep-mask for the
same key); the weights sown into ``"intermediates"`` when Flax passes ``module``
(``sow_weights=True``). attnlab's options are keyword-only and bound with
``functools.partial``::

    attention_fn = functools.partial(attnlab.flax_attention_fn, normalizer=attnlab.sparsemax)
"""

from __future__ import annotations

import contextlib
import functools
import math
from typing import Any

import chex
import jax
import jax.numpy as jnp

from attnlab import hard as hard_lib
from attnlab import masks as masks_lib
from attnlab import multihead, normalizers, scores, soft
from attnlab.efficient import chunked as chunked_lib


def _matmul_precision(precision: Any):
  """A ``jax.default_matmul_precision`` context for Flax's ``precision`` argument."""
  if precision is None:
    return contextlib.nullcontext()
  if isinstance(precision, (tuple, list)) and len(set(precision)) == 1:
    precision = precision[0]
  if isinstance(precision, jax.lax.Precision):
    return jax.default_matmul_precision(precision.name.lower())
  if isinstance(precision, str):
    return jax.default_matmul_precision(precision)
  raise ValueError(
    f"precision={precision!r} is not supported by attnlab.flax_attention_fn; pass None, a "
    "jax.lax.Precision or its name."
  )


def _sow_collection(module: Any):
  """Where Flax's own attention sows: linen's ``"intermediates"``, nnx's ``Intermediate``."""
  import flax.linen

  if isinstance(module, flax.linen.Module):
    return "intermediates"
  from flax import nnx

  return nnx.Intermediate


def _collapse_batch(name: str, x, batch: tuple[int, ...]):
  """``[*batch', N|1, T|1, S|1]`` (rank <= len(batch) + 3, ``batch'`` broadcastable to
  ``batch``) -> ``[1 | prod(batch), N|1, T|1, S|1]`` without materialising broadcasts of
  the batch axes where it can avoid it."""
  if x is None:
    return None
  x = jnp.asarray(x)
  rank = len(batch) + 3
  if x.ndim > rank:
    raise ValueError(
      f"{name} of shape {x.shape} has more axes than [batch..., heads, q_len, kv_len] "
      f"(rank {rank} for these inputs)."
    )
  x = x.reshape((1,) * (rank - x.ndim) + x.shape)
  lead = x.shape[: len(batch)]
  if all(d == 1 for d in lead):
    return x.reshape((1,) + x.shape[len(batch) :])
  try:
    x = jnp.broadcast_to(x, batch + x.shape[len(batch) :])
  except ValueError:
    raise ValueError(
      f"{name} of shape {x.shape} does not broadcast to the batch axes {batch}."
    ) from None
  return x.reshape((math.prod(batch),) + x.shape[len(batch) :])


def flax_attention_fn(
  query: chex.Array,
  key: chex.Array,
  value: chex.Array,
  bias: chex.Array | None = None,
  mask: chex.Array | None = None,
  broadcast_dropout: bool = True,
  dropout_rng: chex.PRNGKey | None = None,
  dropout_rate: float = 0.0,
  deterministic: bool = False,
  dtype: Any = None,
  precision: Any = None,
  module: Any = None,
  force_fp32_for_softmax: bool = False,
  is_causal: bool = False,
  *,
  score_fn: soft.ScoreFn = scores.scaled_dot,
  normalizer: soft.Normalizer = normalizers.softmax,
  hard: str | hard_lib.HardMode | None = None,
  hard_key: chex.PRNGKey | None = None,
  chunked: bool = False,
) -> chex.Array:
  """``flax.linen.dot_product_attention``'s contract, computed by attnlab.

  Positional arguments and defaults are Flax's, so this is a valid ``attention_fn`` of
  ``flax.linen.MultiHeadDotProductAttention``; with the defaults it equals
  ``flax.linen.dot_product_attention`` (to float32 rounding), dropout included, except that
  **a query whose keys are all masked gets zeros** (Flax: the uniform average of all
  values). attnlab computes scores and softmax in float32 whatever ``dtype``.

  Args:
    query: ``[batch..., T, N, D]`` (any number of batch axes, also none).
    key: ``[batch..., S, N, D]``.
    value: ``[batch..., S, N, Dv]``.
    bias: optional additive score bias broadcastable to ``[batch..., N, T, S]``.
    mask: optional mask broadcastable to ``[batch..., N, T, S]``, bool or float
      (nonzero = may attend, as Flax's ``make_attention_mask`` produces).
    broadcast_dropout: one dropout keep-mask shared by the batch and head axes (Flax's
      default) instead of one per element.
    dropout_rng: PRNG key of the dropout mask (Flax passes its ``"dropout"`` stream).
    dropout_rate: attention-weight dropout rate.
    deterministic: no dropout when ``True``.
    dtype: dtype of the computation's inputs and output (default: their promoted type).
    precision: ``jax.lax.Precision`` of the matmuls (applied as
      ``jax.default_matmul_precision``).
    module: the calling module; when given (``sow_weights=True``) the weights
      ``[batch..., N, T, S]`` are sown as ``"attention_weights"`` (linen: in
      ``"intermediates"``; nnx: an ``nnx.Intermediate``), float32 with
      ``force_fp32_for_softmax``, else ``dtype``; for hard attention also
      ``"attention_index"`` and ``"attention_log_prob"`` ``[batch..., N, T]``.
    force_fp32_for_softmax: see ``module`` (the softmax itself is always float32 here).
    is_causal: also mask keys after the query's position (top-left aligned), as
      ``flax.nnx``'s ``dot_product_attention`` does.
    score_fn: attnlab option, the per-head score function ``(q [T, D], k [S, D]) ->
      [T, S]`` (e.g. ``attnlab.scaled_dot``, ``functools.partial(attnlab.general, w=w)``).
    normalizer: attnlab option, ``attnlab.softmax`` | ``attnlab.sparsemax`` |
      ``attnlab.entmax15`` or any normaliser.
    hard: attnlab option, ``"sample"`` or ``"argmax"``: hard attention (the value at one
      position per query and head, :func:`attnlab.hard_attention`; softmax scores only).
    hard_key: PRNG key for ``hard="sample"`` (bind it with ``functools.partial`` where the
      module is built, e.g. ``hard_key=self.make_rng("attention")``).
    chunked: attnlab option, :func:`attnlab.efficient.multi_head_chunked_attention` (exact,
      O(T) memory; scaled-dot softmax without bias or dropout).

  Returns:
    ``[batch..., T, N, Dv]`` in ``dtype``.

  References:
    Flax ``flax.linen.dot_product_attention``; Vaswani et al. 2017; Xu et al., "Show,
    Attend and Tell", ICML 2015 (hard attention).
  """
  if dtype is None:
    dtype = jnp.result_type(query, key, value)
  if not jnp.issubdtype(dtype, jnp.floating):
    raise ValueError(f"attnlab attention needs real floating inputs, got dtype {jnp.dtype(dtype)}.")
  query, key, value = (jnp.asarray(x, dtype) for x in (query, key, value))
  if not (query.ndim == key.ndim == value.ndim) or query.ndim < 3:
    raise ValueError(
      "query, key and value must be [batch..., T, N, D] with the same batch axes; got "
      f"shapes {query.shape}, {key.shape}, {value.shape}."
    )
  batch = query.shape[:-3]
  if key.shape[:-3] != batch or value.shape[:-1] != key.shape[:-1]:
    raise ValueError(
      f"query {query.shape}, key {key.shape}, value {value.shape} disagree: expected "
      "[batch..., T, N, D], [batch..., S, N, D], [batch..., S, N, Dv]."
    )
  flat = lambda x: x.reshape((math.prod(batch),) + x.shape[len(batch) :])
  q, k, v = flat(query), flat(key), flat(value)
  if mask is not None:
    mask = jnp.asarray(mask)
    mask = mask if mask.dtype == jnp.bool_ else mask != 0
  mask = _collapse_batch("mask", mask, batch)
  if is_causal:
    causal_1x1xTxS = masks_lib.causal_mask(query.shape[-3], key.shape[-3])[None, None]
    mask = masks_lib.combine_masks(mask, causal_1x1xTxS)
  bias = _collapse_batch("bias", bias, batch)
  keep = None
  if not deterministic and dropout_rate > 0.0:
    if dropout_rng is None:
      raise ValueError("dropout_rate > 0 and deterministic=False need a dropout_rng.")
    # Flax's draw, so the same key drops the same weights as flax.linen.dot_product_attention.
    weights_shape = batch + (query.shape[-2], query.shape[-3], key.shape[-3])
    shape = (1,) * (len(batch) + 1) + weights_shape[-2:] if broadcast_dropout else weights_shape
    keep = jax.random.bernoulli(dropout_rng, 1.0 - dropout_rate, shape)
    keep = _collapse_batch("dropout mask", keep, batch)
  rate = dropout_rate if keep is not None else 0.0

  hard_out = None
  with _matmul_precision(precision):
    if hard is not None:
      if bias is not None or keep is not None or normalizer is not normalizers.softmax:
        raise ValueError(
          "hard attention here takes softmax scores without bias or dropout; got "
          f"bias={bias is not None}, dropout={keep is not None}, normalizer={normalizer}."
        )
      hard_out = multihead.multi_head_hard_attention(
        hard_key, q, k, v, mask, score_fn=score_fn, mode=hard
      )
      context, weights = hard_out.context, hard_out.probs
    elif chunked:
      if (
        bias is not None
        or keep is not None
        or score_fn is not scores.scaled_dot
        or (normalizer is not normalizers.softmax)
      ):
        raise ValueError(
          "chunked=True computes scaled-dot softmax attention without bias or dropout."
        )
      context = chunked_lib.multi_head_chunked_attention(q, k, v, mask)[0]
      weights = None
      if module is not None:  # only to sow them: the plain form's weights
        weights = multihead.multi_head_soft_attention(q, k, v, mask)[1]
    else:
      context, weights = multihead.multi_head_soft_attention(
          q, k, v, mask, score_fn=score_fn, normalizer=normalizer, bias=bias,
          dropout_rate=rate, dropout_mask=keep,
      )  # fmt: skip
  if module is not None:
    unflat = lambda x: x.reshape(batch + x.shape[1:])
    sown = jnp.float32 if force_fp32_for_softmax else dtype
    sow = functools.partial(module.sow, _sow_collection(module))
    sow("attention_weights", unflat(weights).astype(sown))
    if hard_out is not None:
      sow("attention_index", unflat(hard_out.index))
      sow("attention_log_prob", unflat(hard_out.log_prob))
  return context.reshape(batch + context.shape[1:]).astype(dtype)
