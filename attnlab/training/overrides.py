"""Dotted-key overrides of an ``ml_collections.ConfigDict``: the one implementation.

Comparison methods, presets, the sweep's task overrides and tests all describe a config as a
few ``"model.attention": "hard"`` overrides of a base config; the config parser lists a
config's keys with :func:`flatten` too.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator, Mapping
from typing import Any

import ml_collections


def flatten(node: Mapping | ml_collections.ConfigDict, prefix: str = "") -> Iterator[tuple]:
  """``(dotted_key, value)`` for every leaf of a nested mapping (empty mappings are leaves).

  Keys that already hold dots pass through, so a dotted mapping flattens to itself.

  Args:
    node: a mapping or ConfigDict, nested or dotted.
    prefix: prepended to every key (with its trailing dot).

  Yields:
    ``(dotted_key, value)`` pairs, in the mapping's order.
  """
  for key, value in node.items():
    path = f"{prefix}{key}"
    if isinstance(value, (Mapping, ml_collections.ConfigDict)) and len(value):
      yield from flatten(value, f"{path}.")
    else:
      yield path, value


def nest(overrides: Mapping[str, Any]) -> dict:
  """``{"model.attention": "hard"}`` -> ``{"model": {"attention": "hard"}}``.

  ConfigDicts reject dotted field names, so overrides are written dotted and stored nested.

  Args:
    overrides: dotted keys to values.

  Returns:
    The nested dict.

  Raises:
    ValueError: a key sets a value where another key needs a mapping.
  """
  nested: dict = {}
  for dotted, value in overrides.items():
    *parents, leaf = dotted.split(".")
    node = nested
    for part in parents:
      node = node.setdefault(part, {})
      if not isinstance(node, dict):
        raise ValueError(f"override {dotted!r} conflicts with a value set at {part!r}.")
    node[leaf] = value
  return nested


def apply_overrides(
  base: ml_collections.ConfigDict, overrides: Mapping, *, where: str
) -> ml_collections.ConfigDict:
  """A copy of ``base`` with ``overrides`` applied; only existing keys may be set.

  Args:
    base: the config to copy.
    overrides: values by key, nested (a mapping or ConfigDict, e.g.
      ``{"model": {"score": "dot"}}``) or dotted (``{"model.score": "dot"}``).
    where: what the overrides belong to, for error messages (e.g. ``"method 'soft_dot'"``).

  Returns:
    The new ConfigDict (``base`` is untouched).

  Raises:
    ValueError: a key that ``base`` does not have (the message lists the valid keys), or a
      value of the wrong type for its key.
  """
  config = copy.deepcopy(base)  # Keeps typed placeholders (None fields that a flag may set).
  valid = sorted(k for k, _ in flatten(base))
  for dotted, value in flatten(overrides):
    *parents, leaf = dotted.split(".")
    node = config
    try:
      for part in parents:
        node = node[part]
      if not isinstance(node, ml_collections.ConfigDict) or leaf not in node:
        raise KeyError(dotted)
    except (KeyError, TypeError):
      raise ValueError(f"{where}: unknown config key {dotted!r}; valid keys: {valid}.") from None
    if isinstance(value, ml_collections.ConfigDict):
      value = value.to_dict()
    try:
      node[leaf] = value
    except TypeError as e:
      raise ValueError(f"{where}: bad value {value!r} for {dotted!r}: {e}") from None
  return config
