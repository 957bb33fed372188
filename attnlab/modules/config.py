"""Frozen model configurations; string fields are parsed into enums on construction."""

from __future__ import annotations

import dataclasses

from attnlab.modules.kinds import (
  AttentionKind,
  Cell,
  Feedback,
  KeySource,
  PositionEmbedding,
  ScoreKind,
  ValueSource,
)
from attnlab.tasks.base import BOS, EOS


def _parse_fields(config, enums: dict) -> None:
  for field, cls in enums.items():
    object.__setattr__(config, field, cls.parse(getattr(config, field)))


def _check_positive(config, names: tuple[str, ...]) -> None:
  for name in names:
    value = getattr(config, name)
    if not isinstance(value, int) or value < 1:
      raise ValueError(f"{type(config).__name__}.{name} must be a positive int, got {value!r}.")


def _check_common(config) -> None:
  if isinstance(config.grid_width, bool) or not isinstance(config.grid_width, int):
    raise ValueError(f"grid_width must be an int >= 0, got {config.grid_width!r}.")
  if config.position_embedding is PositionEmbedding.TWO_D and config.grid_width < 1:
    raise ValueError(
      f"position_embedding='2d' needs the grid's width (grid_width >= 1, from a grid task "
      f"such as 'localize'), got grid_width={config.grid_width}."
    )
  if config.gumbel_temperature <= 0:
    raise ValueError(f"gumbel_temperature must be > 0, got {config.gumbel_temperature}.")
  for name in ("bos_id", "eos_id"):
    if not 0 <= getattr(config, name) < config.vocab_size:
      raise ValueError(f"{name}={getattr(config, name)} is outside vocab_size={config.vocab_size}.")


@dataclasses.dataclass(frozen=True)
class RNNConfig:
  """RNN encoder-decoder with attention (Bahdanau et al. 2015; Luong et al. 2015).

  Attributes:
    vocab_size: ``V`` (source and target share the vocabulary; PAD=0, BOS=1, EOS=2).
    embed_dim: token and position embedding size ``E`` (the size of local values/keys).
    encoder_dim: hidden size of each direction of the bidirectional encoder.
    hidden_dim: decoder hidden size ``H`` (also the readout size).
    cell: ``"gru"`` or ``"lstm"`` (encoder and decoder).
    attention: training :class:`AttentionKind`.
    score: :class:`ScoreKind`; ``dot``/``scaled_dot`` project the keys to ``H`` once.
    additive_dim: ``A`` of the additive score.
    feedback: :class:`Feedback`: what the next decoder input receives.
    key_source: :class:`KeySource`.
    value_source: :class:`ValueSource` (see the caveat in :class:`RNNSeq2Seq`).
    gumbel_temperature: Gumbel-softmax temperature (kind ``"gumbel"``).
    straight_through: straight-through Gumbel-softmax.
    learned_baseline: add a value head on the stop-gradient decoder state.
    posterior: add the inference network of variational attention (Deng et al. 2018):
      ``q(z_t | x, y)`` from a bidirectional RNN over the whole target whose state at step
      ``t`` scores the source keys with a score of the same family as the prior's. Used in
      training only; evaluation and greedy decoding use the prior (the attention).
    init_decoder_from_source: initialise the decoder state from the mean key (off by
      default: it lets the decoder bypass attention).
    init_decoder_from_length: add an embedding of the source length (a count, no symbol)
      to the initial decoder state. Without it a decoder that feeds back nothing cannot
      know where the target ends except from the one value it attends.
    max_source_len: number of learned source position embeddings (with
      ``position_embedding="2d"``: of row embeddings).
    position_embedding: :class:`PositionEmbedding`: ``"1d"`` learns one embedding per
      flattened position; ``"2d"`` one per row and one per column of the task's grid,
      added (:func:`attnlab.tasks.grid_coordinates`).
    grid_width: columns of the task's grid (derived from the task; 0 for sequences).
    unroll: time steps per loop iteration of the encoder and decoder scans (``unroll`` of
      :func:`jax.lax.scan`); 0 unrolls them fully. The same model either way. Measured on a
      2-core CPU (the comparison's model): alone, full unrolling cuts a sort training step
      by 40% (24.5 -> 14.5 ms); with two processes sharing the cores it cuts 30% on sort
      (33 -> 22 ms) but adds 40% on recall (17 -> 24 ms), and it doubles compile time. In
      the comparison's own sweep (sort x 4 methods x 3 seeds one after another, 300 steps,
      2 workers) it lost outright: 99.4 s of training and 134.8 s of compiling against
      75.4 s and 74.4 s. Hence 1 by default and in the comparison.
    bos_id: first decoder input of greedy decoding.
    eos_id: end-of-sequence token.
  """

  vocab_size: int
  embed_dim: int = 64
  encoder_dim: int = 64
  hidden_dim: int = 128
  cell: Cell | str = Cell.GRU
  attention: AttentionKind | str = AttentionKind.SOFT
  score: ScoreKind | str = ScoreKind.GENERAL
  additive_dim: int = 64
  feedback: Feedback | str = Feedback.NONE
  key_source: KeySource | str = KeySource.BIRNN
  value_source: ValueSource | str = ValueSource.TOKEN
  gumbel_temperature: float = 1.0
  straight_through: bool = False
  learned_baseline: bool = False
  posterior: bool = False
  init_decoder_from_source: bool = False
  init_decoder_from_length: bool = True
  max_source_len: int = 64
  position_embedding: PositionEmbedding | str = PositionEmbedding.ONE_D
  grid_width: int = 0
  unroll: int = 1
  bos_id: int = BOS
  eos_id: int = EOS

  def __post_init__(self):
    _parse_fields(
      self,
      {
        "cell": Cell,
        "attention": AttentionKind,
        "score": ScoreKind,
        "feedback": Feedback,
        "key_source": KeySource,
        "value_source": ValueSource,
        "position_embedding": PositionEmbedding,
      },
    )
    _check_positive(
      self,
      ("vocab_size", "embed_dim", "encoder_dim", "hidden_dim", "additive_dim", "max_source_len"),
    )
    if isinstance(self.unroll, bool) or not isinstance(self.unroll, int) or self.unroll < 0:
      raise ValueError(
        f"RNNConfig.unroll must be an int >= 0 (0 unrolls fully), got {self.unroll!r}."
      )
    _check_common(self)

  @property
  def states_ignore_alignment(self) -> bool:
    """Whether the decoder's states are the same whatever positions were attended."""
    return self.feedback is not Feedback.SAMPLED

  @property
  def uses_encoder_rnn(self) -> bool:
    return self.key_source is KeySource.BIRNN or self.value_source is ValueSource.CONTEXTUAL


