"""The README's drop-in examples (Flax attention_fn, jax.nn signature), run from README.md."""

import contextlib
import io
import pathlib
import re

import pytest

README = pathlib.Path(__file__).resolve().parents[1] / "README.md"


def _example(name: str) -> str:
  text = README.read_text()
  match = re.search(rf"<!-- readme-example: {name} -->\n```python\n(.*?)```", text, re.DOTALL)
  assert match, f"README.md has no example {name!r}"
  return match.group(1)


@pytest.mark.parametrize(
  "name, expected",
  [
    ("flax", r"^\d\.\d+e-0[6-9]\n\(2, 4, 6, 6\)\n$|^0\.0\n\(2, 4, 6, 6\)\n$"),
    ("jax_nn", r"^(\d\.\d+e-0[6-9]|0\.0)\nImplementation\.SOFT\n$"),
  ],
)
def test_readme_example_runs_and_prints_what_it_says(name, expected):
  printed = io.StringIO()
  with contextlib.redirect_stdout(printed):
    exec(compile(_example(name), f"README.md:{name}", "exec"), {})
  assert re.match(expected, printed.getvalue()), printed.getvalue()
