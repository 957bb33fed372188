"""attnlab: pure-function attention primitives, hard-attention estimators, toy seq2seq."""

from attnlab import masks, normalizers, scores
from attnlab.hard import HardAttentionOutput, HardMode, hard_attention
from attnlab.masks import causal_mask, combine_masks, local_mask, padding_mask
from attnlab.multihead import multi_head_hard_attention, multi_head_soft_attention
from attnlab.normalizers import softmax
from attnlab.scores import additive, dot, general, scaled_dot
from attnlab.soft import soft_attention

__all__ = [
    "HardAttentionOutput",
    "HardMode",
    "additive",
    "causal_mask",
    "combine_masks",
    "dot",
    "general",
    "hard_attention",
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
]
