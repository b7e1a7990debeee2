"""One operator in context, and the table's limitations as checks.

``CHECKS`` maps a check name used in ``data/edgetpu_ops.toml`` to ``function(ctx, **params)``,
which returns the problem or None.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from ...tflite import model as tfl


@dataclass
class OpContext:
    """One operator with the lookups the checks need."""

    model: Any
    sg: Any
    op: Any
    index: int

    @property
    def name(self) -> str:
        return tfl.op_name(self.model, self.op)

    @property
    def options(self) -> Any:
        return self.op.builtinOptions

    def tensor(self, i: int) -> Any:
        return self.sg.tensors[i]

    def tensor_name(self, i: int) -> str:
        raw = self.sg.tensors[i].name
        return raw.decode(errors="replace") if isinstance(raw, bytes) else str(raw)

    def shape(self, i: int) -> list[int]:
        shape = self.sg.tensors[i].shape
        return [] if shape is None else [int(s) for s in shape]

    def const(self, i: int) -> np.ndarray | None:
        return tfl.tensor_array(self.model, i) if i >= 0 else None

    def inputs(self) -> list[int]:
        return [i for i in (self.op.inputs if self.op.inputs is not None else []) if i >= 0]

    def outputs(self) -> list[int]:
        return [i for i in (self.op.outputs if self.op.outputs is not None else []) if i >= 0]


def _dim_labels(rank: int) -> list[str]:
    return ["batch"] * max(rank - 3, 0) + ["y", "x", "z"][max(3 - rank, 0):]


def _axes_labels(values: np.ndarray | list[int], rank: int) -> list[str]:
    labels = _dim_labels(rank)
    return [labels[int(a) % rank] for a in np.ravel(values)] if rank else []


def _check_no_fused_activation(ctx: OpContext) -> str | None:
    act = getattr(ctx.options, "fusedActivationFunction", 0)
    if act:
        names = {
            v: k
            for k, v in vars(tfl.schema.ActivationFunctionType).items()
            if not k.startswith("_")
        }
        return f"has a fused {names.get(act, act)} activation"
    return None


def _check_same_dilation(ctx: OpContext) -> str | None:
    h, w = getattr(ctx.options, "dilationHFactor", 1), getattr(ctx.options, "dilationWFactor", 1)
    return f"dilation differs in y ({h}) and x ({w})" if h != w else None


def _check_no_dilation(ctx: OpContext) -> str | None:
    h, w = getattr(ctx.options, "dilationHFactor", 1), getattr(ctx.options, "dilationWFactor", 1)
    return f"dilated kernel ({h}x{w})" if (h, w) != (1, 1) else None


def _check_constant_inputs_zero_pair(ctx: OpContext) -> str | None:
    ins = ctx.inputs()
    consts = [i for i in ins if ctx.const(i) is not None]
    if not consts:
        return None
    if len(ins) != 2:
        return f"{len(ins)} inputs with a constant among them (only 2 allowed)"
    q = ctx.tensor(consts[0]).quantization
    zero = (
        int(q.zeroPoint[0]) if q is not None and q.zeroPoint is not None and len(q.zeroPoint) else 0
    )
    if np.any(ctx.const(consts[0]) != zero):
        return f"constant input '{ctx.tensor_name(consts[0])}' is not all zeros"
    return None


def _check_default_weights_format(ctx: OpContext) -> str | None:
    fmt = getattr(ctx.options, "weightsFormat", 0)
    return f"weights format {fmt} is not the default" if fmt else None


def _check_output_one_dimensional(ctx: OpContext) -> str | None:
    shape = ctx.shape(ctx.outputs()[0])
    return (
        f"output shape {shape} has more than one dimension > 1"
        if sum(s > 1 for s in shape) > 1
        else None
    )


def _check_reduce_axes_within(ctx: OpContext, dims: list[str]) -> str | None:
    x, axes = ctx.inputs()[:2]
    values = ctx.const(axes)
    if values is None:
        return "reduction axes are not constant"
    labels = _axes_labels(values, len(ctx.shape(x)))
    bad = [lab for lab in labels if lab not in dims]
    return f"reduces along {'/'.join(bad)} (axes {np.ravel(values).tolist()})" if bad else None


def _check_z_reduction_multiple(ctx: OpContext, multiple: int) -> str | None:
    x, axes = ctx.inputs()[:2]
    values = ctx.const(axes)
    shape = ctx.shape(x)
    if values is not None and "z" in _axes_labels(values, len(shape)) and shape[-1] % multiple:
        return f"z-reduction over {shape[-1]} channels (not a multiple of {multiple})"
    return None


def _check_pad_dims_within(ctx: OpContext, dims: list[str]) -> str | None:
    x, pads = ctx.inputs()[:2]
    values = ctx.const(pads)
    if values is None:
        return "paddings are not constant"
    labels = _dim_labels(len(ctx.shape(x)))
    rows = np.asarray(values).reshape(-1, 2)
    # not strict: a malformed paddings tensor must give a verdict, not a crash
    bad = [lab for lab, row in zip(labels, rows, strict=False) if np.any(row) and lab not in dims]
    return f"pads along {'/'.join(bad)}" if bad else None


def _check_pack_axis_not_batch(ctx: OpContext) -> str | None:
    rank = len(ctx.shape(ctx.outputs()[0]))
    axis = getattr(ctx.options, "axis", 0)
    return "packs along the batch dimension" if _axes_labels([axis], rank) == ["batch"] else None


def _check_split_axis_not_batch(ctx: OpContext) -> str | None:
    axis_t, x = ctx.inputs()[:2]
    values = ctx.const(axis_t)
    if values is None:
        return "split axis is not constant"
    return (
        "splits along the batch dimension"
        if "batch" in _axes_labels(values, len(ctx.shape(x)))
        else None
    )


def _check_alpha_innermost_only(ctx: OpContext) -> str | None:
    shape = ctx.shape(ctx.inputs()[1])
    if any(s > 1 for s in shape[:-1]):
        return f"alpha shape {shape} varies outside the innermost dimension"
    return None


def _check_input_one_dimensional(ctx: OpContext, max_elements: int) -> str | None:
    shape = ctx.shape(ctx.inputs()[0])
    if sum(s > 1 for s in shape) > 1:
        return f"input shape {shape} is not 1-D"
    size = int(np.prod(shape)) if shape else 1
    return f"input has {size} elements (max {max_elements})" if size > max_elements else None


def _check_squeeze_leading_ones(ctx: OpContext) -> str | None:
    shape = ctx.shape(ctx.inputs()[0])
    dims = getattr(ctx.options, "squeezeDims", None)
    squeezed = [int(d) % len(shape) for d in dims] if dims is not None and len(dims) else \
        [i for i, s in enumerate(shape) if s == 1]
    first_big = next((i for i, s in enumerate(shape) if s > 1), len(shape))
    late = [d for d in squeezed if d > first_big]
    return f"squeezes dimension {late} after a dimension > 1 (needs a relayout)" if late else None


def _check_unit_strides_no_masks(ctx: OpContext) -> str | None:
    strides = ctx.const(ctx.inputs()[3]) if len(ctx.inputs()) > 3 else None
    if strides is None or np.any(strides != 1):
        return f"strides {None if strides is None else strides.tolist()} are not all 1"
    for mask in ("ellipsisMask", "newAxisMask"):
        if getattr(ctx.options, mask, 0):
            return f"{mask} is {getattr(ctx.options, mask)}"
    return None


def _check_batch_of_one(ctx: OpContext) -> str | None:
    shape = ctx.shape(ctx.inputs()[0])
    return f"input shape {shape} has a batch > 1" if len(shape) == 4 and shape[0] != 1 else None


CHECKS: dict[str, Callable[..., str | None]] = {
    "no_fused_activation": _check_no_fused_activation,
    "same_dilation": _check_same_dilation,
    "no_dilation": _check_no_dilation,
    "constant_inputs_zero_pair": _check_constant_inputs_zero_pair,
    "default_weights_format": _check_default_weights_format,
    "output_one_dimensional": _check_output_one_dimensional,
    "reduce_axes_within": _check_reduce_axes_within,
    "z_reduction_multiple": _check_z_reduction_multiple,
    "pad_dims_within": _check_pad_dims_within,
    "pack_axis_not_batch": _check_pack_axis_not_batch,
    "split_axis_not_batch": _check_split_axis_not_batch,
    "alpha_innermost_only": _check_alpha_innermost_only,
    "input_one_dimensional": _check_input_one_dimensional,
    "squeeze_leading_ones": _check_squeeze_leading_ones,
    "unit_strides_no_masks": _check_unit_strides_no_masks,
    "batch_of_one": _check_batch_of_one,
}
