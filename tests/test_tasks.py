"""Tests for attnlab.tasks: determinism, shapes/padding, gold alignments, splits, registry."""

import dataclasses
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from attnlab import tasks
from attnlab.tasks import BOS, EOS, FIRST_SYMBOL, PAD, Split, get_task
from attnlab.tasks import splits as splits_lib

NAMES = sorted(tasks.TASKS)


def _rng(seed, step=0):
  return np.random.default_rng([seed, step])


def _assert_batches_equal(a, b):
  for x, y in zip(a, b, strict=True):
    assert x.shape == y.shape and x.dtype == y.dtype
    np.testing.assert_array_equal(x, y)


def _reference(task, source):
  """Pure-Python (target tokens without EOS, alignment) of one unpadded source."""
  n = len(source)
  if task.name == "copy":
    return list(source), list(range(n))
  if task.name == "reverse":
    return source[::-1], [n - 1 - i for i in range(n)]
  if task.name == "sort":
    order = sorted(range(n), key=lambda i: source[i])  # Python's sort is stable.
    return [source[i] for i in order], order
  if task.name == "recall":
    assert source[-2] == task.query_token
    positions = {source[i]: i + 1 for i in range(0, n - 2, 2)}
    answer = positions[source[-1]]
    return [source[answer]], [answer]
  if task.name == "addition":
    plus = source.index(task.plus_token)
    a_digits = [t - FIRST_SYMBOL for t in source[:plus]]
    b_digits = [t - FIRST_SYMBOL for t in source[plus + 1 :]]
    a = int("".join(map(str, a_digits[::-1])))
    b = int("".join(map(str, b_digits[::-1])))
    out = [FIRST_SYMBOL + int(d) for d in str(a + b)[::-1]]
    return out, [-1] * len(out)
  if task.name == "localize":
    cells = [i for i, t in enumerate(source) if t != FIRST_SYMBOL]  # reading order
    return [source[i] for i in cells], cells
  raise AssertionError(task.name)


# ---------------------------------------------------------------------------- registry


def test_registry_names_and_unknown_name():
  assert set(tasks.TASKS) == {"copy", "reverse", "sort", "recall", "addition", "localize"}
  with pytest.raises(ValueError, match="unknown task 'cpy'") as info:
    get_task("cpy")
  for name in tasks.TASKS:
    assert name in str(info.value)


def test_unknown_override_is_named():
  with pytest.raises(ValueError, match=r"\['bogus'\].*train_lengths"):
    get_task("copy", bogus=1)


@pytest.mark.parametrize(
  "name, overrides, message",
  [
    ("copy", dict(train_lengths=(1, 12), ood_lengths=(10, 20)), "OOD means longer"),
    ("copy", dict(train_lengths=(0, 4)), "train_lengths"),
    ("copy", dict(train_lengths=(5, 4)), "train_lengths"),
    ("copy", dict(num_symbols=0), "num_symbols"),
    ("copy", dict(train_lengths=5), "pair"),
    ("recall", dict(ood_pairs=(9, 17)), "ood_pairs"),
    ("addition", dict(gold_operand="both"), "gold_operand='both' is invalid; valid choices"),
    ("sort", dict(val_fraction=0.6, test_fraction=0.5), "val_fraction"),
    ("localize", dict(train_rows=(2, 5), ood_rows=(5, 6)), "OOD means longer"),
    ("localize", dict(grid_width=0), "grid_width"),
    # 2 rows of 5 cells cannot hold 11 objects.
    ("localize", dict(train_objects=(1, 11)), r"train_objects.*high <= 10"),
    ("localize", dict(ood_objects=(0, 3)), "ood_objects"),
  ],
)
def test_invalid_parameters_raise(name, overrides, message):
  with pytest.raises(ValueError, match=message):
    get_task(name, **overrides)


def test_overrides_from_config_lists_and_frozen():
  task = get_task("reverse", train_lengths=[2, 3], ood_lengths=[4, 4])
  assert task.train_lengths == (2, 3) and task.ood_lengths == (4, 4)
  hash(task)  # Frozen dataclasses with tuples are hashable (usable as static jit args).
  with pytest.raises(dataclasses.FrozenInstanceError):
    task.num_symbols = 3
  batch = task.sample(_rng(0), 200, "train")
  assert set(batch.input_lengths.tolist()) == {2, 3}
  assert set(task.sample(_rng(0), 20, "ood").input_lengths.tolist()) == {4}


