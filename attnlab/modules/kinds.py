"""Named choices of the modules, as enums whose ``parse`` error lists the valid names."""

from __future__ import annotations

import enum
from typing import TypeVar

_E = TypeVar("_E", bound="_Parsable")


class _Parsable(enum.Enum):
  """An enum with ``parse(name_or_member)``; config strings become members through it."""

  @classmethod
  def parse(cls: type[_E], value: str | _E) -> _E:
    """Returns the member named by ``value`` (a member passes through).

    Raises:
      ValueError: naming ``value`` and listing the valid names.
    """
    if isinstance(value, cls):
      return value
    valid = [m.value for m in cls]
    if value not in valid:
      raise ValueError(f"unknown {cls.__name__} {value!r}; valid names: {valid}.")
    return cls(value)


class AttentionKind(_Parsable):
  """How a query turns scores into a context (the training-time switch)."""

  SOFT = "soft"  # softmax weights, expected context.
  HARD = "hard"  # one sampled position; trained by a score-function estimator.
  GUMBEL = "gumbel"  # Gumbel-softmax relaxed sample (optionally straight-through).
  SPARSEMAX = "sparsemax"  # sparsemax weights, expected context.
  ENTMAX15 = "entmax15"  # entmax-1.5 weights, expected context.


class ScoreKind(_Parsable):
  """Score function of :mod:`attnlab.scores`."""

  DOT = "dot"
  SCALED_DOT = "scaled_dot"
  GENERAL = "general"
  ADDITIVE = "additive"


class Feedback(_Parsable):
  """What an RNN decoder step feeds into the next step's input besides the previous token."""

  NONE = "none"  # nothing: decoder states never depend on attention (the honest default).
  # the expected (soft) context: states never depend on a sample, but a hard model's
  # output then reads a soft summary of the source around its hard choice.
  EXPECTED = "expected"
  SAMPLED = "sampled"  # the context actually used (the sampled value for hard attention).


class KeySource(_Parsable):
  """What the RNN family's attention keys are computed from."""

  BIRNN = "birnn"  # a bidirectional GRU/LSTM over the source.
  LOCAL = "local"  # the token embedding plus the position embedding of each position.


class ValueSource(_Parsable):
  """What the RNN family's attention values (the contexts) are."""

  # the token embedding alone: one value per symbol wherever it stands, so every position's
  # value is trained whichever position is attended (the default).
  TOKEN = "token"
  # token plus position embedding: a rarely attended position (the last of the longest
  # sources) has a rarely trained value, a trap for hard attention.
  LOCAL = "local"
  CONTEXTUAL = "contextual"  # the bidirectional RNN states: may carry any source content.


class EvalMode(_Parsable):
  """Evaluation-time attention, independent of the training kind.

  All three use the trained model's distribution over positions (softmax for soft, hard and
  Gumbel models; sparsemax / entmax-1.5 for those kinds).
  """

  SOFT = "soft"  # expected context.
  ARGMAX = "argmax"  # the value at the most probable position.
  SAMPLE = "sample"  # the value at a sampled position.


class Cell(_Parsable):
  """Recurrent cell of the RNN family."""

  GRU = "gru"
  LSTM = "lstm"


class Family(_Parsable):
  """Model family built by :func:`attnlab.modules.build_model`."""

  RNN = "rnn"
  TRANSFORMER = "transformer"
