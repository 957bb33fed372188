"""What a seq2seq model returns: the contract between models, objectives and training.

Every attention choice a decoder makes is returned explicitly (no ``sow``), so a loss can
use it. Shapes: ``B`` batch, ``T`` target steps, ``S`` source positions, ``V`` vocabulary.
"""

from __future__ import annotations

from typing import NamedTuple

import chex


class AttentionRecord(NamedTuple):
  """The decoder's cross-attention at every target step.

  Attributes:
    weights: ``[B, T, S]`` float32 distribution over source positions (the normalised
      weights for soft/sparse modes, the sampling probabilities for hard/gumbel modes).
      For multi-head models: the mean over heads of the last cross-attention layer.
    index: ``[B, T]`` int32 chosen position (hard modes), else ``None``.
    log_prob: ``[B, T]`` float32 log-probability of all choices made at step ``t``
      (summed over heads/layers when there are several), differentiable; hard modes only.
    entropy: ``[B, T]`` float32 entropy of the attention distribution (summed likewise).
    head_weights: ``[B, L, H, T, S]`` float32 distribution of every cross-attention layer
      ``L`` and head ``H``, for multi-head models (the Transformer); else ``None``.
  """

  weights: chex.Array
  index: chex.Array | None
  log_prob: chex.Array | None
  entropy: chex.Array
  head_weights: chex.Array | None = None


class Seq2SeqOutput(NamedTuple):
  """Teacher-forced decoder output.

  Attributes:
    logits: ``[B, T, V]`` next-token logits computed with the context of the model's
      attention mode (expected context for soft, the sampled value for hard, ...).
    attention: :class:`AttentionRecord`.
    soft_logits: ``[B, T, V]`` logits with the expected (soft) context under the same
      decoder states, for hard modes (soft-attention baseline, expectation mixing); else
      ``None``.
    position_logits: ``[B, T, S, V]`` logits with the value at every source position,
      when enumeration was requested and is exact (single-head RNN decoder whose feedback
      does not depend on the sampled position); else ``None``.
    baseline: ``[B, T]`` learned-baseline prediction (value head), when the model has one.
    posterior_weights: ``[B, T, S]`` float32 variational posterior ``q(z_t | x, y)`` (0 at
      masked positions), when the targets were given to a model with an inference network;
      else ``None``.
    sample_index: ``[K, B, T]`` int32 positions drawn from the posterior (or, without one,
      from the attention distribution) when ``num_samples=K`` was requested; else ``None``.
    sample_logits: ``[K, B, T, V]`` logits with the value at each drawn position, under the
      same decoder states (the decoder is run once for all ``K``); else ``None``.
  """

  logits: chex.Array
  attention: AttentionRecord
  soft_logits: chex.Array | None = None
  position_logits: chex.Array | None = None
  baseline: chex.Array | None = None
  posterior_weights: chex.Array | None = None
  sample_index: chex.Array | None = None
  sample_logits: chex.Array | None = None
