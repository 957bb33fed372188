"""Greedy autoregressive decoding for evaluation, for both model families."""

from __future__ import annotations

from typing import Any

import chex
import flax.linen as nn
import jax.numpy as jnp

from attnlab.modules.kinds import EvalMode


def greedy_decode(
  model: nn.Module,
  params: Any,
  inputs_BxS: chex.Array,
  input_lengths_B: chex.Array,
  *,
  max_len: int,
  mode: EvalMode | str = EvalMode.ARGMAX,
  key: chex.PRNGKey | None = None,
) -> tuple[chex.Array, chex.Array]:
  """Free-running greedy decoding: the argmax token is fed back at every step.

  ``y_0 = BOS``; ``y_{t+1} = argmax_v p(v | y_≤t, x)`` with the attention of ``mode``
  (independent of the training kind): ``soft`` the expected context, ``argmax`` the most
  probable position, ``sample`` a sampled one (``key`` required). The loop is a scan of
  ``max_len`` steps; tokens after the first EOS are meaningless: mask them with
  :func:`lengths_from_eos`. A pure function: jit it with ``max_len`` and ``mode`` static,
  e.g. ``jax.jit(greedy_decode, static_argnames=("model", "max_len", "mode"))``.

  Args:
    model: an ``RNNSeq2Seq`` or ``TransformerSeq2Seq`` (any module with a ``greedy`` method).
    params: the model variables (``{"params": ...}``).
    inputs_BxS: source tokens.
    input_lengths_B: source lengths (padding is masked from attention).
    max_len: number of generated tokens ``T``.
    mode: an :class:`EvalMode`.
    key: PRNG key of the ``"attention"`` stream (sampling); teacher forcing with the same
      key draws the same positions at every step.

  Returns:
    ``(tokens [B, T] int32, attention_weights [B, T, S] float32)``.
  """
  mode = EvalMode.parse(mode)
  if not isinstance(max_len, int) or max_len < 1:
    raise ValueError(f"max_len must be a positive int, got {max_len!r}.")
  if mode is EvalMode.SAMPLE and key is None:
    raise ValueError("greedy_decode(mode='sample') needs a PRNG key.")
  rngs = {} if key is None else {"attention": key}
  # "cache": the Transformer's incremental decoding keeps its key/value caches there.
  outputs, _ = model.apply(
      params, inputs_BxS, input_lengths_B, max_len=max_len, mode=mode, rngs=rngs,
      method="greedy", mutable=["cache"],
  )  # fmt: skip
  return outputs


def lengths_from_eos(tokens_BxT: chex.Array, eos_id: int) -> chex.Array:
  """Length of each decoded sequence up to and including its first EOS.

  Args:
    tokens_BxT: decoded tokens.
    eos_id: the end-of-sequence token.

  Returns:
    ``[B]`` int32: ``1 + index of the first EOS``, or ``T`` when there is none.
  """
  chex.assert_rank(tokens_BxT, 2)
  is_eos_BxT = tokens_BxT == eos_id
  first_B = jnp.argmax(is_eos_BxT, axis=-1)
  return jnp.where(jnp.any(is_eos_BxT, axis=-1), first_B + 1, tokens_BxT.shape[1]).astype(jnp.int32)
