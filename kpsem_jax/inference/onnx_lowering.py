"""A jitted JAX function as an ONNX graph: its jaxpr, equation by equation, as ONNX nodes.

    model = to_onnx(fn, example_args, input_names=["clips"], output_names=["logits"])

Equations whose inputs are all known (the weights, closed over; iotas; literals) are
evaluated here and become initializers, so BatchNorm's scale and shift, weight reshapes and
every other weight-only computation arrive folded. The rest is lowered by :data:`LOWERINGS`
(the primitives the project's models use at inference: convolutions, ``dot_general`` as
``Einsum``, element-wise arithmetic, reductions, AReSE's argmax, cumsum and point gathers);
an unknown primitive is a :class:`LoweringError` naming it. Shapes are static (the traced
ones), channels-last as in the jaxpr: a convolution is wrapped in transposes to ONNX's
channels-first layout, which ONNX Runtime and OpenVINO fold away.
"""

from typing import Any, Callable, Dict, List, Sequence

import jax
from jax.extend import core as jax_core
import numpy as np

OPSET = 17


class LoweringError(ValueError):
  """A primitive or parameter this lowering does not handle; the message names it."""


class _Graph:
  """ONNX nodes and initializers under construction; values are names or numpy constants."""

  def __init__(self):
    self.nodes, self.initializers, self._count = [], [], 0
    self._constant_names: Dict[int, str] = {}
    self._constants: List[Any] = []  # kept alive, so no two constants share an id

  def fresh(self, hint: str) -> str:
    self._count += 1
    return f"{hint}_{self._count}"

  def name(self, value) -> str:
    """The tensor name of ``value`` (a numpy constant becomes an initializer, once)."""
    if isinstance(value, str):
      return value
    key = id(value)
    if key not in self._constant_names:
      from onnx import numpy_helper  # pylint: disable=import-outside-toplevel
      name = self.fresh("const")
      self.initializers.append(numpy_helper.from_array(np.asarray(value), name))
      self._constant_names[key] = name
      self._constants.append(value)
    return self._constant_names[key]

  def node(self, op: str, inputs: Sequence[Any], **attrs) -> str:
    from onnx import helper  # pylint: disable=import-outside-toplevel
    out = self.fresh(op.lower())
    self.nodes.append(helper.make_node(op, [self.name(i) for i in inputs], [out], **attrs))
    return out


def _i64(values) -> np.ndarray:
  return np.asarray(values, np.int64)


def _onnx_type(dtype) -> int:
  from onnx import helper  # pylint: disable=import-outside-toplevel
  return helper.np_dtype_to_tensor_dtype(np.dtype(dtype))


def _elementwise(op: str) -> Callable:
  return lambda g, eqn, *xs: g.node(op, xs)


def _conv(g: _Graph, eqn, lhs, rhs):
  p = eqn.params
  lhs_spec, rhs_spec, out_spec = p["dimension_numbers"]
  if any(d != 1 for d in p["lhs_dilation"]) or p["batch_group_count"] != 1:
    raise LoweringError("conv_general_dilated with lhs_dilation or batch groups")
  x = g.node("Transpose", [lhs], perm=list(lhs_spec))  # N, C, spatial...
  if isinstance(rhs, str):
    w = g.node("Transpose", [rhs], perm=list(rhs_spec))
  else:
    w = np.ascontiguousarray(np.transpose(rhs, rhs_spec))  # O, I/groups, spatial...
  pads = [lo for lo, _ in p["padding"]] + [hi for _, hi in p["padding"]]
  y = g.node("Conv", [x, w], strides=list(p["window_strides"]), pads=pads,
             dilations=list(p["rhs_dilation"]), group=p["feature_group_count"])
  return g.node("Transpose", [y], perm=list(np.argsort(out_spec)))


def _dot_general(g: _Graph, eqn, lhs, rhs):
  (lc, rc), (lb, rb) = eqn.params["dimension_numbers"]
  letters = iter("abcdefghijklmnopqrstuvwxyz")
  lhs_l = [next(letters) for _ in range(eqn.invars[0].aval.ndim)]
  rhs_l = [None] * eqn.invars[1].aval.ndim
  for i, j in zip(lb, rb):
    rhs_l[j] = lhs_l[i]
  for i, j in zip(lc, rc):
    rhs_l[j] = lhs_l[i]
  rhs_l = [c or next(letters) for c in rhs_l]
  out = ([lhs_l[i] for i in lb] + [c for i, c in enumerate(lhs_l) if i not in lb + lc]
         + [c for j, c in enumerate(rhs_l) if j not in rb + rc])
  return g.node("Einsum", [lhs, rhs],
                equation=f"{''.join(lhs_l)},{''.join(rhs_l)}->{''.join(out)}")


def _broadcast_in_dim(g: _Graph, eqn, x):
  shape, dims = eqn.params["shape"], eqn.params["broadcast_dimensions"]
  kept = [1] * len(shape)
  for src, dst in enumerate(dims):
    kept[dst] = eqn.invars[0].aval.shape[src]
  return g.node("Expand", [g.node("Reshape", [x, _i64(kept)]), _i64(shape)])


