"""The one enum helper: parsing by value, members passing through, the shared error wording."""

import pytest

from attnlab import enums


class Colour(enums.Choice):
  RED = "red"
  GREEN = "green"


def test_parse_accepts_values_and_members():
  assert Colour.parse("green") is Colour.GREEN
  assert Colour.parse(Colour.RED) is Colour.RED
  assert Colour.values() == ["red", "green"]


@pytest.mark.parametrize("bad", ["Red", "blue", None, 1, ["red"]])
def test_parse_rejects_anything_else_listing_the_choices(bad):
  with pytest.raises(ValueError) as error:
    Colour.parse(bad, name="config.colour")
  assert str(error.value) == f"config.colour={bad!r} is invalid; valid choices: ['red', 'green']."


def test_default_name_is_the_class_and_members_of_other_enums_are_rejected():
  class Other(enums.Choice):
    RED = "red"

  with pytest.raises(ValueError, match=r"^Colour=<Other.RED: 'red'> is invalid"):
    Colour.parse(Other.RED)
