"""Every Python example of the documentation (docs/**/*.md), executed as written.

An example is a fenced ``python`` block right after a ``<!-- docs-example: NAME -->`` marker;
every ``python`` block of the docs must carry one, so none goes untested. Each runs in a fresh
namespace; what it prints is checked against ``_PRINTS`` and, for some, what it computed
against ``_CHECKS``.
"""

import contextlib
import io
import pathlib
import re

import jax.numpy as jnp
import numpy as np
import pytest

from attnlab import tasks

DOCS = pathlib.Path(__file__).resolve().parents[1] / "docs"
_MARKED = re.compile(r"<!-- docs-example: (\w+) -->\n```python\n(.*?)```", re.DOTALL)
_PYTHON_BLOCK = re.compile(r"^```python\n", re.MULTILINE)


def _pages() -> list[pathlib.Path]:
  return sorted(p for p in DOCS.rglob("*.md") if "_build" not in p.parts)


def _examples() -> dict[str, tuple[str, str]]:
  """``{name: (page, code)}`` of every marked example."""
  examples = {}
  for page in _pages():
    for name, code in _MARKED.findall(page.read_text()):
      assert name not in examples, f"docs example {name!r} is defined twice"
      examples[name] = (str(page.relative_to(DOCS)), code)
  return examples


def _check_estimators_rloo(ns):
  # The trained layer attends every query's target, with confidence; untrained it is uniform.
  out, target_S, S = ns["out"], ns["target_S"], ns["S"]
  assert jnp.all(out.index == target_S)
  assert jnp.mean(out.probs[jnp.arange(S), target_S]) > 0.95
  untrained = ns["attnlab"].hard_attention(
    None,
    ns["queries_SxD"] @ jnp.zeros((ns["D"], ns["D"])),
    ns["keys_SxD"],
    ns["keys_SxD"],
    mode="argmax",
  )
  assert jnp.mean(untrained.probs[jnp.arange(S), target_S]) < 0.2  # uniform: 1/S


def _check_primitives(ns):
  weights = np.asarray(ns["weights"])
  assert ns["context"].shape == (5, 16) and weights.shape == (5, 7)
  np.testing.assert_allclose(weights.sum(-1), 1.0, rtol=1e-6)
  assert np.all(weights[:, 5:] == 0.0)
  assert np.all(np.asarray(ns["out"].index) < 5)  # hard attention never picks padding
  assert ns["ctx"].shape == (2, 5, 4, 16) and ns["weights_BxHxTxS"].shape == (2, 4, 5, 7)


# What each example prints (a regular expression of its whole output).
_PRINTS = {
  "first_look": r"^\(3, 8\) \(3, 5\)\n\[0\. 0\. 0\.\]\n$",
  "flax": r"^(\d\.\d+e-0[6-9]|0\.0)\n\(2, 4, 6, 6\)\n$",
  "jax_nn": r"^(\d\.\d+e-0[6-9]|0\.0)\nImplementation\.SOFT\n$",
  "estimators_rloo": r"^accuracy 1\.00\n$",
  "models": r"^\(32, 13, 13\) \(32, 13\) \(32, 13, 12, 13\)\n\d\.\d+\n$",
  "add_task": r"^\[\[4 5 3 2 0\]\] \[\[ 1  2  0 -1 -1\]\]\nRotateTask\n$",
  "add_method": (
    r"^copy soft_additive 1 \(0, 1\)\ncopy reinforce_rloo8 8 \(0, 1\)\n"
    r"reverse soft_additive 1 \(0, 1\)\nreverse reinforce_rloo8 8 \(0, 1\)\n$"
  ),
}
_CHECKS = {"estimators_rloo": _check_estimators_rloo, "primitives": _check_primitives}


def test_every_python_block_of_the_docs_is_an_executed_example():
  for page in _pages():
    text = page.read_text()
    assert len(_PYTHON_BLOCK.findall(text)) == len(_MARKED.findall(text)), (
      f"{page}: a ```python block without a <!-- docs-example: NAME --> marker is not tested"
    )
  assert set(_examples()) == set(_PRINTS) | set(_CHECKS)


@pytest.mark.parametrize("name", sorted(set(_PRINTS) | set(_CHECKS)))
def test_docs_example_runs_and_does_what_it_says(name, monkeypatch):
  page, code = _examples()[name]
  monkeypatch.setattr(tasks, "TASKS", dict(tasks.TASKS))  # add_task registers a task.
  monkeypatch.setattr(tasks.registry, "TASKS", tasks.TASKS)
  namespace = {"__name__": f"docs_example_{name}"}
  printed = io.StringIO()
  with contextlib.redirect_stdout(printed):
    exec(compile(code, f"docs/{page}:{name}", "exec"), namespace)
  if name in _PRINTS:
    assert re.match(_PRINTS[name], printed.getvalue()), printed.getvalue()
  if name in _CHECKS:
    _CHECKS[name](namespace)


def test_getting_started_shows_the_readmes_two_commands_verbatim():
  # The README is their home (.ci/run runs its test command); the docs copy them.
  def two_commands(text):
    section = text.split("## Two commands", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```bash\n(.*?)```", section, re.DOTALL)

  readme = (DOCS.parent / "README.md").read_text()
  commands = two_commands(readme)
  assert len(commands) == 2
  assert two_commands((DOCS / "getting-started.md").read_text()) == commands
