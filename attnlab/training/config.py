"""One run's ``ml_collections.ConfigDict`` -> validated frozen dataclasses.

Every method (soft, sparse, Gumbel, exact marginal, hard with an enumerated or a REINFORCE
gradient) shares one schema, ``configs/default.py``. :func:`parse_config` reads every key
exactly once (``config.x``, never ``config.get``), so a missing key, an unknown key, a value
outside its choices or a setting that does not apply to the chosen method fails at start-up,
before anything is compiled, with a :class:`ConfigError` naming the key, the value and what
was expected::

  config.model.attention='sotf' is invalid; valid choices: ['soft', 'hard', ...]

How ``model.attention`` (an ``attnlab.modules.AttentionKind``, the model's attention too) and
``estimator.gradient`` select the training objective (Deng et al. 2018, "Latent Alignment and
Variational Attention"):

==============================================  =========================
model.attention                                 objective
==============================================  =========================
soft | sparsemax | entmax15 | gumbel            ``Objective.SOFT``
marginal                                        ``Objective.MARGINAL``
hard, estimator.gradient=enumerate              ``Objective.HARD_ENUM``
hard, estimator.gradient=reinforce              ``Objective.REINFORCE``
hard, estimator.gradient=vimco                  ``Objective.VIMCO`` (proposal: α)
hard, posterior, estimator.gradient=enumerate   ``Objective.VARIATIONAL_ENUM``
hard, posterior, estimator.gradient=reinforce   ``Objective.VARIATIONAL_REINFORCE``
hard, posterior, estimator.gradient=vimco       ``Objective.VIMCO`` (proposal: q)
==============================================  =========================

("posterior" is ``estimator.posterior='inference_network'``: variational attention, Deng et
al. 2018; the RNN family only.)

The ``marginal`` layer computes soft attention: its weights are the alignment distribution α
the marginal enumerates, and no sample is drawn.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from typing import Any

import ml_collections

from attnlab import enums, estimators, modules, tasks
from attnlab.enums import Choice
from attnlab.estimators import BaselineKind, CreditAssignment
from attnlab.modules.kinds import AttentionKind, EvalMode, Family, Feedback, ScoreKind
from attnlab.training import objectives, overrides


class ConfigError(ValueError):
  """An invalid run config; the message names the key, the value and what was expected."""


class Gradient(Choice):
  """``config.estimator.gradient``: how hard attention's bound is differentiated."""

  REINFORCE = "reinforce"  # score-function estimate from K sampled alignments.
  ENUMERATE = "enumerate"  # exact gradient by enumerating every source position.
  VIMCO = "vimco"  # the K-sample bound log mean_k w_k, VIMCO's leave-one-out gradient.


class Posterior(Choice):
  """``config.estimator.posterior``: what proposes the alignments of a latent objective."""

  NONE = "none"  # the attention itself (hard attention).
  INFERENCE_NETWORK = "inference_network"  # q(z|x,y) of variational attention.


# ``config.model.eval_mode`` besides the EvalMode names: argmax for hard, marginal and
# straight-through Gumbel models, soft otherwise (see :func:`_eval_mode`).
AUTO_EVAL_MODE = "auto"


class OptimizerName(Choice):
  """``config.optimizer.name``."""

  ADAM = "adam"
  ADAMW = "adamw"


@dataclasses.dataclass(frozen=True)
class OptimizerConfig:
  """Adam(W) with linear warm-up, cosine decay and global-norm clipping.

  Attributes:
    name: :class:`OptimizerName`.
    learning_rate: peak learning rate, reached after ``warmup_steps``.
    warmup_steps: linear warm-up from 0.
    final_lr_fraction: the cosine decays to ``learning_rate * final_lr_fraction`` at the end.
    weight_decay: decoupled weight decay (``adamw`` only; must be 0 for ``adam``).
    grad_clip_norm: clip the global gradient norm to this (0 disables clipping).
  """

  name: OptimizerName
  learning_rate: float
  warmup_steps: int
  final_lr_fraction: float
  weight_decay: float
  grad_clip_norm: float


