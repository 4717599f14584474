"""benchmarks/RESULTS.md: each benchmark owns one marked section per device and rewrites only it."""
import pathlib
import re

RESULTS = pathlib.Path(__file__).resolve().parent / "RESULTS.md"


def save_section(script: str, device: str, section: str) -> None:
    """Replace ``script``'s earlier section for ``device``, else append; other sections stay."""
    key = f"{script} {device}"
    block = f"<!-- {key} -->\n{section}<!-- /{key} -->\n"
    text = RESULTS.read_text() if RESULTS.exists() else "# minialex benchmark results\n"
    pattern = re.compile(rf"<!-- {re.escape(key)} -->\n.*?<!-- /{re.escape(key)} -->\n", re.S)
    if pattern.search(text):
        text = pattern.sub(lambda _: block, text)
    else:
        text = text.rstrip("\n") + "\n\n" + block
    RESULTS.write_text(text)


def use_gpu(parser, device: str, script: str) -> bool:
    """True to benchmark on the GPU: ``--device gpu`` (refused in one line when none is usable)
    or ``auto`` with a usable GPU."""
    from minialex import backend
    if device == "gpu":
        try:
            backend.require_cupy()
        except RuntimeError as exc:
            parser.exit(2, f"{script}: error: {exc}\n")
        return True
    return device == "auto" and backend.gpu_available()
