"""Analytic FLOP counts of convolutions and matrix products, read off a function's jaxpr.

XLA's ``Compiled.cost_analysis()`` cannot be used for utilisation on a GPU: the convolutions of the compiled
program are cuDNN custom calls, which it does not count (it reported 0.2% of an H200's peak for a ResNet-50 step
that runs at about 12%). Its count of the unoptimised program counts only the products that do not touch a
convolution's zero padding, 7% below the convention for ResNet-18. The convention, used here, is the one
published model sizes and utilisation figures use: each multiply-accumulate of a convolution or matrix product
is 2 FLOPs, over the padded input, and element-wise work (BatchNorm, activations, the optimizer) is not counted.

Training: autodiff computes, for each convolution or product, one more product of the same size for each operand
that depends on the parameters (the weights' gradient, and the input's gradient unless the input is data): a
convolution deep in a network costs 3x its forward FLOPs, the first one 2x.
"""

from __future__ import annotations

import math
from typing import Any, Callable

import jax
from jax.extend import core as jax_core

# Primitives whose operands and outputs line up with a sub-jaxpr's inputs and outputs (a call of it).
_CALL_JAXPR_PARAMS = ("jaxpr", "call_jaxpr", "fun_jaxpr")


def _macs(eqn) -> int:
  """Multiply-accumulates of one conv_general_dilated or dot_general equation (0 for any other)."""
  name = eqn.primitive.name
  out_elements = math.prod(eqn.outvars[0].aval.shape)
  if name == "conv_general_dilated":
    rhs = eqn.invars[1].aval.shape
    spec = eqn.params["dimension_numbers"].rhs_spec  # (out features, in features, *spatial)
    return out_elements * rhs[spec[1]] * math.prod(rhs[d] for d in spec[2:])
  if name == "dot_general":
    (lhs_contracting, _), _ = eqn.params["dimension_numbers"]
    lhs = eqn.invars[0].aval.shape
    return out_elements * math.prod(lhs[d] for d in lhs_contracting)
  return 0


def _walk(jaxpr, dependent: list[bool]) -> tuple[int, int, list[bool]]:
  """``(forward MACs, backward MACs, which outputs depend on the parameters)`` of ``jaxpr``, whose inputs depend on
  the parameters where ``dependent`` says so."""
  marks = {var: flag for var, flag in zip(jaxpr.invars, dependent)}

  def is_dependent(atom) -> bool:
    return not isinstance(atom, jax_core.Literal) and marks.get(atom, False)

  forward = backward = 0
  for eqn in jaxpr.eqns:
    inputs = [is_dependent(atom) for atom in eqn.invars]
    subs = [eqn.params[key] for key in _CALL_JAXPR_PARAMS if key in eqn.params]
    if eqn.primitive.name == "scan":
      sub = eqn.params["jaxpr"]
      f, b, outputs = _walk(sub.jaxpr, inputs)
      forward, backward = forward + f * eqn.params["length"], backward + b * eqn.params["length"]
    elif eqn.primitive.name == "cond":
      counts = [_walk(branch.jaxpr, inputs[1:]) for branch in eqn.params["branches"]]
      forward += max(c[0] for c in counts)
      backward += max(c[1] for c in counts)
      outputs = [any(flags) for flags in zip(*(c[2] for c in counts))]
    elif subs:
      sub = subs[0]
      f, b, outputs = _walk(getattr(sub, "jaxpr", sub), inputs)
      forward, backward = forward + f, backward + b
    elif any(isinstance(value, (jax_core.Jaxpr, jax_core.ClosedJaxpr)) for value in eqn.params.values()):
      raise NotImplementedError(f"flops: cannot count inside {eqn.primitive.name!r} (a loop of unknown length?)")
    else:
      macs = _macs(eqn)
      forward += macs
      if macs:
        backward += macs * sum(inputs[:2])
      outputs = [any(inputs)] * len(eqn.outvars)
    for var, flag in zip(eqn.outvars, outputs):
      marks[var] = flag
  return forward, backward, [is_dependent(atom) for atom in jaxpr.outvars]


def forward_flops(fn: Callable, *args: Any) -> int:
  """2 x the multiply-accumulates of every convolution and matrix product that ``fn(*args)`` computes.

  ``args`` may be arrays or ``jax.ShapeDtypeStruct`` s: nothing is computed. ResNet-50 at 224 px:
  ``forward_flops(model.apply, variables, images[:1])`` = 8.2e9 (4.1 GMACs, as published).
  """
  closed = jax.make_jaxpr(fn)(*args)
  forward, _, _ = _walk(closed.jaxpr, [False] * len(closed.jaxpr.invars))
  return 2 * forward


def training_flops(fn: Callable, params: Any, *args: Any) -> int:
  """FLOPs of ``jax.grad(fn)(params, *args)`` with its forward pass: forward + backward convolutions and products.

  Each convolution or product counts 2 FLOPs per multiply-accumulate forward, and as many again for each of its
  two operands that depends on ``params`` (whose gradient autodiff computes).
  """
  closed = jax.make_jaxpr(fn)(params, *args)
  num_params = len(jax.tree.leaves(params))
  dependent = [i < num_params for i in range(len(closed.jaxpr.invars))]
  forward, backward, _ = _walk(closed.jaxpr, dependent)
  return 2 * (forward + backward)