@dataclasses.dataclass(frozen=True)
class TrainConfig:
  """Loop settings; see ``configs/default.py`` for what each one means."""

  steps: int
  batch_size: int
  eval_every: int
  eval_size: int
  eval_seed: int
  log_every: int
  checkpoint_every: int
  keep_checkpoints: int
  probe_steps: tuple[int, ...]
  probe_every: int
  probe_samples: int
  probe_batch_size: int
  probe_seed: int
  num_heatmaps: int
  nan_at_step: int
  stop_accuracy: float
  stop_patience: int

  def eval_steps(self) -> list[int]:
    """Steps after which the run evaluates: every ``eval_every``, probe steps, the last."""
    steps = set(range(self.eval_every, self.steps + 1, self.eval_every))
    steps |= set(self.probe_steps) | {self.steps}
    if self.probe_every:
      steps |= set(range(self.probe_every, self.steps + 1, self.probe_every))
    return sorted(steps)

  def is_probe_step(self, step: int) -> bool:
    periodic = self.probe_every > 0 and step > 0 and step % self.probe_every == 0
    return step in self.probe_steps or periodic


@dataclasses.dataclass(frozen=True)
class RunConfig:
  """A parsed, validated run config.

  Attributes:
    seed: the run's seed (:func:`attnlab.training.loop.train_and_evaluate`).
    task: the task instance (``attnlab.tasks.get_task(config.task, **config.task_overrides)``).
    attention: the ``attnlab.modules.AttentionKind`` trained (``MARGINAL``: soft weights,
      trained by the exact marginal likelihood).
    model: ``attnlab.modules.RNNConfig`` or ``TransformerConfig`` ready for ``build_model``.
    eval_mode: the ``EvalMode`` of greedy decoding and the evaluation metrics.
    objective: ``attnlab.training.objectives.ObjectiveConfig``.
    optimizer: :class:`OptimizerConfig`.
    train: :class:`TrainConfig`.
  """

  seed: int
  task: Any
  attention: AttentionKind
  model: Any
  eval_mode: EvalMode
  objective: objectives.ObjectiveConfig
  optimizer: OptimizerConfig
  train: TrainConfig


class _Reader:
  """Reads keys of a ConfigDict by dotted path, remembering which ones were read."""

  def __init__(self, config: ml_collections.ConfigDict):
    self._config = config
    self.read: set[str] = set()

  def __call__(self, path: str) -> Any:
    node = self._config
    for i, part in enumerate(path.split(".")):
      if not isinstance(node, (ml_collections.ConfigDict, Mapping)) or part not in node:
        missing = ".".join(path.split(".")[: i + 1])
        raise ConfigError(f"config is missing key {missing!r} (see configs/default.py).")
      node = node[part]
    self.read.add(path)
    return node

  def choice(self, path: str, enum_cls: type[Choice]) -> Any:
    """The member of ``enum_cls`` named at ``path``."""
    return _choice(path, self(path), enum_cls)

  def number(self, path: str, kind: type, *, low=None, high=None) -> Any:
    """The ``kind`` (int or float) at ``path``, within ``[low, high]``."""
    return _number(path, self(path), kind, low=low, high=high)

  def unread(self) -> list[str]:
    return sorted(p for p, _ in overrides.flatten(self._config) if not _covered(p, self.read))


def _covered(path: str, read: set[str]) -> bool:
  return any(path == r or path.startswith(f"{r}.") for r in read)


def _choice(path: str, value: Any, enum_cls: type[Choice]) -> Any:
  try:
    return enum_cls.parse(value, name=f"config.{path}")
  except ValueError as e:
    raise ConfigError(str(e)) from None


def _number(path: str, value: Any, kind: type, *, low=None, high=None) -> Any:
  ok_type = isinstance(value, (int, float)) if kind is float else isinstance(value, int)
  if isinstance(value, bool) or not ok_type:
    raise ConfigError(f"config.{path}={value!r} is invalid; expected {kind.__name__}.")
  if not math.isfinite(value):
    raise ConfigError(f"config.{path}={value!r} is invalid; expected a finite {kind.__name__}.")
  if (low is not None and value < low) or (high is not None and value > high):
    bounds = f"in [{low if low is not None else '-inf'}, {high if high is not None else 'inf'}]"
    raise ConfigError(f"config.{path}={value!r} is invalid; expected {kind.__name__} {bounds}.")
  return kind(value)


def _require(condition: bool, message: str) -> None:
  if not condition:
    raise ConfigError(message)


# Model fields the trainer derives from the rest of the config (never set directly).
_DERIVED_MODEL_FIELDS = (
    "vocab_size", "attention", "score", "learned_baseline", "posterior", "bos_id", "eos_id",
    "grid_width",
)  # fmt: skip


