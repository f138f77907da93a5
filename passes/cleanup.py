"""The standard cleanup sequence, run to a fixpoint."""

from __future__ import annotations

from typing import Annotated

from homec.context import PassContext
from homec.ir import Graph
from homec.registry import Range, Stats, Tolerance, register_pass

from ._util import OBSERVATION_PREFIXES, stats_changed
from .cse import cse
from .eliminate_dead import eliminate_dead
from .eliminate_identity import eliminate_identity
from .fold_batchnorm import fold_batchnorm
from .fold_constants import fold_constants
from .fold_shapes import fold_shapes
from .fuse_matmul_add import fuse_matmul_add


@register_pass("cleanup", tolerance=Tolerance.float_refold())
def cleanup(
    graph: Graph,
    ctx: PassContext,
    *,
    max_iterations: Annotated[int, Range(1, 100)] = 10,
    max_output_bytes: Annotated[int, Range(0, None)] = 64 << 20,
) -> Stats:
    """Run the cleanup passes in sequence until none of them changes the graph.

    One round runs fold_constants, fold_shapes, eliminate_identity, fuse_matmul_add,
    fold_batchnorm, cse and eliminate_dead (each with its defaults, under the same
    selector); rounds repeat until a round changes nothing or `max_iterations` rounds ran.
    The composition is lossless up to the float refolding of fold_constants,
    fuse_matmul_add and fold_batchnorm.

    Options:
      max_iterations: the most rounds to run.
      max_output_bytes: fold_constants' cap on a folded value's size.

    Statistics: `iterations` (rounds run), `iterations_unconverged` (1 when the last round
    still changed something, i.e. `max_iterations` was too small), and every statistic of every pass as `pass.key`: changes summed over the
    rounds, observations (skipped_*, refused_*, kept_*) as seen in the last round.
    """
    steps = [
        ("fold_constants", lambda: fold_constants(graph, ctx, max_output_bytes=max_output_bytes)),
        ("fold_shapes", lambda: fold_shapes(graph, ctx)),
        ("eliminate_identity", lambda: eliminate_identity(graph, ctx)),
        ("fuse_matmul_add", lambda: fuse_matmul_add(graph, ctx)),
        ("fold_batchnorm", lambda: fold_batchnorm(graph, ctx)),
        ("cse", lambda: cse(graph, ctx)),
        ("eliminate_dead", lambda: eliminate_dead(graph, ctx)),
    ]
    total: Stats = {"iterations": 0, "iterations_unconverged": 1}
    for _ in range(max_iterations):
        total["iterations"] += 1
        changed = False
        for name, run in steps:
            stats = run()
            changed |= stats_changed(stats)
            for key, value in stats.items():
                k = f"{name}.{key}"
                if key.startswith(OBSERVATION_PREFIXES):
                    total[k] = value
                else:
                    total[k] = total.get(k, 0) + value
        if not changed:
            total["iterations_unconverged"] = 0
            break
    return total
