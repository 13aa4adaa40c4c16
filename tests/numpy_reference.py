"""Independent float64 NumPy implementations of the losses, written per example.

Classes stand for the labels ``start_age + step * j`` (``step`` 1: whole years).

They follow SPEC.md section 2 directly, with gradients from the closed form
dL/dz = p * (dL/dp - <p, dL/dp>) (plus p - onehot for the cross-entropy), so
they share no code and no autodiff with amr_jax.
"""

import numpy as np

EPS = 1e-3


def softmax(z):
  z = np.asarray(z, np.float64)
  e = np.exp(z - z.max())
  return e / e.sum()


def log_softmax(z):
  z = np.asarray(z, np.float64)
  shifted = z - z.max()
  return shifted - np.log(np.exp(shifted).sum())


def label_class(y, num_classes, start_age, step=1):
  return int(np.clip(np.round((y - start_age) / step), 0, num_classes - 1))


def _per_example(fn, logits, labels, **kw):
  values, grads, extras = [], [], []
  for z, y in zip(np.asarray(logits, np.float64), np.asarray(labels, np.float64)):
    v, g, e = fn(z, y, **kw)
    values.append(v)
    grads.append(g)
    extras.append(e)
  return np.array(values), np.array(grads), extras


def _softmax_backward(p, dl_dp):
  return p * (dl_dp - np.dot(p, dl_dp))


def amr_example(z, y, *, start_age=0, step=1, lambda_mean=0.2, lambda_residue=0.05, eps=EPS,
                top=None, form="reference", adaptive=True):
  """Returns (loss, dloss/dz, info) for one example. ``top``: fixed K, or None for adaptive."""
  C = len(z)
  p, logp = softmax(z), log_softmax(z)
  a = start_age + step * np.arange(C)
  c = label_class(y, C, start_age, step)
  m = float(p @ a)
  if top is None:
    selected = [j for j in range(C) if p[j] >= p[c]]
  else:
    # Largest first; among equal probabilities the lower index first.
    selected = sorted(range(C), key=lambda j: (-p[j], j))[:top]
  in_top = np.zeros(C, bool)
  in_top[selected] = True

  ce = -logp[c]
  mean = 0.5 * (m - y) ** 2
  residue = 0.0
  d_residue = np.zeros(C)
  for j in range(C):
    if in_top[j]:
      if form == "reference" and adaptive:
        residue += -eps * np.log(eps)
      continue
    if form == "reference":
      residue += -(p[j] + eps) * np.log(p[j] + eps)
      d_residue[j] = -(np.log(p[j] + eps) + 1)
    else:
      residue += -p[j] * logp[j]
      d_residue[j] = -(logp[j] + 1)
  loss = ce + lambda_mean * mean + lambda_residue * residue

  one_hot = np.eye(C)[c]
  grad = (p - one_hot) + _softmax_backward(p, lambda_mean * (m - y) * a + lambda_residue * d_residue)
  info = dict(cross_entropy=ce, mean=mean, residue=residue, top_k=len(selected),
              grad_residue=_softmax_backward(p, d_residue))
  return loss, grad, info


def amr(logits, labels, **kw):
  return _per_example(amr_example, logits, labels, **kw)


def mean_residue(logits, labels, *, k=3, **kw):
  return _per_example(amr_example, logits, labels, top=k, adaptive=False, **kw)


def mean_variance_example(z, y, *, start_age=0, step=1, lambda_mean=0.2, lambda_variance=0.05):
  C = len(z)
  p, logp = softmax(z), log_softmax(z)
  a = start_age + step * np.arange(C)
  c = label_class(y, C, start_age, step)
  m = float(p @ a)
  variance = float(p @ (a - m) ** 2)
  loss = -logp[c] + lambda_mean * 0.5 * (m - y) ** 2 + lambda_variance * variance
  # d variance / d p_j = (a_j - m)^2 (the m-dependence cancels: sum_j p_j (a_j - m) = 0).
  dl_dp = lambda_mean * (m - y) * a + lambda_variance * (a - m) ** 2
  grad = p - np.eye(C)[c] + _softmax_backward(p, dl_dp)
  return loss, grad, dict(mean=0.5 * (m - y) ** 2, variance=variance)


def mean_variance(logits, labels, **kw):
  return _per_example(mean_variance_example, logits, labels, **kw)


def gaussian_target(y, C, sigma, start_age=0, step=1):
  a = start_age + step * np.arange(C)
  if sigma == 0:
    g = np.zeros(C)
    g[label_class(y, C, start_age, step)] = 1.0
    return g
  w = np.exp(-((a - y) ** 2) / (2 * sigma**2) - np.max(-((a - y) ** 2) / (2 * sigma**2)))
  return w / w.sum()


def dldl_v2_example(z, y, *, sigma=2.0, lambda_l1=1.0, start_age=0, step=1, kl_reduction="sum"):
  C = len(z)
  p, logp = softmax(z), log_softmax(z)
  a = start_age + step * np.arange(C)
  g = gaussian_target(y, C, sigma, start_age, step)
  kl = sum(g[j] * (np.log(g[j]) - logp[j]) for j in range(C) if g[j] > 0)
  scale = 1.0 / C if kl_reduction == "mean" else 1.0
  m = float(p @ a)
  loss = scale * kl + lambda_l1 * abs(m - y)
  grad = scale * (p - g) + _softmax_backward(p, lambda_l1 * np.sign(m - y) * a)
  return loss, grad, dict(kl=scale * kl, l1=abs(m - y))


def dldl_v2(logits, labels, *, sigma=2.0, **kw):
  sigmas = np.broadcast_to(np.asarray(sigma, np.float64), np.shape(labels))
  out = [dldl_v2_example(z, y, sigma=s, **kw)
         for z, y, s in zip(np.asarray(logits, np.float64), np.asarray(labels, np.float64), sigmas)]
  return np.array([o[0] for o in out]), np.array([o[1] for o in out]), [o[2] for o in out]