def _model_config(
  read: _Reader, attention: AttentionKind, task: Any, learned: bool, posterior: bool
):
  family = read.choice("model.family", Family)
  _require(
    not posterior or family is Family.RNN,
    f"config.estimator.posterior='inference_network' needs model.family='rnn', got "
    f"{family.value!r}.",
  )
  score = read.choice("model.score", ScoreKind)
  config_cls = {Family.RNN: modules.RNNConfig, Family.TRANSFORMER: modules.TransformerConfig}
  # Both families' sections are part of the schema; only the chosen one is used.
  sections = {Family.RNN: "model.rnn", Family.TRANSFORMER: "model.transformer"}
  for other in sections.values():
    read(other)
  section = sections[family]
  fields = {f.name: f for f in dataclasses.fields(config_cls[family])}
  settable = sorted(set(fields) - set(_DERIVED_MODEL_FIELDS))
  kwargs = {}
  for key, value in read(section).items():
    path = f"{section}.{key}"
    if key not in settable:
      raise ConfigError(f"config.{path} is not a {family.value} model setting; valid: {settable}.")
    default = fields[key].default
    if isinstance(default, Choice):
      value = _choice(path, value, type(default))
    elif isinstance(value, (list, tuple)):
      value = tuple(value)
    elif isinstance(value, float):
      value = _number(path, value, float)
    kwargs[key] = value
  vocab_size = task.vocab_size
  max_source_len = kwargs.get("max_source_len")
  longest = max(task.max_input_len(split) for split in tasks.Split)
  _require(
    max_source_len is None or max_source_len >= longest,
    f"config.{section}.max_source_len={max_source_len} is too small; task "
    f"{task.name!r} has sources of up to {longest} tokens (OOD split included).",
  )
  if posterior:  # Only the RNN family has an inference network.
    kwargs["posterior"] = True
  grid_width = task.source_grid_width()
  _require(
    kwargs.get("position_embedding") is not modules.PositionEmbedding.TWO_D or grid_width,
    f"config.{section}.position_embedding='2d' needs a task whose sources are grids "
    f"(e.g. 'localize'); task {task.name!r} is a sequence.",
  )
  try:
    return config_cls[family](
      vocab_size=vocab_size,
      attention=attention,
      score=score,
      learned_baseline=learned,
      bos_id=tasks.BOS,
      eos_id=tasks.EOS,
      grid_width=grid_width or 0,
      **kwargs,
    )
  except (TypeError, ValueError) as e:
    raise ConfigError(f"config.{section}: {e}") from e


