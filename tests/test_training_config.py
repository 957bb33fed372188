"""The run-config schema: every config/preset loads, invalid values fail with a clear message."""

import dataclasses

import ml_collections
import pytest

from attnlab import estimators, modules, tasks
from attnlab.sweep import plan
from attnlab.training import config as config_lib
from attnlab.training import objectives
from attnlab.training import overrides as overrides_lib
from configs import compare as compare_config
from configs import default as default_config

Objective = objectives.Objective


def _default(changes) -> ml_collections.ConfigDict:
  """configs/default.py with dotted-key changes."""
  return overrides_lib.apply_overrides(default_config.get_config(), changes, where="test")


@pytest.mark.parametrize("preset", [None, "default", "smoke", "transformer"])
def test_every_default_preset_parses(preset):
  run = config_lib.parse_config(default_config.get_config(preset))
  assert run.train.steps >= 1
  assert run.objective.objective is Objective.SOFT
  family = modules.TransformerConfig if preset == "transformer" else modules.RNNConfig
  assert isinstance(run.model, family)
  assert run.model.vocab_size == run.task.vocab_size


def test_unknown_preset_lists_valid_ones():
  with pytest.raises(ValueError, match=r"unknown preset 'nope'.*smoke"):
    default_config.get_config("nope")


@pytest.mark.parametrize("preset", sorted(compare_config.PRESETS))
def test_every_compare_method_and_task_parses(preset):
  assert f"\n  {preset} " in compare_config.__doc__  # Every preset is documented.
  compare = compare_config.get_config(preset)
  for task in compare.tasks:
    for name in compare.method_names:
      # Base, then the task's overrides (its step budget), then the method's.
      run = config_lib.parse_config(plan.run_config(compare, task, name))
      assert run.task.name == task, name


@pytest.mark.parametrize(
  "overrides, objective, kind, eval_mode",
  [
    ({"model.attention": "soft"}, Objective.SOFT, "soft", "soft"),
    ({"model.attention": "sparsemax"}, Objective.SOFT, "sparsemax", "soft"),
    ({"model.attention": "entmax15"}, Objective.SOFT, "entmax15", "soft"),
    ({"model.attention": "gumbel"}, Objective.SOFT, "gumbel", "argmax"),
    (
      {"model.attention": "gumbel", "model.rnn.straight_through": False},
      Objective.SOFT,
      "gumbel",
      "soft",
    ),
    ({"model.attention": "marginal"}, Objective.MARGINAL, "marginal", "argmax"),
    (
      {"model.attention": "hard", "estimator.gradient": "enumerate"},
      Objective.HARD_ENUM,
      "hard",
      "argmax",
    ),
    ({"model.attention": "hard"}, Objective.REINFORCE, "hard", "argmax"),
    (
      {"model.attention": "hard", "model.eval_mode": "sample"},
      Objective.REINFORCE,
      "hard",
      "sample",
    ),
  ],
)
def test_attention_and_gradient_select_objective(overrides, objective, kind, eval_mode):
  run = config_lib.parse_config(_default(overrides))
  assert run.objective.objective is objective
  assert run.model.attention.value == kind
  assert run.eval_mode.value == eval_mode


def test_estimator_settings_reach_the_objective_config():
  config = _default(
    {
      "model.attention": "hard",
      "estimator.baseline": "learned",
      "estimator.num_samples": 3,
      "estimator.reward": "reward_to_go",
      "estimator.entropy_coef": 0.002,
      "estimator.mix_probability": 0.5,
      "estimator.mix_scope": "per_batch",
    }
  )
  run = config_lib.parse_config(config)
  cfg = run.objective
  assert cfg.baseline is estimators.BaselineKind.LEARNED
  assert cfg.credit is estimators.CreditAssignment.REWARD_TO_GO
  assert (cfg.num_samples, cfg.entropy_coef, cfg.mix_probability) == (3, 0.002, 0.5)
  assert cfg.mix_scope.value == "per_batch"
  assert run.model.learned_baseline  # Derived: a learned baseline needs the value head.


