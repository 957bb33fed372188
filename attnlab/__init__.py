"""attnlab: pure-function attention primitives, hard-attention estimators, toy seq2seq.

Layers, from the bottom up:
  * :mod:`attnlab.scores`, :mod:`attnlab.normalizers`, :mod:`attnlab.sparse_normalizers`,
    :mod:`attnlab.masks`: per-head building blocks.
  * :func:`soft_attention`, :func:`hard_attention` (one head, one example) and their
    batched multi-head forms; :mod:`attnlab.efficient` (chunked, linear, local, dispatch and
    the jax.nn-compatible :func:`dot_product_attention`); :func:`flax_attention_fn` for
    Flax's ``attention_fn`` hook.
  * :mod:`attnlab.estimators`: score-function estimators, baselines, enumeration.
  * :mod:`attnlab.modules` (Flax Linen), :mod:`attnlab.tasks`, :mod:`attnlab.metrics`.
  * :mod:`attnlab.training` (config, objectives, step, loop, checkpoints, run directory) and
    :mod:`attnlab.sweep` (plan, run, table, plots): the experiment machinery, imported on use.
"""

from attnlab import efficient, estimators, masks, normalizers, scores, sparse_normalizers
from attnlab.efficient import (
  chunked_soft_attention,
  dot_product_attention,
  linear_attention,
  local_attention,
)
from attnlab.flax_interop import flax_attention_fn
from attnlab.hard import HardAttentionOutput, HardMode, hard_attention
from attnlab.masks import causal_mask, combine_masks, local_mask, padding_mask
from attnlab.multihead import multi_head_hard_attention, multi_head_soft_attention
from attnlab.normalizers import softmax
from attnlab.scores import additive, dot, general, scaled_dot
from attnlab.soft import soft_attention
from attnlab.sparse_normalizers import entmax15, sparsemax

__all__ = [
  "HardAttentionOutput",
  "HardMode",
  "additive",
  "causal_mask",
  "chunked_soft_attention",
  "combine_masks",
  "dot",
  "dot_product_attention",
  "efficient",
  "entmax15",
  "estimators",
  "flax_attention_fn",
  "general",
  "hard_attention",
  "linear_attention",
  "local_attention",
  "local_mask",
  "masks",
  "multi_head_hard_attention",
  "multi_head_soft_attention",
  "normalizers",
  "padding_mask",
  "scaled_dot",
  "scores",
  "soft_attention",
  "softmax",
  "sparse_normalizers",
  "sparsemax",
]
