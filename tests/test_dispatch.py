"""The attention dispatcher: a pure, testable choice, identical results, a visible choice."""

import dataclasses
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import attnlab
from attnlab.efficient import dispatch
from attnlab.efficient.dispatch import AttentionProblem, DeviceFacts, Implementation, MaskKind

TOL = dict(atol=1e-5, rtol=1e-5)
# Declared devices: (platform, compute capability, cuDNN version).
A100 = DeviceFacts("cuda", (8, 0), 90300)
RTX_3090 = DeviceFacts("cuda", (8, 6), 90300)
H100 = DeviceFacts("cuda", (9, 0), 90300)
V100 = DeviceFacts("cuda", (7, 0), 90300)  # Volta: pre-Ampere
T4 = DeviceFacts("cuda", (7, 5), 90300)  # Turing: pre-Ampere
A100_NO_CUDNN = DeviceFacts("cuda", (8, 0), None)
MI300 = DeviceFacts("rocm")
CPU = DeviceFacts("cpu")
TPU = DeviceFacts("tpu")
_GPU_BF16 = AttentionProblem(
    device=A100, dtype="bfloat16", batch=2, q_len=1024, k_len=1024, heads=8, head_dim=64,
    value_dim=64, mask_kind=MaskKind.NONE,
)  # fmt: skip


@pytest.mark.parametrize("dtype", ["float32", "bfloat16", "float16"])
@pytest.mark.parametrize("mask_kind", list(MaskKind))
@pytest.mark.parametrize("length", [16, 4096])
def test_cpu_never_picks_cudnn(dtype, mask_kind, length):
  problem = dataclasses.replace(
    _GPU_BF16, device=CPU, dtype=dtype, mask_kind=mask_kind, q_len=length, k_len=length
  )
  assert dispatch.choose_implementation(problem) in (Implementation.SOFT, Implementation.CHUNKED)


@pytest.mark.parametrize("device", [A100, RTX_3090, H100], ids=["sm80", "sm86", "sm90"])
@pytest.mark.parametrize("mask_kind", [MaskKind.NONE, MaskKind.CAUSAL])
def test_ampere_or_newer_half_precision_without_arbitrary_mask_picks_cudnn(device, mask_kind):
  problem = dataclasses.replace(_GPU_BF16, device=device, mask_kind=mask_kind)
  assert dispatch.choose_implementation(problem) is Implementation.CUDNN
  fp16 = dataclasses.replace(problem, dtype="float16", head_dim=128, value_dim=128)
  assert dispatch.choose_implementation(fp16) is Implementation.CUDNN


@pytest.mark.parametrize(
  "device, reason",
  [
    (V100, r"compute capability 7\.0 < 8\.0"),
    (T4, r"compute capability 7\.5 < 8\.0"),
    (DeviceFacts("cuda", None, 90300), "compute capability unknown"),
    (A100_NO_CUDNN, "no cuDNN is loaded"),
    (MI300, "platform 'rocm' is not CUDA"),
    (TPU, "platform 'tpu' is not CUDA"),
    (CPU, "platform 'cpu' is not CUDA"),
    (DeviceFacts("cuda", (10, 3), 91000), r"10\.3 needs cuDNN >= 9\.11"),
  ],
)
def test_devices_without_cudnn_attention_fall_back_and_say_why(device, reason):
  problem = dataclasses.replace(_GPU_BF16, device=device)
  # attnlab's own form instead (2^24 scores: the chunked kernel), not an error.
  assert dispatch.choose_implementation(problem) is Implementation.CHUNKED
  assert re.search(reason, dispatch.cudnn_unsupported_reason(device, "bfloat16", 64, 64))
  assert dispatch.cudnn_unsupported_reason(A100, "bfloat16", 64, 64) is None


def test_head_dim_limit_is_128_before_hopper_and_256_from_it():
  wide = dataclasses.replace(_GPU_BF16, head_dim=256, value_dim=256)
  assert dispatch.choose_implementation(dataclasses.replace(wide, device=A100)) is not (
    Implementation.CUDNN
  )
  assert dispatch.choose_implementation(dataclasses.replace(wide, device=H100)) is (
    Implementation.CUDNN
  )
  assert dispatch.cudnn_unsupported_reason(H100, "bfloat16", 264, 264) is not None