def test_vocabulary_contract():
  assert (PAD, BOS, EOS, FIRST_SYMBOL) == (0, 1, 2, 3)
  assert get_task("copy").vocab_size == FIRST_SYMBOL + 10
  assert get_task("recall").vocab_size == FIRST_SYMBOL + 16 + 10 + 1  # keys, values, QUERY
  assert get_task("addition").vocab_size == FIRST_SYMBOL + 10 + 1  # digits, '+'
  assert get_task("localize").vocab_size == FIRST_SYMBOL + 1 + 8  # background, classes


def test_bad_split_batch_size_and_rng():
  task = get_task("copy")
  with pytest.raises(ValueError, match=r"'dev'.*\['train', 'val', 'test', 'ood'\]"):
    task.sample(_rng(0), 4, "dev")
  with pytest.raises(ValueError, match="batch_size"):
    task.sample(_rng(0), 0, "train")
  with pytest.raises(TypeError, match="Generator"):
    task.sample(0, 4, "train")


# ------------------------------------------------------------------------ per task


@pytest.mark.parametrize("name", NAMES)
def test_determinism_from_seed(name):
  task = get_task(name)
  for split in Split:
    first = task.sample(_rng(3, 7), 16, split)
    _assert_batches_equal(first, task.sample(_rng(3, 7), 16, split))
    assert not np.array_equal(first.inputs, task.sample(_rng(3, 8), 16, split).inputs)
  fixed = task.eval_set("val", 32, seed=0)
  _assert_batches_equal(fixed, task.eval_set(Split.VAL, 32, seed=0))
  assert not np.array_equal(fixed.inputs, task.eval_set("val", 32, seed=1).inputs)
  assert not np.array_equal(fixed.inputs, task.sample(_rng(0, 0), 32, "val").inputs)


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("split", list(Split))
def test_shapes_padding_and_semantics(name, split):
  task = get_task(name, gold_operand="first") if name == "addition" else get_task(name)
  batch = task.sample(_rng(1), 48, split)
  width, t_width = task.max_input_len(split), task.max_target_len(split)
  assert batch.inputs.shape == (48, width) and batch.targets.shape == (48, t_width)
  assert batch.alignment.shape == (48, t_width)
  assert batch.input_lengths.shape == batch.target_lengths.shape == (48,)
  assert all(x.dtype == np.int32 for x in batch)
  # Same padded shape for every batch of the split, whatever the lengths drawn.
  other = task.sample(_rng(2), 5, split)
  assert other.inputs.shape[1] == width and other.targets.shape[1] == t_width

  for b in range(48):
    n, m = batch.input_lengths[b], batch.target_lengths[b]
    source = batch.inputs[b, :n].tolist()
    assert all(FIRST_SYMBOL <= t < task.vocab_size for t in source)
    assert np.all(batch.inputs[b, n:] == PAD)
    assert batch.targets[b, m - 1] == EOS and np.all(batch.targets[b, m:] == PAD)
    assert np.all(batch.alignment[b, m - 1 :] == -1)  # EOS and padding
    want_targets, want_alignment = _reference(task, source)
    assert batch.targets[b, : m - 1].tolist() == want_targets
    if name != "addition":
      assert batch.alignment[b, : m - 1].tolist() == want_alignment
      # The gold position holds the token to emit.
      np.testing.assert_array_equal(
        batch.inputs[b, batch.alignment[b, : m - 1]], batch.targets[b, : m - 1]
      )


@pytest.mark.parametrize("name", NAMES)
def test_ood_is_really_longer(name):
  task = get_task(name)
  train = task.sample(_rng(5), 256, "train")
  ood = task.sample(_rng(5), 256, "ood")
  assert task.max_input_len("ood") > task.max_input_len("train")
  assert ood.input_lengths.min() > task.max_input_len("train") >= train.input_lengths.max()
  assert task.max_input_len("val") == task.max_input_len("test") == task.max_input_len("train")


@pytest.mark.parametrize("name", NAMES)
def test_lengths_cover_the_training_range(name):
  task = get_task(name)
  lengths = set(task.sample(_rng(9), 2000, "train").input_lengths.tolist())
  ranges = {
    "recall": [2 * p + 2 for p in range(2, 9)],
    "addition": list(range(3, 8)),
    "localize": [5 * rows for rows in range(2, 6)],
  }
  assert lengths == set(ranges.get(name, range(1, 13)))


