"""Named choices: the one enum base class of attnlab.

Every switch that a user may spell as a string (an attention kind, a baseline, a data split,
a config value) is a :class:`Choice`. Strings become members through :meth:`Choice.parse`,
whose error names what was being chosen, the bad value and every valid name::

  >>> Split.parse("tset", name="split")
  ValueError: split='tset' is invalid; valid choices: ['train', 'val', 'test', 'ood'].
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from typing import Any, TypeVar

_C = TypeVar("_C", bound="Choice")


def invalid_choice(name: str, value: Any, valid: Sequence[Any]) -> str:
  """The error message of a value outside its choices (the wording every parser uses).

  Args:
    name: what was being chosen, e.g. ``"config.model.attention"`` or ``"mode"``.
    value: the value given.
    valid: the accepted values, in the order to list them.

  Returns:
    ``"<name>=<value!r> is invalid; valid choices: [...]."``
  """
  return f"{name}={value!r} is invalid; valid choices: {list(valid)}."


class Choice(enum.Enum):
  """An enum whose members are named by their string values."""

  @classmethod
  def values(cls) -> list[Any]:
    """The members' values, in definition order."""
    return [member.value for member in cls]

  @classmethod
  def parse(cls: type[_C], value: Any, *, name: str | None = None) -> _C:
    """Returns the member whose value is ``value`` (a member passes through unchanged).

    Args:
      value: a member of this enum or the value of one.
      name: what is being chosen, for the error message (default: the class name).

    Returns:
      The member.

    Raises:
      ValueError: ``value`` names no member; the message lists the valid values.
    """
    if isinstance(value, cls):
      return value
    for member in cls:
      if member.value == value:
        return member
    raise ValueError(invalid_choice(name or cls.__name__, value, cls.values()))