# (overrides, substrings the error must contain: key, value, and what was expected).
INVALID = [
  ({"model.attention": "sotf"}, ["config.model.attention='sotf'", "'soft'", "'marginal'"]),
  ({"model.score": "cosine"}, ["config.model.score='cosine'", "'additive'"]),
  ({"model.family": "cnn"}, ["config.model.family='cnn'", "'transformer'"]),
  ({"model.eval_mode": "best"}, ["config.model.eval_mode='best'", "'argmax'"]),
  ({"model.rnn.cell": "rnn"}, ["config.model.rnn.cell='rnn'", "'lstm'"]),
  ({"estimator.gradient": "pathwise"}, ["config.estimator.gradient='pathwise'", "'enumerate'"]),
  ({"model.attention": "hard", "estimator.baseline": "mean"}, ["baseline='mean'", "'rloo'"]),
  ({"model.attention": "hard", "estimator.reward": "sum"}, ["reward='sum'", "'reward_to_go'"]),
  ({"optimizer.name": "sgd"}, ["config.optimizer.name='sgd'", "'adamw'"]),
  ({"steps": 0}, ["config.steps=0", "[1, inf]"]),
  ({"keep_checkpoints": 0}, ["config.keep_checkpoints=0", "[1, inf]"]),
  ({"optimizer.learning_rate": -1.0}, ["config.optimizer.learning_rate=-1.0"]),
  ({"optimizer.learning_rate": float("nan")}, ["learning_rate=nan", "expected a finite float"]),
  ({"optimizer.grad_clip_norm": float("inf")}, ["grad_clip_norm=inf", "expected a finite"]),
  ({"model.rnn.gumbel_temperature": float("nan")}, ["gumbel_temperature=nan", "finite"]),
  ({"task_overrides.val_fraction": float("nan")}, ["val_fraction=nan", "finite"]),
  ({"task_overrides.num_keys": 4}, ["unknown parameter(s) ['num_keys'] for task 'copy'"]),
  ({"estimator.mix_probability": 1.5}, ["mix_probability=1.5", "[0, 1]"]),
  ({"probe_steps": (1, 10_000)}, ["config.probe_steps=10000", "[1, 400]"]),
  ({"task": "parity"}, ["config.task='parity'", "copy"]),
  (
    {"model.attention": "hard", "estimator.baseline": "rloo"},
    ["estimator.baseline='rloo'", "num_samples >= 2"],
  ),
  (
    {"estimator.baseline": "ema"},  # soft attention: the baseline would be ignored.
    ["config.estimator.baseline='ema'", "only applies to model.attention='hard'"],
  ),
  (
    {"model.attention": "marginal", "estimator.num_samples": 4},
    ["config.estimator.num_samples=4", "only applies"],
  ),
  ({"optimizer.weight_decay": 0.1}, ["weight_decay=0.1", "adamw"]),
  (
    {"model.attention": "hard", "estimator.gradient": "enumerate", "model.rnn.feedback": "sampled"},
    ["objective 'hard_enum'", "feedback"],
  ),
  (
    {"estimator.gradient": "vimco", "estimator.num_samples": 4},  # soft attention
    ["estimator.gradient='vimco'", "model.attention='hard'"],
  ),
  (
    {"estimator.posterior": "inference_network"},  # soft attention
    ["estimator.posterior='inference_network'", "model.attention='hard'"],
  ),
  ({"estimator.posterior": "amortised"}, ["estimator.posterior='amortised'", "inference_network"]),
  (
    {"model.attention": "hard", "estimator.gradient": "vimco"},
    ["estimator.gradient='vimco' needs estimator.num_samples >= 2", "got 1"],
  ),
  (
    {"model.attention": "hard", "estimator.kl_weight": 0.5},
    ["config.estimator.kl_weight=0.5", "variational_enum"],
  ),
  (
    {
      "model.attention": "hard",
      "estimator.posterior": "inference_network",
      "estimator.gradient": "vimco",
      "estimator.num_samples": 4,
      "estimator.baseline": "rloo",
    },
    ["config.estimator.baseline='rloo'", "'vimco'"],
  ),
  (
    {
      "model.family": "transformer",
      "model.attention": "hard",
      "estimator.posterior": "inference_network",
      "estimator.gradient": "enumerate",
    },
    ["estimator.posterior='inference_network' needs model.family='rnn'"],
  ),
  (
    {
      "model.attention": "hard",
      "estimator.posterior": "inference_network",
      "model.rnn.feedback": "sampled",
    },
    ["objective 'variational_reinforce'", "feedback"],
  ),
  (
    {"model.attention": "hard", "model.rnn.feedback": "sampled"},
    ["reward='per_step' is biased", "reward_to_go"],
  ),
  ({"model.rnn.max_source_len": 8}, ["max_source_len=8", "24"]),
]


@pytest.mark.parametrize("overrides, expected", INVALID)
def test_invalid_value_names_key_value_and_choices(overrides, expected):
  with pytest.raises(config_lib.ConfigError) as error:
    config_lib.parse_config(_default(overrides))
  for text in expected:
    assert text in str(error.value), (text, str(error.value))