def test_hand_made_alignments():
  def solve(name, inputs, lengths, **kw):
    return get_task(name, **kw).from_sources(np.array(inputs), np.array(lengths))

  copy = solve("copy", [[5, 3, 7]], [3])
  assert copy.targets.tolist() == [[5, 3, 7, EOS]] and copy.alignment.tolist() == [[0, 1, 2, -1]]
  rev = solve("reverse", [[5, 3, 7, PAD]], [3])
  assert rev.targets.tolist() == [[7, 3, 5, EOS, PAD]]
  assert rev.alignment.tolist() == [[2, 1, 0, -1, -1]]
  # Stable sort with duplicates: the first 5 (index 0) precedes the second (index 2).
  srt = solve("sort", [[5, 3, 5, 4]], [4])
  assert srt.targets.tolist() == [[3, 4, 5, 5, EOS]]
  assert srt.alignment.tolist() == [[1, 3, 0, 2, -1]]
  # Keys 3.., values 19.., QUERY 29: "k0 v1 k1 v2 ? k1" -> v2 at position 3.
  rec = solve("recall", [[3, 20, 4, 21, 29, 4, PAD, PAD]], [6])
  assert rec.targets.tolist() == [[21, EOS]] and rec.alignment.tolist() == [[3, -1]]
  # 999 + 1 = 1000, digits reversed: 9 9 9 + 1 -> 0 0 0 1.
  add_src = [[12, 12, 12, 13, 4]]
  for gold, alignment in [
    ("none", [-1, -1, -1, -1, -1]),
    ("first", [0, 1, 2, -1, -1]),
    ("second", [4, -1, -1, -1, -1]),
  ]:
    add = solve("addition", add_src, [5], gold_operand=gold)
    assert add.targets.tolist() == [[3, 3, 3, 4, EOS]]
    assert add.alignment.tolist() == [alignment]
  # 27 + 9 = 36 with a padded source of the training width.
  add = solve("addition", [[10, 5, 13, 12, 0, 0, 0]], [4], gold_operand="second")
  assert add.targets.tolist() == [[9, 6, EOS, PAD, PAD]]
  assert add.alignment.tolist() == [[3, -1, -1, -1, -1]]


def test_localize_by_hand_and_its_grid():
  task = get_task("localize", grid_width=3, train_rows=(2, 2), ood_rows=(3, 3),
                  train_objects=(1, 2), ood_objects=(1, 3))  # fmt: skip
  empty = FIRST_SYMBOL
  # Row 0: . 7 .   row 1: 5 . .   -> classes in reading order 7, 5 at cells 1 and 3.
  grid = task.from_sources([[empty, 7, empty, 5, empty, empty]], [6])
  assert grid.targets.tolist() == [[7, 5, EOS]] and grid.alignment.tolist() == [[1, 3, -1]]
  # A grid of the OOD width (3 rows) holds up to ood_objects[1] = 3: a wider target.
  tall = task.from_sources([[6, empty, empty, empty, empty, 4, 4, empty, empty]], [9])
  assert tall.targets.tolist() == [[6, 4, 4, EOS]]
  assert tall.alignment.tolist() == [[0, 5, 6, -1]]
  # An empty grid is well formed: the target is EOS alone.
  assert task.from_sources([[empty] * 6], [6]).targets.tolist() == [[EOS, PAD, PAD]]
  # Rows and columns of the flattened cells; sequence tasks are one row.
  rows, cols = task.source_coordinates(7)
  assert rows.tolist() == [0, 0, 0, 1, 1, 1, 2] and cols.tolist() == [0, 1, 2, 0, 1, 2, 0]
  assert task.source_grid_width() == 3
  rows, cols = get_task("copy").source_coordinates(4)
  assert rows.tolist() == [0] * 4 and cols.tolist() == [0, 1, 2, 3]
  # The gold cell's coordinates locate the object: row 1, column 0 holds the 5 above.
  rows, cols = task.source_coordinates(6)
  assert (rows[3], cols[3]) == (1, 0)


