"""Efficient attention: chunked exact softmax, linear and local attention, and dispatch.

Per-head functions take ``(q [Tq, D], k [Tk, D], v [Tk, Dv], mask=None, *, ...)`` and return
``(context [Tq, Dv], per-query log-normaliser [Tq])``; the ``multi_head_*`` wrappers vmap
them over ``[B, T, H, D]`` inputs as :mod:`attnlab.multihead` does.
"""

from attnlab.efficient.chunked import chunked_soft_attention, multi_head_chunked_attention
from attnlab.efficient.dispatch import (
  AttentionProblem,
  DeviceFacts,
  Implementation,
  MaskKind,
  choose_implementation,
  cudnn_unsupported_reason,
  dispatch_implementation,
  dot_product_attention,
  target_device,
)
from attnlab.efficient.linear import (
  elu_plus_one,
  linear_attention,
  linear_attention_reference,
  multi_head_linear_attention,
)
from attnlab.efficient.local import local_attention, multi_head_local_attention

__all__ = [
  "AttentionProblem",
  "DeviceFacts",
  "Implementation",
  "MaskKind",
  "choose_implementation",
  "chunked_soft_attention",
  "cudnn_unsupported_reason",
  "dispatch_implementation",
  "dot_product_attention",
  "elu_plus_one",
  "linear_attention",
  "linear_attention_reference",
  "local_attention",
  "multi_head_chunked_attention",
  "multi_head_linear_attention",
  "multi_head_local_attention",
  "target_device",
]