@dataclasses.dataclass(frozen=True)
class TransformerConfig:
  """Pre-LayerNorm Transformer encoder-decoder with sinusoidal positions (Vaswani et al. 2017).

  Self-attention is soft (scaled dot); cross-attention uses ``attention`` and ``score``.
  Its keys come from the encoder's output, its values from ``value_source``.

  Attributes:
    vocab_size: ``V``.
    model_dim: residual stream size ``D``.
    num_heads: heads per attention layer.
    mlp_dim: hidden size of the feed-forward blocks.
    num_encoder_layers: encoder depth.
    num_decoder_layers: decoder depth.
    attention: cross-attention :class:`AttentionKind`.
    score: cross-attention :class:`ScoreKind`.
    additive_dim: ``A`` of the additive score.
    gumbel_temperature: Gumbel-softmax temperature.
    straight_through: straight-through Gumbel-softmax.
    learned_baseline: add a value head on the stop-gradient decoder output.
    dropout_rate: dropout on the self-attention weights, the embeddings and every
      sub-layer's output (training only: active when a ``"dropout"`` PRNG stream is given).
    value_source: :class:`ValueSource` of the cross-attention's values: ``"contextual"``
      (the default) the encoder's output, which mixes the whole source, so a hard choice
      reads more than its position; ``"local"`` the encoder's input at the position (token
      embedding plus position encoding, layer-normalised); ``"token"`` the token embedding
      alone. With ``local`` or ``token`` a hard model's output depends on the source's
      symbols only through the positions its heads chose (the keys, from the encoder, decide
      the choice).
    position_embedding: :class:`PositionEmbedding` of the source: ``"1d"`` sinusoids of the
      flattened position; ``"2d"`` sinusoids of the row in the first half of the width and of
      the column in the second (:func:`attnlab.tasks.grid_coordinates`).
    grid_width: columns of the task's grid (derived from the task; 0 for sequences).
    length_embedding: add a learned projection of the sinusoids of the source length (a
      count, no symbol) to every decoder input, as ``RNNConfig.init_decoder_from_length``
      does: with position-local values the decoder can then know where the target ends
      without reading it off an attended value.
    bos_id: first decoder input of greedy decoding.
    eos_id: end-of-sequence token.
  """

  vocab_size: int
  model_dim: int = 64
  num_heads: int = 4
  mlp_dim: int = 128
  num_encoder_layers: int = 2
  num_decoder_layers: int = 2
  attention: AttentionKind | str = AttentionKind.SOFT
  score: ScoreKind | str = ScoreKind.SCALED_DOT
  additive_dim: int = 32
  gumbel_temperature: float = 1.0
  straight_through: bool = False
  learned_baseline: bool = False
  dropout_rate: float = 0.0
  value_source: ValueSource | str = ValueSource.CONTEXTUAL
  position_embedding: PositionEmbedding | str = PositionEmbedding.ONE_D
  grid_width: int = 0
  length_embedding: bool = False
  bos_id: int = BOS
  eos_id: int = EOS

  def __post_init__(self):
    _parse_fields(
      self,
      {
        "attention": AttentionKind,
        "score": ScoreKind,
        "value_source": ValueSource,
        "position_embedding": PositionEmbedding,
      },
    )
    _check_positive(
        self,
        (
            "vocab_size", "model_dim", "num_heads", "mlp_dim", "num_encoder_layers",
            "num_decoder_layers", "additive_dim",
        ),
    )  # fmt: skip
    if self.model_dim % self.num_heads:
      raise ValueError(
        f"model_dim={self.model_dim} is not divisible by num_heads={self.num_heads}."
      )
    _check_common(self)

  @property
  def states_ignore_alignment(self) -> bool:
    """False: later decoder layers and steps read the cross-attention's chosen values."""
    return False