def test_localize_draws_distinct_cells_and_every_object_count():
  task = get_task("localize")
  batch = task.sample(_rng(6), 2000, "train")
  counts = batch.target_lengths - 1
  assert set(counts.tolist()) == {1, 2, 3, 4}
  objects = (batch.inputs > FIRST_SYMBOL).sum(axis=1)  # distinct cells: none overwritten
  np.testing.assert_array_equal(objects, counts)
  # Objects land on every cell of the tallest grids (uniform cells, no position bias).
  cells = batch.alignment[(batch.alignment >= 0)]
  assert set(cells.tolist()) == set(range(task.max_input_len("train")))
  ood = task.sample(_rng(6), 500, "ood")
  assert set((ood.target_lengths - 1).tolist()) == {5, 6}
  assert set((ood.input_lengths // 5).tolist()) == {6, 7, 8}


@pytest.mark.parametrize(
  "name, inputs, lengths, message",
  [
    ("copy", [[3, 0, 4]], [3], "tokens must lie"),
    ("copy", [[3, 4, 5]], [2], "PAD"),
    ("copy", [[3, 4, 5]], [4], "length 4"),
    ("recall", [[3, 20, 3, 21, 29, 3]], [6], "distinct keys"),
    ("recall", [[3, 20, 4, 21, 29, 5]], [6], "queried key"),
    ("addition", [[4, 5, 6]], [3], "one '\\+'"),
    ("localize", [[3] * 7], [7], "whole rows of 5"),
    ("localize", [[4, 5, 6, 7, 8, 3, 3, 3, 3, 3]], [10], "at most 4 objects"),
    # The limit is the row's own grid's (2 rows: in distribution), not the padded width's.
    ("localize", [[4, 5, 6, 7, 8, 3, 3, 3, 3, 3] + [0] * 20], [10], "at most 4 objects"),
  ],
)
def test_from_sources_rejects_malformed_rows(name, inputs, lengths, message):
  with pytest.raises(ValueError, match=message):
    get_task(name).from_sources(np.array(inputs), np.array(lengths))


def test_from_sources_reproduces_sampled_batches():
  for name in NAMES:
    task = get_task(name)
    batch = task.sample(_rng(4), 32, "ood")
    _assert_batches_equal(batch, task.from_sources(batch.inputs, batch.input_lengths))


# -------------------------------------------------------------------------- splits


def _sources(batch):
  return {tuple(row[:n]) for row, n in zip(batch.inputs.tolist(), batch.input_lengths, strict=True)}


def test_splits_never_overlap_on_a_tiny_space():
  # 2 + 4 + ... + 64 = 126 sources. A length-6 source has P >= 1/384 per draw of its split,
  # so 5000 draws hit each source >= 13 times on average (P(miss) < exp(-13) each).
  task = get_task("copy", num_symbols=2, train_lengths=(1, 6), ood_lengths=(7, 7))
  seen = {s: _sources(task.sample(_rng(0), 5000, s)) for s in ("train", "val", "test")}
  assert not seen["train"] & seen["val"]
  assert not seen["train"] & seen["test"]
  assert not seen["val"] & seen["test"]
  assert len(seen["train"] | seen["val"] | seen["test"]) == 126
  for split in ("train", "val", "test"):
    batch = task.sample(_rng(1), 64, split)
    assert task.in_split(batch.inputs, split).all()


def test_split_of_a_source_ignores_padding_width():
  task = get_task("copy")
  batch = task.sample(_rng(2), 256, "train")
  wider = np.pad(batch.inputs, ((0, 0), (0, 12)))
  np.testing.assert_array_equal(
    splits_lib.source_fingerprint(batch.inputs), splits_lib.source_fingerprint(wider)
  )
  assert task.in_split(wider, "train").all() and not task.in_split(wider, "val").any()


def test_split_fractions_match_the_hash_buckets():
  # 20000 random OOD sources are unfiltered; P(val) = 0.1, sd = 0.0021: 5 sd tolerance.
  task = get_task("copy")
  inputs = task.sample(_rng(3), 20000, "ood").inputs
  for split, want in [("train", 0.8), ("val", 0.1), ("test", 0.1)]:
    assert abs(task.in_split(inputs, split).mean() - want) < 5 * np.sqrt(want * (1 - want) / 20000)


def test_empty_split_raises_a_clear_error():
  # One possible source: it hashes into exactly one split; the other two are empty.
  task = get_task("copy", num_symbols=1, train_lengths=(1, 1), ood_lengths=(2, 2))
  outcomes = {}
  for split in ("train", "val", "test"):
    try:
      outcomes[split] = task.sample(_rng(0), 4, split).inputs.tolist() == [[3]] * 4
    except RuntimeError as err:
      assert "nearly) empty" in str(err) and split in str(err)
      outcomes[split] = False
  assert sum(outcomes.values()) == 1


# ------------------------------------------------------------------- decoder inputs


def test_decoder_inputs_numpy_and_jit():
  targets = np.array([[5, 6, EOS, PAD], [7, EOS, PAD, PAD]], np.int32)
  want = [[BOS, 5, 6, EOS], [BOS, 7, EOS, PAD]]
  out = tasks.decoder_inputs(targets)
  assert isinstance(out, np.ndarray) and out.dtype == np.int32 and out.tolist() == want
  jitted = jax.jit(tasks.decoder_inputs)(jnp.asarray(targets))
  assert jitted.dtype == jnp.int32 and jitted.tolist() == want


def test_sampling_is_fast():
  # A loose bound (the contract is well under 1 ms on an idle core): catches per-example
  # Python loops, not noise on a shared machine.
  task = get_task("copy")
  task.sample(_rng(0), 64, "train")
  start = time.perf_counter()
  for step in range(50):
    task.sample(_rng(0, step), 64, "train")
  assert (time.perf_counter() - start) / 50 < 5e-3