def test_device_facts_read_from_a_device_and_capabilities_parsed():
  device = jax.devices()[0]
  facts = DeviceFacts.of(device)
  if device.platform in ("cpu", "tpu"):
    assert facts == DeviceFacts(device.platform)  # Only NVIDIA GPUs have a capability.
  else:  # JAX calls CUDA and ROCm devices "gpu": the facts say which.
    assert facts.platform in ("cuda", "rocm")
    assert (facts.compute_capability is not None) == (facts.platform == "cuda")
  assert dispatch.parse_compute_capability("8.6") == (8, 6)
  assert dispatch.parse_compute_capability("10.0") == (10, 0)
  assert dispatch.parse_compute_capability("gfx90a") is None
  assert dispatch.parse_compute_capability("") is None


@pytest.mark.parametrize(
  "change",
  [
    dict(dtype="float32"),  # cuDNN flash attention is half precision only
    dict(mask_kind=MaskKind.DENSE),  # could hide empty rows behind jax.nn's uniform output
    dict(mask_kind=MaskKind.KEY_PADDING),
    dict(head_dim=256, value_dim=256),
    dict(head_dim=60, value_dim=60),
    dict(value_dim=32),
    dict(device=TPU),
    dict(device=MI300),
    dict(device=V100),
    dict(device=A100_NO_CUDNN),
  ],
)
def test_gpu_falls_back_to_attnlab_outside_cudnn_support(change):
  problem = dataclasses.replace(_GPU_BF16, **change)
  assert dispatch.choose_implementation(problem) is not Implementation.CUDNN


def test_cpu_picks_plain_for_short_keys_or_a_bias_and_chunked_beyond():
  short = dataclasses.replace(_GPU_BF16, device=CPU, k_len=dispatch.PLAIN_MAX_KEYS)
  long = dataclasses.replace(short, k_len=dispatch.PLAIN_MAX_KEYS + 1)
  assert dispatch.choose_implementation(short) is Implementation.SOFT
  assert dispatch.choose_implementation(long) is Implementation.CHUNKED
  # Longer keys, but few scores in all (one example, one head): still the plain form.
  small = dataclasses.replace(long, batch=1, heads=1, q_len=64, k_len=4096)
  assert small.batch * small.heads * small.q_len * small.k_len <= dispatch.PLAIN_MAX_SCORES
  assert dispatch.choose_implementation(small) is Implementation.SOFT
  assert dispatch.choose_implementation(dataclasses.replace(long, has_bias=True)) is (
    Implementation.SOFT
  )
  gpu_bias = dataclasses.replace(_GPU_BF16, has_bias=True)  # cuDNN gets no bias from attnlab
  assert dispatch.choose_implementation(gpu_bias) is not Implementation.CUDNN


def test_mask_kind_classification():
  assert dispatch.mask_kind(None, False) is MaskKind.NONE
  assert dispatch.mask_kind(None, True) is MaskKind.CAUSAL
  assert dispatch.mask_kind(jnp.ones((2, 1, 1, 5), bool), True) is MaskKind.KEY_PADDING
  assert dispatch.mask_kind(jnp.ones((2, 1, 3, 5), bool), False) is MaskKind.DENSE


def _inputs(batch=2, q_len=7, k_len=9, heads=3, depth=8, seed=0):
  keys = jax.random.split(jax.random.key(seed), 4)
  q = jax.random.normal(keys[0], (batch, q_len, heads, depth))
  k = jax.random.normal(keys[1], (batch, k_len, heads, depth))
  v = jax.random.normal(keys[2], (batch, k_len, heads, depth))
  dense = jax.random.bernoulli(keys[3], 0.6, (batch, 1, q_len, k_len)).at[0, 0, 2].set(False)
  padding = jnp.ones((batch, 1, 1, k_len), bool).at[1].set(False)  # example 1: nothing visible
  return q, k, v, dense, padding


@pytest.mark.parametrize(
  "mask_name, causal", [("none", False), ("none", True), ("dense", True), ("padding", False)]
)
def test_all_cpu_implementations_agree_with_multi_head_soft_attention(mask_name, causal):
  q, k, v, dense, padding = _inputs()
  mask = dict(none=None, dense=dense, padding=padding)[mask_name]
  full = jnp.ones((1, 1, 7, 9), bool) if mask is None else mask
  if causal:
    full = full & attnlab.causal_mask(7, 9)[None, None]
  cotangent = jax.random.normal(jax.random.key(9), q.shape)

  def value_and_grads(fn):
    def loss(q, k, v):
      out = fn(q, k, v)
      return jnp.sum(out * cotangent), out

    return jax.jit(jax.grad(loss, argnums=(0, 1, 2), has_aux=True))(q, k, v)

  ref_grads, ref_out = value_and_grads(
    lambda q, k, v: attnlab.multi_head_soft_attention(q, k, v, full)[0]
  )
  for impl in ("soft", "chunked", "xla"):

    def via_dispatch(q, k, v, impl=impl):
      return dispatch.dot_product_attention(
        q, k, v, mask=mask, is_causal=causal, implementation=impl
      )

    grads, out = value_and_grads(via_dispatch)
    choice = dispatch.dispatch_implementation(
      q, k, v, mask=mask, is_causal=causal, implementation=impl
    )
    assert choice is Implementation(impl)
    np.testing.assert_allclose(out, ref_out, **TOL, err_msg=impl)
    for g, r in zip(grads, ref_grads, strict=True):
      np.testing.assert_allclose(g, r, **TOL, err_msg=impl)
  # Queries that see no key get zeros from every implementation, jax.nn included.
  if mask_name == "padding":
    np.testing.assert_array_equal(out[1], 0.0)


