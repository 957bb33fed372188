"""The entry points' shared plumbing: flags in, and one line out on every expected failure.

``experiments/train.py``, ``compare.py`` and ``table.py`` start through :func:`run`, which

* parses the flags itself: an unknown or misspelled config key (with a did-you-mean over the
  config's dotted keys), a value of the wrong type, a missing config file or one that fails to
  load, a missing required flag: ``error: ...`` on stderr (one line) and exit status 2;
* then runs ``main``, turning the library's typed errors into one line, no traceback: an
  invalid config or an unusable, locked or mismatched workdir (``ValueError`` and its
  subclasses ``ConfigError`` and ``WorkdirError``) or a missing path exit with 2, before
  anything is compiled; a full disk (``DiskFullError``, naming the last good checkpoint) or a
  non-finite loss (``FloatingPointError``) exit with 1.

``ATTNLAB_TRACEBACK=1`` in the environment prints the traceback too. The library itself never
exits or reads flags: it raises.
"""

from __future__ import annotations

import difflib
import functools
import os
import sys
import traceback
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any, NoReturn

import ml_collections
from absl import app, flags
from ml_collections.config_flags import config_flags  # is_config_flag, the file parser.

from attnlab.training import rundir

USAGE_ERROR = 2  # Bad flags, config, paths: nothing ran.
RUN_ERROR = 1  # A run or a sweep failed.
# Errors from main() that are the user's input (paths, configs, workdirs), not bugs.
_USAGE_ERRORS = (ValueError, FileNotFoundError, NotADirectoryError, PermissionError)
_RUN_ERRORS = (rundir.DiskFullError, FloatingPointError)


def require_int(name: str, value: Any, low: int = 1) -> None:
  """Raises ``ValueError`` naming ``name`` unless ``value`` is an int of at least ``low``.

  A bool is refused although Python counts it as an int: ``rounds=True`` is a mistake, not 1.
  For the settings of the benchmark scripts, checked before anything is compiled.
  """
  if isinstance(value, bool) or not isinstance(value, int) or value < low:
    raise ValueError(f"{name}={value!r} must be an int >= {low}.")


def run(main: Callable[[list[str]], Any]) -> None:
  """``absl.app.run(main)`` with one-line errors (see the module docstring)."""
  app.run(functools.partial(_run_main, main), flags_parser=_parse_flags)


def fail(message: str, status: int) -> NoReturn:
  """Prints ``error: <message>`` to stderr and exits with ``status``."""
  print(f"error: {message}", file=sys.stderr, flush=True)
  sys.exit(status)


def one_line(error: BaseException) -> str:
  """The message of ``error`` as one line (the last line of an embedded traceback)."""
  lines = [line.strip() for line in str(error).splitlines() if line.strip()]
  if not lines:
    return type(error).__name__
  if any(line.startswith("Traceback") for line in lines):
    return f"{lines[0].rstrip(':')} {lines[-1]}"
  return lines[0]


def _show_traceback() -> None:
  if os.environ.get("ATTNLAB_TRACEBACK"):
    traceback.print_exc()


def _run_main(main: Callable[[list[str]], Any], argv: list[str]) -> Any:
  try:
    return main(argv)
  except _RUN_ERRORS as e:
    _show_traceback()
    fail(one_line(e), RUN_ERROR)
  except _USAGE_ERRORS as e:
    _show_traceback()
    fail(one_line(e), USAGE_ERROR)


# ---- Flags ------------------------------------------------------------------------------


def _parse_flags(argv: list[str]) -> list[str]:
  try:
    args = flags.FLAGS(argv)
  except Exception as e:  # noqa: BLE001 - flags.Error, and what a config override raises.
    _show_traceback()
    problem = _missing_config_file(argv) or _unknown_override(argv)
    fail(problem or one_line(e), USAGE_ERROR)
  problem = _missing_config_file(argv)  # Loading it failed quietly; main would crash on it.
  if problem:
    fail(problem, USAGE_ERROR)
  return args


def _config_flag_names() -> list[str]:
  return [name for name in list(flags.FLAGS) if config_flags.is_config_flag(flags.FLAGS[name])]


def _flag_value(argv: Sequence[str], name: str) -> str | None:
  """The value given to ``--name`` in ``argv`` (``--name=v`` or ``--name v``; the last wins)."""
  value = None
  for i, arg in enumerate(argv[1:], start=1):
    for dashes in ("--", "-"):
      if arg.startswith(f"{dashes}{name}="):
        value = arg[len(dashes) + len(name) + 1 :]
      elif arg == f"{dashes}{name}" and i + 1 < len(argv):
        value = argv[i + 1]
  return value


def _override_keys(argv: Sequence[str], name: str) -> Iterator[tuple[str, str]]:
  """``(dotted_key, the argument)`` of every ``--name.key[=value]`` in ``argv``."""
  for arg in argv[1:]:
    for dashes in ("--", "-"):
      if arg.startswith(f"{dashes}{name}."):
        yield arg[len(dashes) + len(name) + 1 :].split("=", 1)[0], arg.split("=", 1)[0]
        break


def _dotted_keys(node: Mapping | ml_collections.ConfigDict, prefix: str = "") -> Iterator[str]:
  for key, value in node.items():
    yield f"{prefix}{key}"
    if isinstance(value, (Mapping, ml_collections.ConfigDict)):
      yield from _dotted_keys(value, f"{prefix}{key}.")


def _config_files(argv: Sequence[str]) -> Iterator[tuple[str, str, str]]:
  """``(flag name, its value, the file)`` of every config-file flag given in ``argv``."""
  for name in _config_flag_names():
    value = _flag_value(argv, name)
    if value is not None:
      yield name, value, value.split(":", 1)[0]


def _missing_config_file(argv: Sequence[str]) -> str | None:
  for name, value, path in _config_files(argv):
    if not os.path.isfile(path):
      return f"config file {path!r} not found (--{name}={value})."
  return None


def _unknown_override(argv: Sequence[str]) -> str | None:
  """An override of a key that the config does not have, with a did-you-mean (one line)."""
  for name, value, path in _config_files(argv):
    overrides = list(_override_keys(argv, name))
    if not overrides:
      continue
    try:
      config = config_flags.ConfigFileFlagParser(name, lock_config=False).parse(value)
    except Exception:  # noqa: BLE001 - the flag parser's own error names a config that fails.
      return None
    keys = list(_dotted_keys(config))
    for key, arg in overrides:
      if key not in keys:
        close = difflib.get_close_matches(key, keys, n=1)
        hint = f"did you mean {close[0]!r}?" if close else f"the keys are listed in {path}."
        return f"unknown config key {key!r} ({arg}); {hint}"
  return None
