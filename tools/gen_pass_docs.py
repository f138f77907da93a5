"""Write docs/passes.md from the registered passes' docstrings and options.

    python tools/gen_pass_docs.py          # rewrite docs/passes.md
    python tools/gen_pass_docs.py --check  # exit 1 if docs/passes.md is out of date
"""

from __future__ import annotations

import sys
from pathlib import Path

DOC = Path(__file__).resolve().parents[1] / "docs" / "passes.md"


def render() -> str:
    from homec.registry import REGISTRY

    out = ["# Passes", "",
           "Generated from the pass registry by `tools/gen_pass_docs.py`; `homec passes NAME`",
           "prints the same. Options are written `name: type = default` as schedules use them.", ""]
    for info in REGISTRY.all():
        if not info.module.startswith("homec."):
            continue  # plugins document themselves
        t = info.tolerance
        tol = ("exact" if not t.lossy and t.atol == 0 and t.rtol == 0 else
               f"atol {t.atol:g}, rtol {t.rtol:g}" if not t.lossy else
               f"lossy, cosine >= {t.min_cosine}")
        out += [f"## `{info.name}`", "", f"Tolerance: {tol}.", ""]
        if info.options:
            out.append("Options:")
            out.append("")
            for o in info.options.values():
                out.append(f"- `{o.name}`: {o.describe()} = `{o.default!r}`")
            out.append("")
        out += ["```", info.doc, "```", ""]
    return "\n".join(out)


def main() -> int:
    text = render()
    if "--check" in sys.argv:
        if not DOC.exists() or DOC.read_text() != text:
            print(f"{DOC} is out of date: run python tools/gen_pass_docs.py", file=sys.stderr)
            return 1
        return 0
    DOC.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
