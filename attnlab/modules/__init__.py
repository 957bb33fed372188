"""Flax Linen modules: attention layers and the RNN / Transformer seq2seq families."""

from __future__ import annotations

from attnlab.modules.attend import Attended, AttentionSpec, attend, resolve_spec
from attnlab.modules.attention import Attention, AttentionAux, MultiHeadAttention
from attnlab.modules.config import RNNConfig, TransformerConfig
from attnlab.modules.decoding import greedy_decode, lengths_from_eos
from attnlab.modules.kinds import (
  AttentionKind,
  Cell,
  EvalMode,
  Feedback,
  KeySource,
  PositionEmbedding,
  ScoreKind,
  ValueSource,
)
from attnlab.modules.outputs import AttentionRecord, Seq2SeqOutput
from attnlab.modules.rnn import RNNSeq2Seq
from attnlab.modules.transformer import TransformerSeq2Seq


def build_model(config: RNNConfig | TransformerConfig) -> RNNSeq2Seq | TransformerSeq2Seq:
  """The model of a config: :class:`RNNSeq2Seq` or :class:`TransformerSeq2Seq`."""
  if isinstance(config, RNNConfig):
    return RNNSeq2Seq(config)
  if isinstance(config, TransformerConfig):
    return TransformerSeq2Seq(config)
  raise TypeError(
    f"build_model needs an RNNConfig or a TransformerConfig, got {type(config).__name__}."
  )


__all__ = [
  "Attended",
  "Attention",
  "AttentionAux",
  "AttentionKind",
  "AttentionRecord",
  "AttentionSpec",
  "Cell",
  "EvalMode",
  "Feedback",
  "KeySource",
  "MultiHeadAttention",
  "PositionEmbedding",
  "RNNConfig",
  "RNNSeq2Seq",
  "ScoreKind",
  "Seq2SeqOutput",
  "TransformerConfig",
  "TransformerSeq2Seq",
  "ValueSource",
  "attend",
  "build_model",
  "greedy_decode",
  "lengths_from_eos",
  "resolve_spec",
]
