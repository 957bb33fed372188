"""The README example, verbatim: a hard-attention layer trained with REINFORCE + RLOO."""

import jax
import jax.numpy as jnp
import optax

import attnlab
from attnlab import estimators as est


def test_readme_example_learns_to_attend():
  # --- README example starts here ---
  S, D, K = 10, 16, 4  # source positions, width, samples per example (RLOO needs K >= 2)
  keys_SxD = jax.random.normal(jax.random.key(0), (S, D))  # the keys double as values
  target_S = jax.random.permutation(jax.random.key(1), S)  # query i must find target_S[i]
  queries_SxD = keys_SxD[target_S] + jax.random.normal(jax.random.key(2), (S, D))

  def loss_fn(w_DxD, key):
    def one_sample(key):  # hard attention: every query picks ONE source position
      out = attnlab.hard_attention(key, queries_SxD @ w_DxD, keys_SxD, keys_SxD)
      reward_S = -jnp.sum((out.context - keys_SxD[target_S]) ** 2, axis=-1)
      return out.log_prob, reward_S

    log_prob_KxS, reward_KxS = jax.vmap(one_sample)(jax.random.split(key, K))
    baseline_KxS = est.leave_one_out_baseline(reward_KxS)  # mean of the other K-1 rewards
    return est.score_function_surrogate(log_prob_KxS, reward_KxS, baseline_KxS) / K

  optimizer = optax.adam(0.05)
  w_DxD = jnp.zeros((D, D))  # uniform attention at the start
  opt_state = optimizer.init(w_DxD)

  @jax.jit
  def train_step(w_DxD, opt_state, key):
    updates, opt_state = optimizer.update(jax.grad(loss_fn)(w_DxD, key), opt_state)
    return optax.apply_updates(w_DxD, updates), opt_state

  for step in range(150):
    w_DxD, opt_state = train_step(w_DxD, opt_state, jax.random.fold_in(jax.random.key(3), step))

  out = attnlab.hard_attention(None, queries_SxD @ w_DxD, keys_SxD, keys_SxD, mode="argmax")
  print(f"accuracy {jnp.mean(out.index == target_S):.2f}")  # accuracy 1.00
  # --- README example ends here ---
  assert jnp.all(out.index == target_S)
  assert jnp.mean(out.probs[jnp.arange(S), target_S]) > 0.95
  untrained = attnlab.hard_attention(
    None, queries_SxD @ jnp.zeros((D, D)), keys_SxD, keys_SxD, mode="argmax"
  )
  assert jnp.mean(untrained.probs[jnp.arange(S), target_S]) < 0.2  # uniform: 1/S
