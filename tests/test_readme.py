"""The README's code runs as written (the snippet users copy first)."""
import re
from pathlib import Path

README = Path(__file__).resolve().parent.parent / "README.md"


def python_blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)


def test_readme_has_a_python_example():
    assert python_blocks(), "README.md lost its Python example"


def test_readme_python_examples_run():
    for block in python_blocks():
        namespace: dict = {}
        exec(compile(block, str(README), "exec"), namespace)  # noqa: S102
        if "conv2" in namespace:  # the VQConv example trained and updated its codebook
            assert namespace["conv2"].quantizer.initialized
            assert namespace["conv2"].health().usage > 0


def test_readme_commands_are_make_targets():
    text = README.read_text()
    makefile = (README.parent / "Makefile").read_text()
    for target in re.findall(r"^make (\w+)", text, flags=re.M):
        assert re.search(rf"^{target}:", makefile, flags=re.M), f"no make target {target!r}"
    assert "make test" in (README.parent / ".ci" / "run").read_text()
