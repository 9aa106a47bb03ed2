"""A profiled train step against its roofline: each layer's measured time beside the time the
machine's roofs allow it (core/roofline.py), and which roof binds it.

The profiler's rows are matched to the layers they run by op name and input shape: a convolution
row already knows its layer; ReLU, pooling, dropout and linear rows are found by the shapes the
layer sees; the optimizer by its per-parameter ops. A layer none of whose ops the profiler showed
has no measured time. What no layer claims (the loss, casts, framework code) is reported as the
rest of the step.
"""

from __future__ import annotations

from ..core.roofline import RoofMeasurement, Work, attainable, step_work, verdict

RELU_FORWARD = {"aten::relu", "aten::relu_", "aten::clamp_min", "aten::clamp_min_", "aten::threshold", "aten::threshold_"}
DROPOUT_FORWARD = {"aten::native_dropout", "aten::bernoulli_", "aten::div_", "aten::mul"}
DROPOUT_BACKWARD = {"aten::native_dropout_backward", "aten::mul"}
ADAM_OPS = {
    "aten::lerp_",
    "aten::mul_",
    "aten::addcmul_",
    "aten::sqrt",
    "aten::div",
    "aten::div_",
    "aten::add_",
    "aten::addcdiv_",
}


def _shape(row: dict, i: int) -> tuple | None:
    shapes = row.get("input_shapes") or []
    return tuple(shapes[i]) if len(shapes) > i else None


def _runs(work: Work, row: dict) -> bool:
    """Is this profiler row (part of) this layer's forward or backward?"""
    name, backward = row["name"], work.phase == "backward"
    if work.kind == "conv":
        return row.get("layer") == work.layer and ("backward" in name) == backward
    if work.kind == "linear":
        if not backward:
            return name == "aten::addmm" and _shape(row, 1) == work.input_shape
        other = _shape(row, 1)
        return (
            name == "aten::mm"
            and other is not None
            and other[-1] == work.input_shape[-1]
            and work.output_shape[-1] in (_shape(row, 0) or ())
        )
    if work.kind == "relu":
        names = {"aten::threshold_backward"} if backward else RELU_FORWARD
        return name in names and _shape(row, 0) == work.input_shape
    if work.kind == "pool":
        if backward:  # the gradient of the input is zero-filled first, then scattered into
            zero_fill = name in ("aten::fill_", "aten::zero_") and _shape(row, 0) == work.input_shape
            return zero_fill or (name == "aten::max_pool2d_with_indices_backward" and _shape(row, 1) == work.input_shape)
        return name == "aten::max_pool2d_with_indices" and _shape(row, 0) == work.input_shape
    if work.kind == "dropout":  # on CPU: a Bernoulli mask, then a multiply (forward and backward)
        names = DROPOUT_BACKWARD if backward else DROPOUT_FORWARD
        return name in names and _shape(row, 0) == work.input_shape
    if work.kind == "adam":
        return name.startswith(("aten::_fused_adam", "aten::_foreach_")) or (
            name in ADAM_OPS and _shape(row, 0) in work.param_shapes
        )
    return False


def roofline_summary(
    model, batch: int, precision: str, mode: str, rows: list[dict], step_ms: float, measured: RoofMeasurement
) -> dict:
    """Per layer: FLOPs, bytes, intensity, the roofline time and bound, the measured time and the
    verdict; and the step as a whole. `rows`: every op of the profile with its own (self) time; a
    convolution's row names its layer."""
    works = [w for w in step_work(model, batch, precision) if mode == "train" or w.phase == "forward"]
    claimed: set[int] = set()
    out = []
    for w in works:
        hits = [i for i, r in enumerate(rows) if i not in claimed and _runs(w, r)]
        claimed.update(hits)
        bound = attainable(w, measured.roofs)
        measured_ms = sum(rows[i]["self_ms_per_step"] for i in hits) if hits else None
        out.append(
            {
                "layer": w.layer,
                "kind": w.kind,
                "phase": w.phase,
                "flops": w.flops,
                "bytes": w.bytes,
                "intensity": w.intensity,
                "level": bound.level,
                "roof": bound.roof,
                "roofline_ms": 1e3 * bound.seconds,
                "measured_ms": measured_ms,
                "ops": sorted({rows[i]["name"] for i in hits}),
                "verdict": verdict(measured_ms / 1e3, bound) if measured_ms else None,
            }
        )
    matched = [r for r in out if r["measured_ms"]]
    return {
        "roofs": measured.roofs.to_json(),
        "rates": measured.rates,
        "precision": precision,
        "bytes_model": "each tensor a layer touches read or written once (mnist_models.core.roofline)",
        "layers": out,
        "step": {
            "measured_ms": step_ms,
            "roofline_ms": sum(r["roofline_ms"] for r in out),
            "matched_measured_ms": sum(r["measured_ms"] for r in matched),
            "matched_roofline_ms": sum(r["roofline_ms"] for r in matched),
        },
    }
