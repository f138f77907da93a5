"""Documentation that is generated from code stays in step with it."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_pass_reference_is_up_to_date():
    r = subprocess.run([sys.executable, str(ROOT / "tools" / "gen_pass_docs.py"), "--check"],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr


def test_readme_starts_with_the_two_commands():
    text = (ROOT / "README.md").read_text()
    blocks = text.split("```")
    assert blocks[1].strip().startswith("pip install . && homec examples/kws_cnn.onnx -p examples/cleanup.hc")
    test_command = blocks[3].strip()
    assert test_command.endswith("pip install -e '.[test]' && python -m pytest -q")
    ci = (ROOT / ".ci" / "run").read_text()
    assert test_command in ci.splitlines()  # .ci/run runs exactly the README's command
