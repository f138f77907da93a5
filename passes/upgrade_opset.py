"""Upgrade the model's default-domain opset to the target's (never downgrade)."""

from __future__ import annotations

from typing import Annotated

from homec.context import PassContext
from homec.errors import UnsupportedError, UsageError
from homec.ir import Graph
from homec.registry import Range, Stats, Tolerance, register_pass

from ._util import upgrade_opset as convert_checked

# onnx's version converter rewrites operators whose semantics did not change between
# versions; upgrade_opset checks the outputs against onnxruntime with float_refold tolerance.
TOLERANCE = Tolerance.float_refold()


@register_pass("upgrade_opset", tolerance=TOLERANCE, selectable=False)
def upgrade_opset(graph: Graph, ctx: PassContext, *,
                  version: Annotated[int, Range(1, None)] | None = None) -> Stats:
    """Convert the model to a newer default-domain opset (the target's unless `version`).

    Conversion: onnx's version converter, checked by running the model before and after with
    onnxruntime on calibration samples or a seeded random input (passes/_util.upgrade_opset);
    a conversion that changes the outputs, or that cannot be made or checked, is an
    UnsupportedError (exit 4) naming the reason. A model already at the version is left
    alone; one above it is an UnsupportedError: homec never downgrades an opset, since
    operators of newer versions may not exist (or mean something else) in older ones.
    The details record `opset: {from, to}` when the model was converted.

    Options:
      version: the opset to reach; none: the target's (ctx.target.opset; a target reading
        any opset leaves the model as it is). Without a target a version must be given.

    Statistics: upgraded (1 when the model was converted).
    """
    target = ctx.target
    if version is None:
        if target is None:
            raise UsageError("upgrade_opset: no target to take the opset from; give "
                             "upgrade_opset(version=N) or a target (-t)")
        if target.opset is None:
            return {"upgraded": 0}  # the target reads any opset
        version = int(target.opset)
        who = f"target `{target.name}` runs opsets up to {version}"
    else:
        who = f"upgrade_opset(version={version}) asks for opset {version}"
    current = graph.opset("")
    if current is None or current == version:
        return {"upgraded": 0}
    if current > version:
        raise UnsupportedError(f"the model uses opset {current}; {who} "
                               "(homec never downgrades an opset)")
    purpose = f"target `{target.name}`" if target is not None and version == target.opset \
        else "upgrade_opset"
    convert_checked(graph, ctx, version, purpose=purpose,
                    hint="export the model at a newer opset, or compile without the upgrade")
    ctx.report("opset", {"from": current, "to": version})
    return {"upgraded": 1}
