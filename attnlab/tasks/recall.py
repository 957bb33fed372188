"""Key-value associative recall (Graves et al., 2014; Ba et al., 2016).

Source: ``k_1 v_1 k_2 v_2 ... k_p v_p QUERY k_j`` with ``p`` distinct keys and i.i.d.
values; target: ``v_j EOS``. The gold alignment of the answer is the position of ``v_j``,
``2 (j - 1) + 1``. Keys, values and the query marker are distinct tokens.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from attnlab.tasks import base
from attnlab.tasks.base import EOS, FIRST_SYMBOL, PAD, Batch
from attnlab.tasks.splits import Split


@dataclasses.dataclass(frozen=True, kw_only=True)
class RecallTask(base.Task):
  """Associative recall.

  Token ids: keys ``FIRST_SYMBOL + [0, num_keys)``, then values ``[0, num_values)``, then
  the query marker.

  Attributes:
    num_keys: distinct keys (every example uses distinct keys, so pairs <= num_keys).
    num_values: distinct values (repeats allowed within an example).
    train_pairs: inclusive range of the number of pairs for TRAIN/VAL/TEST.
    ood_pairs: inclusive range for OOD (all above training).
  """

  name = "recall"
  num_keys: int = 16
  num_values: int = 10
  train_pairs: tuple[int, int] = (2, 8)
  ood_pairs: tuple[int, int] = (9, 16)

  def __post_init__(self):
    super().__post_init__()
    for field in ("num_keys", "num_values"):
      value = getattr(self, field)
      if not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{field} must be a positive int, got {value!r}.")
    limit = dict(minimum=1, maximum=self.num_keys)
    self._set("train_pairs", base.check_range("train_pairs", self.train_pairs, **limit))
    self._set("ood_pairs", base.check_range("ood_pairs", self.ood_pairs, **limit))
    base.check_ood_longer("train_pairs", self.train_pairs, "ood_pairs", self.ood_pairs)

  @property
  def first_value_token(self) -> int:
    return FIRST_SYMBOL + self.num_keys

  @property
  def query_token(self) -> int:
    return self.first_value_token + self.num_values

  @property
  def vocab_size(self) -> int:
    return self.query_token + 1

  def max_input_len(self, split: Split | str) -> int:
    return 2 * self._pairs(split)[1] + 2

  def max_target_len(self, split: Split | str) -> int:
    return 2  # value, EOS

  def _pairs(self, split: Split | str) -> tuple[int, int]:
    return self.ood_pairs if Split.parse(split, name="split") is Split.OOD else self.train_pairs

  def _draw_sources(self, rng, n, split):
    low, high = self._pairs(split)
    pairs_B = rng.integers(low, high + 1, size=n)
    # p distinct keys: the first p of a random permutation of all keys.
    keys_BxP = FIRST_SYMBOL + np.argsort(rng.random((n, self.num_keys)), axis=1)[:, :high]
    values_BxP = self.first_value_token + rng.integers(0, self.num_values, size=(n, high))
    queried_B = rng.integers(0, pairs_B)
    valid_BxP = np.arange(high)[None, :] < pairs_B[:, None]
    inputs_BxS = np.full((n, 2 * high + 2), PAD, dtype=np.int32)
    inputs_BxS[:, 0 : 2 * high : 2] = np.where(valid_BxP, keys_BxP, PAD)
    inputs_BxS[:, 1 : 2 * high : 2] = np.where(valid_BxP, values_BxP, PAD)
    rows_B = np.arange(n)
    inputs_BxS[rows_B, 2 * pairs_B] = self.query_token
    inputs_BxS[rows_B, 2 * pairs_B + 1] = keys_BxP[rows_B, queried_B]
    return inputs_BxS, (2 * pairs_B + 2).astype(np.int32)

  def _key_matches(self, inputs_BxS, input_lengths_B):
    """bool ``[B, P]``: which pair's key equals the queried key."""
    keys_BxP = inputs_BxS[:, 0 : inputs_BxS.shape[1] - 2 : 2]
    in_pairs_BxP = 2 * np.arange(keys_BxP.shape[1])[None, :] < input_lengths_B[:, None] - 2
    query_key_B = inputs_BxS[np.arange(len(inputs_BxS)), input_lengths_B - 1]
    return in_pairs_BxP & (keys_BxP == query_key_B[:, None])

  def _solve(self, inputs_BxS, input_lengths_B):
    n = len(inputs_BxS)
    answer_pos_B = 2 * np.argmax(self._key_matches(inputs_BxS, input_lengths_B), axis=1) + 1
    targets_BxT = np.stack([inputs_BxS[np.arange(n), answer_pos_B], np.full(n, EOS)], axis=1)
    alignment_BxT = np.stack([answer_pos_B, np.full(n, -1)], axis=1)
    return Batch(
      inputs=inputs_BxS,
      input_lengths=input_lengths_B,
      targets=targets_BxT.astype(np.int32),
      target_lengths=np.full(n, 2, dtype=np.int32),
      alignment=alignment_BxT.astype(np.int32),
    )

  def _check_structure(self, inputs_BxS, input_lengths_B):
    for row, (tokens, length) in enumerate(zip(inputs_BxS, input_lengths_B, strict=True)):
      keys, values = tokens[0 : length - 2 : 2], tokens[1 : length - 2 : 2]
      if not (
        length % 2 == 0
        and length >= 4
        and tokens[length - 2] == self.query_token
        and np.all((keys >= FIRST_SYMBOL) & (keys < self.first_value_token))
        and np.all((values >= self.first_value_token) & (values < self.query_token))
        and len(set(keys.tolist())) == len(keys)
        and tokens[length - 1] in keys
      ):
        raise ValueError(
          f"row {row} {tokens[:length].tolist()}: expected k v ... k v QUERY k with "
          f"distinct keys in [{FIRST_SYMBOL}, {self.first_value_token}), values in "
          f"[{self.first_value_token}, {self.query_token}), QUERY = {self.query_token} "
          f"and a queried key present."
        )