def _objective_config(read: _Reader, attention: AttentionKind) -> objectives.ObjectiveConfig:
  gradient = read.choice("estimator.gradient", Gradient)
  settings = dict(
    baseline=read.choice("estimator.baseline", BaselineKind),
    credit=read.choice("estimator.reward", CreditAssignment),
    mix_scope=read.choice("estimator.mix_scope", estimators.MixScope),
    num_samples=read.number("estimator.num_samples", int, low=1),
    entropy_coef=read.number("estimator.entropy_coef", float, low=0),
    mix_probability=read.number("estimator.mix_probability", float, low=0, high=1),
    ema_decay=read.number("estimator.ema_decay", float, low=0, high=1),
    baseline_loss_coef=read.number("estimator.baseline_loss_coef", float, low=0),
    kl_weight=read.number("estimator.kl_weight", float, low=0),
  )
  posterior = read.choice("estimator.posterior", Posterior) is Posterior.INFERENCE_NETWORK
  ema_decay = settings["ema_decay"]
  _require(ema_decay < 1, f"config.estimator.ema_decay={ema_decay!r} is invalid; expected < 1.")

  Objective = objectives.Objective
  _require(
    attention is AttentionKind.HARD or (gradient is not Gradient.VIMCO and not posterior),
    f"config.estimator.gradient={gradient.value!r} / estimator.posterior="
    f"{'inference_network' if posterior else 'none'!r} need model.attention='hard' (a "
    f"latent alignment), got {attention.value!r}.",
  )
  if attention is AttentionKind.HARD:
    objective = {
      (Gradient.REINFORCE, False): Objective.REINFORCE,
      (Gradient.ENUMERATE, False): Objective.HARD_ENUM,
      (Gradient.VIMCO, False): Objective.VIMCO,
      (Gradient.REINFORCE, True): Objective.VARIATIONAL_REINFORCE,
      (Gradient.ENUMERATE, True): Objective.VARIATIONAL_ENUM,
      (Gradient.VIMCO, True): Objective.VIMCO,
    }[gradient, posterior]
  elif attention is AttentionKind.MARGINAL:
    objective = Objective.MARGINAL
  else:
    objective = Objective.SOFT

  # Settings that an objective does not use must keep their neutral value, so that a
  # comparison never reports a method under settings it silently ignored.
  sampled = (Objective.REINFORCE, Objective.VARIATIONAL_REINFORCE)
  uses = {  # setting -> (objectives that use it, its neutral value)
    "estimator.baseline": (sampled, ("baseline", BaselineKind.NONE)),
    "estimator.num_samples": ((*sampled, Objective.VIMCO), ("num_samples", 1)),
    "estimator.reward": ((Objective.REINFORCE,), ("credit", CreditAssignment.PER_STEP)),
    "estimator.mix_probability": ((Objective.REINFORCE,), ("mix_probability", 0.0)),
    "estimator.kl_weight": (
      (Objective.VARIATIONAL_ENUM, Objective.VARIATIONAL_REINFORCE, Objective.VIMCO),
      ("kl_weight", 1.0),
    ),
  }
  for path, (users, (field, expected)) in uses.items():
    value = settings[field]
    if objective in users or value == expected:
      continue
    shown = value.value if isinstance(value, Choice) else value
    shown_expected = expected.value if isinstance(expected, Choice) else expected
    raise ConfigError(
      f"config.{path}={shown!r} only applies to model.attention='hard' with the objectives "
      f"{[o.value for o in users]} "
      f"(objective here: {objective.value!r}); expected {shown_expected!r}."
    )
  _require(
    objective is not Objective.VIMCO or settings["num_samples"] >= 2,
    f"config.estimator.gradient='vimco' needs estimator.num_samples >= 2, got "
    f"{settings['num_samples']}.",
  )
  _require(
    objective is not Objective.VARIATIONAL_REINFORCE
    or settings["baseline"] is not BaselineKind.LEARNED,
    "config.estimator.baseline='learned' is not supported with estimator.posterior="
    "'inference_network'; valid: none, ema, rloo, soft.",
  )
  num_samples = settings["num_samples"]
  _require(
    settings["baseline"] is not BaselineKind.RLOO or num_samples >= 2,
    f"config.estimator.baseline='rloo' needs estimator.num_samples >= 2, got {num_samples}.",
  )
  return objectives.ObjectiveConfig(objective=objective, posterior=posterior, **settings)


def _optimizer_config(read: _Reader, steps: int) -> OptimizerConfig:
  name = read.choice("optimizer.name", OptimizerName)
  weight_decay = read.number("optimizer.weight_decay", float, low=0)
  _require(
    name is OptimizerName.ADAMW or weight_decay == 0,
    f"config.optimizer.weight_decay={weight_decay!r} needs optimizer.name='adamw'.",
  )
  return OptimizerConfig(
    name=name,
    learning_rate=read.number("optimizer.learning_rate", float, low=1e-12),
    warmup_steps=read.number("optimizer.warmup_steps", int, low=0, high=steps),
    final_lr_fraction=read.number("optimizer.final_lr_fraction", float, low=0, high=1),
    weight_decay=weight_decay,
    grad_clip_norm=read.number("optimizer.grad_clip_norm", float, low=0),
  )


# TrainConfig's integer fields and their lowest values (see configs/default.py for each).
_TRAIN_INT_LOWEST = dict(
    batch_size=1, eval_every=1, eval_size=1, eval_seed=0, log_every=1, checkpoint_every=1,
    keep_checkpoints=1, probe_every=0, probe_samples=2, probe_batch_size=1, probe_seed=0,
    num_heatmaps=0, nan_at_step=-1, stop_patience=1,
)  # fmt: skip
# Config keys of the TrainConfig fields whose key is not the field name.
_TRAIN_KEYS = {"nan_at_step": "debug.nan_at_step"}


