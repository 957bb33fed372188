"""Reads a run directory's TensorBoard event files back, with TensorBoard's own reader."""

import collections

import numpy as np
from tensorboard.backend.event_processing import event_accumulator
from tensorboard.plugins.hparams import plugin_data_pb2


def read_events(run: str) -> dict:
  """What TensorBoard shows for ``run``.

  Returns:
    ``{"scalars": {tag: [(step, value), ...]}, "images": {tag: [(step, width, height)]},
    "text": {tag: str}, "hparams": {name: value}, "ended": bool}``; every event, duplicates
    included (nothing is sampled away).
  """
  accumulator = event_accumulator.EventAccumulator(
    run, size_guidance={"scalars": 0, "images": 0, "tensors": 0}
  )
  accumulator.Reload()
  tags = accumulator.Tags()
  scalars = collections.defaultdict(list)
  for tag in tags["scalars"]:
    scalars[tag] = [(e.step, e.value) for e in accumulator.Scalars(tag)]
  images = {
    tag: [(e.step, e.width, e.height) for e in accumulator.Images(tag)] for tag in tags["images"]
  }
  text = {}
  for tag in tags["tensors"]:
    if tag.endswith("/text_summary"):
      (event,) = accumulator.Tensors(tag)
      text[tag.removesuffix("/text_summary")] = event.tensor_proto.string_val[0].decode()
  hparams, ended = {}, False
  for content in accumulator.PluginTagToContent("hparams").values():
    data = plugin_data_pb2.HParamsPluginData.FromString(content)
    if data.HasField("session_start_info"):
      for name, value in data.session_start_info.hparams.items():
        hparams[name] = getattr(value, value.WhichOneof("kind"))
    ended = ended or data.HasField("session_end_info")
  return {
    "scalars": dict(scalars),
    "images": images,
    "text": text,
    "hparams": hparams,
    "ended": ended,
  }


def scalar_rows(rows) -> dict:
  """What the events of ``metrics.jsonl`` rows must hold: ``{tag: [(step, value), ...]}``,
  each value as TensorBoard stores it (float32)."""
  expected = collections.defaultdict(list)
  for row in rows:
    for key, value in row.items():
      if key != "step" and isinstance(value, (int, float)) and not isinstance(value, bool):
        expected[key].append((row["step"], float(np.float32(value))))
  return dict(expected)
