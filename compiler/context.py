"""What a pass receives besides the graph: selector, target, calibration data, warnings."""

from __future__ import annotations

import dataclasses
import fnmatch
from typing import Any

from homec.ir import Node


@dataclasses.dataclass(frozen=True)
class Selector:
    """Which nodes a pass may touch: `on Conv, Gemm where name ~ "backbone.*"`.

    An empty selector selects every node. Op types match `Node.op_type`; the glob matches
    `Node.name` with fnmatch semantics (case-sensitive).
    """

    op_types: tuple[str, ...] = ()
    name_glob: str | None = None

    def matches(self, node: Node) -> bool:
        if self.op_types and node.op_type not in self.op_types:
            return False
        if self.name_glob is not None and not fnmatch.fnmatchcase(node.name, self.name_glob):
            return False
        return True

    @property
    def is_empty(self) -> bool:
        return not self.op_types and self.name_glob is None


@dataclasses.dataclass
class PassContext:
    """Everything a pass may read besides the graph. Passes never read files or print."""

    selector: Selector = dataclasses.field(default_factory=Selector)
    target: Any | None = None  # a target descriptor (homec.targets), when compiling for one
    calib: Any | None = None  # calibration samples (homec.calib), when given
    input_shapes: dict[str, tuple[int, ...]] | None = None  # --input-shape, when given
    seed: int = 0
    warnings: list[str] = dataclasses.field(default_factory=list)
    # structured results a pass reports besides its statistics (per-layer quantization error,
    # sensitivity rankings); they go into the JSON report under the pass's record
    details: dict[str, Any] = dataclasses.field(default_factory=dict)

    def selected(self, node: Node) -> bool:
        return self.selector.matches(node)

    def warn(self, message: str) -> None:
        self.warnings.append(message)

    def report(self, key: str, data: Any) -> None:
        """Attach JSON-serializable `data` to this pass's record in the report."""
        self.details[key] = data