def test_unknown_and_missing_keys_fail():
  config = default_config.get_config()
  config.model.rnn.hiden_dim = 3  # A typo in a config file (the CLI's locked config stops it).
  with pytest.raises(config_lib.ConfigError, match=r"model.rnn.hiden_dim.*valid:.*hidden_dim"):
    config_lib.parse_config(config)
  config = default_config.get_config()
  config.extra_knob = 1
  with pytest.raises(config_lib.ConfigError, match=r"unknown config key\(s\) \['extra_knob'\]"):
    config_lib.parse_config(config)
  config = default_config.get_config()
  del config.estimator["ema_decay"]
  with pytest.raises(config_lib.ConfigError, match="missing key 'estimator.ema_decay'"):
    config_lib.parse_config(config)


def test_eval_steps_include_probes_and_the_last_step():
  config = default_config.get_config()
  config.steps, config.eval_every, config.probe_steps = 10, 4, (1, 6)
  config.optimizer.warmup_steps = 2
  train = config_lib.parse_config(config).train
  assert train.eval_steps() == [1, 4, 6, 8, 10]
  assert train.is_probe_step(6) and not train.is_probe_step(4)


def test_every_task_field_is_a_task_override_that_defaults_to_the_task():
  overrides = default_config.get_config().task_overrides
  for name, cls in tasks.TASKS.items():
    fields = {f.name for f in dataclasses.fields(cls)}
    assert fields <= set(overrides.keys()), (name, fields - set(overrides.keys()))
  assert all(value is None for value in overrides.values())  # None: the task's default.
  assert config_lib.parse_config(default_config.get_config()).task == tasks.CopyTask()
  run = config_lib.parse_config(_default({"task": "recall", "task_overrides.train_pairs": (2, 4)}))
  assert run.task == tasks.RecallTask(train_pairs=(2, 4))


@pytest.mark.parametrize("family", ["rnn", "transformer"])
def test_2d_positions_take_the_grid_of_the_task(family):
  key = f"model.{family}.position_embedding"
  run = config_lib.parse_config(_default({"task": "localize", "model.family": family, key: "2d"}))
  assert run.model.position_embedding is modules.PositionEmbedding.TWO_D
  assert run.model.grid_width == 5  # the task's, derived: not a model setting
  one_d = config_lib.parse_config(_default({"task": "localize", "model.family": family}))
  assert one_d.model.position_embedding is modules.PositionEmbedding.ONE_D
  with pytest.raises(config_lib.ConfigError, match=rf"{key}='2d' needs a task whose sources"):
    config_lib.parse_config(_default({"model.family": family, key: "2d"}))
  config = _default({"task": "localize", "model.family": family})
  config.model[family].grid_width = 5
  with pytest.raises(config_lib.ConfigError, match="grid_width is not a"):
    config_lib.parse_config(config)


def test_transformer_preset_is_the_honest_transformer_on_every_task():
  compare = compare_config.get_config("transformer")
  assert compare.tasks == (*compare_config.TASKS, "localize")
  for task in compare.tasks:
    for name in compare.method_names:
      run = config_lib.parse_config(plan.run_config(compare, task, name))
      model = run.model
      assert isinstance(model, modules.TransformerConfig), (task, name)
      # Position-local values: only cross-attention carries the source's symbols.
      assert model.value_source is modules.ValueSource.LOCAL and model.length_embedding
      grid = task == "localize"
      assert (model.position_embedding is modules.PositionEmbedding.TWO_D) == grid
  hard = config_lib.parse_config(plan.run_config(compare, "copy", "transformer_reinforce_rloo4"))
  assert hard.objective.objective is Objective.REINFORCE and hard.objective.num_samples == 4
  assert hard.objective.credit is estimators.CreditAssignment.REWARD_TO_GO
  assert hard.objective.entropy_coef > 0 and hard.eval_mode is modules.EvalMode.ARGMAX
  # The RNN presets never train the Transformer rows.
  full = compare_config.get_config("full")
  assert not set(full.method_names) & set(compare_config.TRANSFORMER_METHODS)


def test_a_preset_task_setting_for_a_task_without_budget_is_an_error(monkeypatch):
  broken = dict(compare_config.PRESETS["transformer"], task_config={"localise": {}})
  monkeypatch.setitem(compare_config.PRESETS, "transformer", broken)
  with pytest.raises(ValueError, match=r"task_config names \['localise'\].*'localize'"):
    compare_config.get_config("transformer")
