"""Dotted-key overrides: flatten, nest and apply, the one implementation every caller uses."""

import ml_collections
import pytest

from attnlab.training import overrides


def _base():
  return ml_collections.ConfigDict(
    {"seed": 0, "model": {"attention": "soft", "rnn": {"hidden_dim": 8}}, "extra": {}}
  )


def test_flatten_and_nest_are_inverse():
  nested = {"a": {"b": 1, "c": {}}, "d": 3}
  assert dict(overrides.flatten(nested)) == {"a.b": 1, "a.c": {}, "d": 3}
  assert overrides.nest({"a.b": 1, "a.c": 2, "d": 3}) == {"a": {"b": 1, "c": 2}, "d": 3}
  assert dict(overrides.flatten({"a.b": 1})) == {"a.b": 1}  # Dotted input flattens to itself.
  with pytest.raises(ValueError, match="conflicts"):
    overrides.nest({"a": 1, "a.b": 2})


@pytest.mark.parametrize(
  "changes", [{"model.rnn.hidden_dim": 16, "seed": 3}, {"model": {"rnn": {"hidden_dim": 16}}}]
)
def test_apply_copies_and_accepts_dotted_or_nested_keys(changes):
  base = _base()
  config = overrides.apply_overrides(base, changes, where="test")
  assert config.model.rnn.hidden_dim == 16 and base.model.rnn.hidden_dim == 8
  assert config.model.attention == "soft"


def test_apply_rejects_unknown_keys_and_wrong_types_naming_them():
  with pytest.raises(ValueError, match=r"method 'x': unknown config key 'model.atention'; valid"):
    overrides.apply_overrides(_base(), {"model": {"atention": "hard"}}, where="method 'x'")
  with pytest.raises(ValueError, match=r"unknown config key 'seed.x'"):
    overrides.apply_overrides(_base(), {"seed.x": 1}, where="m")
  with pytest.raises(ValueError, match=r"bad value 'many' for 'model.rnn.hidden_dim'"):
    overrides.apply_overrides(_base(), {"model.rnn.hidden_dim": "many"}, where="m")
