"""Named choices of the modules (:class:`attnlab.enums.Choice`: ``parse`` lists the valid names)."""

from __future__ import annotations

from attnlab.enums import Choice


class AttentionKind(Choice):
  """How a query turns scores into a context (the training-time switch)."""

  SOFT = "soft"  # softmax weights, expected context.
  HARD = "hard"  # one sampled position; trained by a score-function estimator.
  GUMBEL = "gumbel"  # Gumbel-softmax relaxed sample (optionally straight-through).
  SPARSEMAX = "sparsemax"  # sparsemax weights, expected context.
  ENTMAX15 = "entmax15"  # entmax-1.5 weights, expected context.
  # Softmax weights, expected context: the alignment distribution that the exact marginal
  # likelihood enumerates (objective "marginal"); the layer itself computes what SOFT does.
  MARGINAL = "marginal"


class ScoreKind(Choice):
  """Score function of :mod:`attnlab.scores`."""

  DOT = "dot"
  SCALED_DOT = "scaled_dot"
  GENERAL = "general"
  ADDITIVE = "additive"


class Feedback(Choice):
  """What an RNN decoder step feeds into the next step's input besides the previous token."""

  NONE = "none"  # nothing: decoder states never depend on attention (the honest default).
  # the expected (soft) context: states never depend on a sample, but a hard model's
  # output then reads a soft summary of the source around its hard choice.
  EXPECTED = "expected"
  SAMPLED = "sampled"  # the context actually used (the sampled value for hard attention).


class KeySource(Choice):
  """What the RNN family's attention keys are computed from."""

  BIRNN = "birnn"  # a bidirectional GRU/LSTM over the source.
  LOCAL = "local"  # the token embedding plus the position embedding of each position.


class ValueSource(Choice):
  """What the (cross-)attention's values, the contexts, are computed from.

  ``token`` and ``local`` are position-local: the value at a position carries that
  position's symbol (and place) and nothing else of the source, so a hard choice reads one
  symbol. ``contextual`` values are computed from the whole source (BiRNN states; the
  Transformer encoder's output, whose self-attention mixes every position): a hard choice
  then reads a summary of the whole source, and is not hard.
  """

  # the token embedding alone: one value per symbol wherever it stands, so every position's
  # value is trained whichever position is attended (the RNN family's default).
  TOKEN = "token"
  # token plus position embedding (RNN: learned positions, a rarely attended position (the
  # last of the longest sources) has a rarely trained value, a trap for hard attention;
  # Transformer: the encoder's input, token embedding plus sinusoids).
  LOCAL = "local"
  # the bidirectional RNN states, or the Transformer encoder's output (its default): may
  # carry any source content.
  CONTEXTUAL = "contextual"


class PositionEmbedding(Choice):
  """How source positions are embedded (``RNNConfig`` / ``TransformerConfig``)."""

  ONE_D = "1d"  # the flattened position p (the default).
  # row and column of p in the task's grid (attnlab.tasks.grid_coordinates), embedded
  # separately: grid tasks (localize) only.
  TWO_D = "2d"


class EvalMode(Choice):
  """How a context is read from the attention distribution (``config.model.eval_mode``).

  At evaluation, any of the three overrides the training kind and keeps the trained model's
  distribution over positions (softmax for soft, hard and Gumbel models; sparsemax /
  entmax-1.5 for those kinds). Training kinds resolve to one as well (hard: ``SAMPLE``;
  Gumbel: a relaxed ``SAMPLE``): see :class:`attnlab.modules.AttentionSpec`.
  """

  SOFT = "soft"  # expected context.
  ARGMAX = "argmax"  # the value at the most probable position.
  SAMPLE = "sample"  # the value at a sampled position.


class Cell(Choice):
  """Recurrent cell of the RNN family."""

  GRU = "gru"
  LSTM = "lstm"


class Family(Choice):
  """Model family built by :func:`attnlab.modules.build_model`."""

  RNN = "rnn"
  TRANSFORMER = "transformer"