def _train_config(read: _Reader) -> TrainConfig:
  steps = read.number("steps", int, low=1)
  probe_steps = read("probe_steps")
  if not isinstance(probe_steps, (list, tuple)):
    raise ConfigError(f"config.probe_steps={probe_steps!r} is invalid; expected a tuple of ints.")
  probe_steps = tuple(
    sorted({_number("probe_steps", s, int, low=1, high=steps) for s in probe_steps})
  )
  ints = {
    field: read.number(_TRAIN_KEYS.get(field, field), int, low=low)
    for field, low in _TRAIN_INT_LOWEST.items()
  }
  stop_accuracy = read.number("stop_accuracy", float, low=0, high=1)
  return TrainConfig(steps=steps, probe_steps=probe_steps, stop_accuracy=stop_accuracy, **ints)


def _task(read: _Reader):
  name = read("task")
  fields = read("task_overrides")
  # None (configs/default.py lists every task's fields so) means the task's default.
  fields = dict(fields.items()) if fields is not None else {}
  fields = {k: tuple(v) if isinstance(v, list) else v for k, v in fields.items() if v is not None}
  for key, value in fields.items():
    if isinstance(value, float):
      _number(f"task_overrides.{key}", value, float)
  try:
    return tasks.get_task(name, **fields)
  except (TypeError, ValueError) as e:
    raise ConfigError(f"config.task={name!r} / config.task_overrides={fields!r}: {e}") from e


def parse_config(config: ml_collections.ConfigDict) -> RunConfig:
  """Validates a run config and converts it to a :class:`RunConfig`.

  Args:
    config: a ConfigDict with the schema of ``configs/default.py``.

  Returns:
    The :class:`RunConfig`.

  Raises:
    ConfigError: a key is missing or unknown, a value is outside its choices or range, or a
      setting does not apply to the chosen method; the message names key, value and choices.
  """
  read = _Reader(config)
  seed = read.number("seed", int, low=0)
  task = _task(read)
  train = _train_config(read)
  attention = read.choice("model.attention", AttentionKind)
  objective = _objective_config(read, attention)
  learned = objective.baseline is BaselineKind.LEARNED
  model = _model_config(read, attention, task, learned, objective.posterior)
  eval_mode = _eval_mode(read("model.eval_mode"), attention, model)
  optimizer = _optimizer_config(read, train.steps)

  if objective.latent:
    feedback = getattr(model, "feedback", None)
    _require(
      isinstance(model, modules.RNNConfig) and feedback in (Feedback.NONE, Feedback.EXPECTED),
      f"model.attention={attention.value!r} with the objective {objective.objective.value!r} "
      "(it scores alignments under decoder states that ignore them) needs "
      f"model.family='rnn' and model.rnn.feedback in ['none', 'expected'] (got family "
      f"{type(model).__name__}, feedback {getattr(feedback, 'value', feedback)!r}).",
    )
  if objective.objective is objectives.Objective.REINFORCE:
    # Per-step credit is exact only if z_t affects step t alone: RNN decoders that feed back
    # nothing or the expected context. A sampled feedback, or a Transformer decoder
    # attending to earlier steps' states, carries z_t into later steps.
    local = isinstance(model, modules.RNNConfig) and model.feedback is not Feedback.SAMPLED
    _require(
      objective.credit is not CreditAssignment.PER_STEP or local,
      "config.estimator.reward='per_step' is biased when the sample at step t affects later "
      "steps (model.rnn.feedback='sampled' or model.family='transformer'); use "
      "estimator.reward='reward_to_go'.",
    )
  unread = read.unread()
  _require(not unread, f"unknown config key(s) {unread} (see configs/default.py).")
  return RunConfig(seed, task, attention, model, eval_mode, objective, optimizer, train)


def _eval_mode(value: Any, attention: AttentionKind, model: Any) -> EvalMode:
  """``config.model.eval_mode`` as an :class:`EvalMode`.

  ``auto``: a model whose training forward pass uses one position (hard, the marginal's
  latent choice, straight-through Gumbel) decodes with the argmax position; the others with
  the expected context of their own normaliser (softmax, sparsemax, entmax-1.5).
  """
  if value != AUTO_EVAL_MODE:
    try:
      return EvalMode.parse(value)
    except ValueError:
      valid = [AUTO_EVAL_MODE, *EvalMode.values()]
      raise ConfigError(enums.invalid_choice("config.model.eval_mode", value, valid)) from None
  if attention in (AttentionKind.HARD, AttentionKind.MARGINAL):
    return EvalMode.ARGMAX
  if attention is AttentionKind.GUMBEL and getattr(model, "straight_through", False):
    return EvalMode.ARGMAX
  return EvalMode.SOFT