def _reduce(op: str) -> Callable:
  def lower(g, eqn, x):
    axes = list(eqn.params["axes"])
    if op == "ReduceSum":  # axes as an input since opset 13
      return g.node(op, [x, _i64(axes)], keepdims=0)
    return g.node(op, [x], axes=axes, keepdims=0)
  return lower


def _argmax(g: _Graph, eqn, x):
  (axis,) = eqn.params["axes"]
  index = g.node("ArgMax", [x], axis=int(axis), keepdims=0, select_last_index=0)
  return g.node("Cast", [index], to=_onnx_type(eqn.params["index_dtype"]))


def _slice(g: _Graph, eqn, x):
  p = eqn.params
  rank = len(p["start_indices"])
  return g.node("Slice", [x, _i64(p["start_indices"]), _i64(p["limit_indices"]),
                          _i64(range(rank)), _i64(p["strides"] or [1] * rank)])


def _pad(g: _Graph, eqn, x, value):
  config = eqn.params["padding_config"]
  if any(interior for _, _, interior in config):
    raise LoweringError("pad with interior padding")
  pads = [lo for lo, _, _ in config] + [hi for _, hi, _ in config]
  return g.node("Pad", [x, _i64(pads), value], mode="constant")


def _select_n(g: _Graph, eqn, which, *cases):
  if len(cases) != 2:
    raise LoweringError(f"select_n of {len(cases)} cases")
  if eqn.invars[0].aval.dtype != np.bool_:
    which = g.node("Cast", [which], to=_onnx_type(np.bool_))
  return g.node("Where", [which, cases[1], cases[0]])


def _gather(g: _Graph, eqn, operand, indices):
  """A point gather (every slice of size 1, none kept): operand's flat index computed from
  the index values and, for batching dimensions, the position in ``indices``."""
  p = eqn.params
  dn = p["dimension_numbers"]
  shape = eqn.invars[0].aval.shape
  index_shape = eqn.invars[1].aval.shape[:-1]  # the index vector is the last dimension
  if dn.offset_dims or any(s != 1 for s in p["slice_sizes"]):
    raise LoweringError("gather with slices larger than one element")
  strides = np.cumprod((1,) + shape[::-1])[-2::-1]
  flat = None
  for d, size in enumerate(shape):
    if d in dn.start_index_map:
      k = list(dn.start_index_map).index(d)
      ends = _i64([k + 1])
      coord = g.node("Squeeze", [g.node("Slice", [indices, _i64([k]), ends, _i64([-1])]),
                                 _i64([-1])])
      coord = g.node("Clip", [g.node("Cast", [coord], to=_onnx_type(np.int64)),
                              _i64(0), _i64(size - 1)])
    elif d in dn.operand_batching_dims:
      axis = dn.start_indices_batching_dims[list(dn.operand_batching_dims).index(d)]
      view = [1] * len(index_shape)
      view[axis] = size
      coord = np.arange(size, dtype=np.int64).reshape(view)
    else:
      raise LoweringError("gather over a dimension that is neither indexed nor batched")
    term = g.node("Mul", [coord, _i64(strides[d])])
    flat = term if flat is None else g.node("Add", [flat, term])
  flat = g.node("Expand", [flat, _i64(index_shape)])
  return g.node("Gather", [g.node("Reshape", [operand, _i64([-1])]), flat], axis=0)


def _cumsum(g: _Graph, eqn, x):
  return g.node("CumSum", [x, _i64(eqn.params["axis"])], reverse=int(eqn.params["reverse"]))


def _stack(g: _Graph, eqn, *xs):
  axis = eqn.params["axis"]
  return g.node("Concat", [g.node("Unsqueeze", [x, _i64([axis])]) for x in xs], axis=axis)


def _integer_pow(g: _Graph, eqn, x):
  y = eqn.params["y"]
  if y < 1:
    raise LoweringError(f"integer_pow with exponent {y}")
  out = x
  for _ in range(y - 1):
    out = g.node("Mul", [out, x])
  return out