def test_automatic_choice_is_reported_and_matches_choose_implementation():
  q, k, v, _, _ = _inputs(q_len=520, k_len=dispatch.PLAIN_MAX_KEYS + 3, heads=8)
  assert 2 * 8 * 520 * (dispatch.PLAIN_MAX_KEYS + 3) > dispatch.PLAIN_MAX_SCORES
  out = dispatch.dot_product_attention(q, k, v, is_causal=True)
  choice = dispatch.dispatch_implementation(q, k, v, is_causal=True)
  problem = AttentionProblem(
      device=DeviceFacts.of(jax.devices()[0]), dtype="float32", batch=2, q_len=520,
      k_len=dispatch.PLAIN_MAX_KEYS + 3, heads=8, head_dim=8, value_dim=8,
      mask_kind=MaskKind.CAUSAL, kv_heads=8,
  )  # fmt: skip
  assert choice is dispatch.choose_implementation(problem) is Implementation.CHUNKED
  # Shapes are enough: the choice is static and computes nothing.
  structs = [jax.ShapeDtypeStruct(x.shape, x.dtype) for x in (q, k, v)]
  assert dispatch.dispatch_implementation(*structs, is_causal=True) is choice
  half = [jax.ShapeDtypeStruct(x.shape, jnp.bfloat16) for x in (q, k, v)]
  assert dispatch.dispatch_implementation(*half, is_causal=True, device=H100) is (
    Implementation.CUDNN
  )
  for device in (V100, MI300, A100_NO_CUDNN, TPU):  # The same call where cuDNN cannot run it.
    assert dispatch.dispatch_implementation(*half, is_causal=True, device=device) is (
      Implementation.CHUNKED
    )
  # No device given: the arrays' own (shapes alone: the default device). On a CPU, never cuDNN.
  here = DeviceFacts.of(jax.devices()[0])
  expected = Implementation.CHUNKED
  if dispatch.cudnn_unsupported_reason(here, "bfloat16", 8, 8) is None:
    expected = Implementation.CUDNN
  assert dispatch.dispatch_implementation(*half, is_causal=True) is expected
  assert dispatch.target_device(q) == here
  assert dispatch.target_device(half[0]) == DeviceFacts.of(jax.devices()[0])  # The default.
  forced = dispatch.dot_product_attention(q, k, v, is_causal=True, implementation="soft")
  np.testing.assert_allclose(out, forced, **TOL)
  jitted_out = jax.jit(dispatch.dot_product_attention, static_argnames="is_causal")(
    q, k, v, is_causal=True
  )
  np.testing.assert_allclose(jitted_out, out, **TOL)


def test_bad_overrides_are_explained():
  q, k, v, dense, _ = _inputs()
  with pytest.raises(
    ValueError, match=r"'flash' is invalid; valid choices: \['cudnn', 'xla', 'soft'"
  ):
    dispatch.dot_product_attention(q, k, v, implementation="flash")
  with pytest.raises(ValueError, match="cannot run here: platform 'cpu' is not CUDA"):
    dispatch.dispatch_implementation(q, k, v, implementation="cudnn", device=CPU)
  half = [x.astype(jnp.bfloat16) for x in (q, k, v)]
  with pytest.raises(ValueError, match=r"cannot run here: compute capability 7\.5 < 8\.0"):
    dispatch.dispatch_implementation(*half, implementation="cudnn", device=T4)
  with pytest.raises(ValueError, match="mask kind 'dense'"):
    dispatch.dispatch_implementation(*half, mask=dense, implementation="cudnn", device=A100)
  assert dispatch.dispatch_implementation(*half, implementation="cudnn", device=A100) is (
    Implementation.CUDNN
  )
  with pytest.raises(TypeError, match="boolean"):
    dispatch.dot_product_attention(q, k, v, mask=dense.astype(jnp.float32))
  with pytest.raises(ValueError, match="does not take a bias"):
    dispatch.dot_product_attention(q, k, v, dense.astype(jnp.float32), implementation="chunked")