LOWERINGS: Dict[str, Callable] = {
    "add": _elementwise("Add"), "sub": _elementwise("Sub"), "mul": _elementwise("Mul"),
    "div": _elementwise("Div"), "max": _elementwise("Max"), "min": _elementwise("Min"),
    "exp": _elementwise("Exp"), "log": _elementwise("Log"), "abs": _elementwise("Abs"),
    "sign": _elementwise("Sign"), "neg": _elementwise("Neg"), "sqrt": _elementwise("Sqrt"),
    "tanh": _elementwise("Tanh"), "logistic": _elementwise("Sigmoid"),
    "eq": _elementwise("Equal"), "lt": _elementwise("Less"), "gt": _elementwise("Greater"),
    "le": _elementwise("LessOrEqual"), "ge": _elementwise("GreaterOrEqual"),
    "and": _elementwise("And"), "or": _elementwise("Or"), "not": _elementwise("Not"),
    "ne": lambda g, eqn, a, b: g.node("Not", [g.node("Equal", [a, b])]),
    "rem": lambda g, eqn, a, b: g.node("Mod", [a, b], fmod=1),  # C's sign, as lax.rem
    "rsqrt": lambda g, eqn, x: g.node("Reciprocal", [g.node("Sqrt", [x])]),
    "integer_pow": _integer_pow,
    "convert_element_type": lambda g, eqn, x: g.node(
        "Cast", [x], to=_onnx_type(eqn.params["new_dtype"])),
    "stop_gradient": lambda g, eqn, x: x,
    "reshape": lambda g, eqn, x: g.node("Reshape", [x, _i64(eqn.params["new_sizes"])]),
    "squeeze": lambda g, eqn, x: g.node("Reshape", [x, _i64(eqn.outvars[0].aval.shape)]),
    "expand_dims": lambda g, eqn, x: g.node("Reshape", [x, _i64(eqn.outvars[0].aval.shape)]),
    "transpose": lambda g, eqn, x: g.node("Transpose", [x],
                                         perm=list(eqn.params["permutation"])),
    "concatenate": lambda g, eqn, *xs: g.node("Concat", xs, axis=eqn.params["dimension"]),
    "broadcast_in_dim": _broadcast_in_dim, "conv_general_dilated": _conv,
    "dot_general": _dot_general, "reduce_sum": _reduce("ReduceSum"),
    "reduce_max": _reduce("ReduceMax"), "reduce_min": _reduce("ReduceMin"),
    "argmax": _argmax, "slice": _slice, "pad": _pad, "select_n": _select_n,
    "gather": _gather, "cumsum": _cumsum, "stack": _stack,
}
# Calls whose body is inlined: jit, and custom derivatives (inference uses the function).
CALLS = {"jit": "jaxpr", "pjit": "jaxpr", "custom_jvp_call": "call_jaxpr",
         "custom_vjp_call": "call_jaxpr", "custom_vjp_call_jaxpr": "fun_jaxpr",
         "closed_call": "call_jaxpr", "remat": "jaxpr", "checkpoint": "jaxpr"}


def _lower_jaxpr(g: _Graph, jaxpr, consts: Sequence[Any], args: Sequence[Any]) -> List[Any]:
  """Lowers ``jaxpr`` with ``consts`` and ``args`` (names or numpy values); its outputs."""
  env: Dict[Any, Any] = {}

  def read(v):
    if isinstance(v, jax_core.Literal):
      return np.asarray(v.val, dtype=v.aval.dtype)
    return env[v]

  for v, value in zip(jaxpr.constvars, consts):
    env[v] = np.asarray(value)
  for v, value in zip(jaxpr.invars, args):
    env[v] = value
  for eqn in jaxpr.eqns:
    inputs = [read(v) for v in eqn.invars]
    name = eqn.primitive.name
    if name in CALLS:
      closed = eqn.params.get(CALLS[name]) or eqn.params.get("fun_jaxpr")
      inner = closed.jaxpr if hasattr(closed, "jaxpr") else closed
      outs = _lower_jaxpr(g, inner, getattr(closed, "consts", ()), inputs)
    elif all(not isinstance(x, str) for x in inputs):  # known: evaluate it here
      result = eqn.primitive.bind(*inputs, **eqn.params)
      outs = [np.asarray(r) for r in (result if eqn.primitive.multiple_results else [result])]
    elif name in LOWERINGS:
      outs = [LOWERINGS[name](g, eqn, *inputs)]
    else:
      raise LoweringError(f"no ONNX lowering for the JAX primitive {name!r}")
    for v, value in zip(eqn.outvars, outs):
      env[v] = value
  return [read(v) for v in jaxpr.outvars]


def to_onnx(fn: Callable, example_args: Sequence[jax.ShapeDtypeStruct],
            input_names: Sequence[str], output_names: Sequence[str],
            metadata: Dict[str, str] = None):
  """``onnx.ModelProto`` computing ``fn`` on arguments shaped as ``example_args``;
  ``metadata`` goes into the model's ``metadata_props``."""
  import onnx  # pylint: disable=import-outside-toplevel
  from onnx import helper  # pylint: disable=import-outside-toplevel
  closed = jax.make_jaxpr(fn)(*example_args)
  g = _Graph()
  outs = _lower_jaxpr(g, closed.jaxpr, closed.consts, list(input_names))
  for name, value in zip(output_names, outs):
    g.nodes.append(helper.make_node("Identity", [g.name(value)], [name]))
  inputs = [helper.make_tensor_value_info(n, _onnx_type(a.dtype), list(a.shape))
            for n, a in zip(input_names, example_args)]
  outputs = [helper.make_tensor_value_info(n, _onnx_type(v.aval.dtype), list(v.aval.shape))
             for n, v in zip(output_names, closed.jaxpr.outvars)]
  graph = helper.make_graph(g.nodes, "kpsem_jax", inputs, outputs, g.initializers)
  model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)],
                            producer_name="kpsem-jax")
  model.ir_version = 8  # the newest ONNX Runtime and OpenVINO of 2026 both read
  for key, value in (metadata or {}).items():
    model.metadata_props.add(key=key, value=value)
  onnx.checker.check_model(model)
  return model
