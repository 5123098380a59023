"""The package's structure (docs/design.md, "Layers"): imports go only downward, never in a cycle (not
even inside a function), the Triton kernels import only params and buffers from the package, and a call
of flashattn_py.attention reaches the kernel launch in a few frames with one backend selection."""
import ast
import inspect
from pathlib import Path

import pytest
import torch

import flashattn_py as fa
import flashattn_py.triton_kernels
from flashattn_py import backends
from flashattn_py.triton_kernels import attention_fwd

PACKAGE = Path(fa.__file__).parent
KERNELS = Path(flashattn_py.triton_kernels.__file__).parent  # triton_kernels/, installed as flashattn_py.triton_kernels
# Each module's layer, by its name's first parts below flashattn_py; an import may only reach the same
# layer or a lower one (the layer diagram of docs/design.md).
LAYERS = [
    (0, ("params", "buffers")),
    (1, ("semantics",)),
    (2, ("validation",)),
    (3, ("backends", "triton_kernels", "_cuda")),
    (4, ("ops",)),
    (5, ("", "api", "reference", "varlen", "varlen_paged", "decoding", "flash_attn_interface", "sdpa", "pe_ops",
         "modules", "distributed", "info", "layers")),
    (6, ("integrations",)),
    (7, ("tools",)),
]
KERNEL_MAY_IMPORT = ("flashattn_py.params", "flashattn_py.buffers", "flashattn_py.triton_kernels")


def _modules() -> dict[str, Path]:
    found = {}
    for root, prefix in ((PACKAGE, "flashattn_py"), (KERNELS, "flashattn_py.triton_kernels")):
        for path in root.rglob("*.py"):
            parts = list(path.relative_to(root).with_suffix("").parts)
            if parts[0] == "triton_kernels" and root == PACKAGE:
                continue
            if parts[-1] == "__init__":
                parts = parts[:-1]
            found[".".join([prefix, *parts])] = path
    return found


# The compiled CUDA extension: a module without Python source, imported by the CUDA backend.
MODULES = {**_modules(), "flashattn_py._cuda": None}


def _imports(name: str, path: Path) -> set[str]:
    """Every flashattn_py module `name` imports, at its top or inside a function."""
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[:len(package.split(".")) - (node.level - 1)]
                base = ".".join(anchor + ([node.module] if node.module else []))
            # `from X import y` imports module X.y when y is one, else X.
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in MODULES else base for a in node.names]
        else:
            continue
        found |= {t for t in targets if t in MODULES and t != name}
    return found


GRAPH = {name: _imports(name, path) if path else set() for name, path in MODULES.items()}


def _layer(name: str) -> int:
    rest = name.removeprefix("flashattn_py").lstrip(".").split(".")[0]
    for layer, names in LAYERS:
        if rest in names:
            return layer
    raise AssertionError(f"{name} has no layer in tests/test_layers.py LAYERS: give it one")


def test_every_module_has_a_layer():
    for name in MODULES:
        _layer(name)


def test_imports_go_only_downward():
    upward = [f"{a} (layer {_layer(a)}) imports {b} (layer {_layer(b)})"
              for a, targets in GRAPH.items() for b in targets if _layer(b) > _layer(a)]
    assert not upward, "\n".join(upward)


def test_no_import_cycles():
    """Depth-first search over the whole graph, function-level imports included."""
    state, stack, cycles = {}, [], []

    def visit(name):
        state[name] = "open"
        stack.append(name)
        for target in sorted(GRAPH[name]):
            if state.get(target) == "open":
                cycles.append(stack[stack.index(target):] + [target])
            elif target not in state:
                visit(target)
        stack.pop()
        state[name] = "done"

    for name in sorted(GRAPH):
        if name not in state:
            visit(name)
    assert not cycles, "\n".join(" -> ".join(c) for c in cycles)


def test_triton_kernels_import_only_params_and_buffers():
    wrong = [f"{a} imports {b}" for a, targets in GRAPH.items() if a.startswith("flashattn_py.triton_kernels")
             for b in targets if not b.startswith(KERNEL_MAY_IMPORT)]
    assert not wrong, "\n".join(wrong)


def test_nothing_imports_the_tools():
    wrong = [f"{a} imports {b}" for a, targets in GRAPH.items() if not a.startswith("flashattn_py.tools")
             for b in targets if b.startswith("flashattn_py.tools")]
    assert not wrong, "\n".join(wrong)


def test_the_checker_sees_a_function_level_cycle(tmp_path):
    """The graph above is built from the source: an import hidden inside a function counts."""
    path = tmp_path / "m.py"
    path.write_text("def f():\n    from flashattn_py import api\n")
    assert "flashattn_py.api" in _imports("flashattn_py.params", path)


class _Launched(Exception):
    pass


def test_attention_reaches_the_triton_launch_in_five_frames_with_one_selection(monkeypatch):
    """fa.attention -> api.run -> the forward op -> the backend's forward -> its launch: frames of our own
    (torch's custom-op dispatch between them is not ours)."""
    if "TRITON_INTERPRET" not in __import__("os").environ:
        pytest.skip("needs the Triton interpreter (TRITON_INTERPRET=1, set by conftest.py) or a GPU")
    frames, selections = [], []
    real_select = backends.select

    def counting_select(*args, **kwargs):
        selections.append(args)
        return real_select(*args, **kwargs)

    class Kernel:
        def __getitem__(self, grid):
            def launch(*args, **kwargs):
                frames.extend(f for f in inspect.stack()[1:]
                              if Path(f.filename).is_relative_to(PACKAGE) or Path(f.filename).is_relative_to(KERNELS))
                raise _Launched
            return launch

    monkeypatch.setattr(backends, "select", counting_select)
    monkeypatch.setattr(attention_fwd, "attention_fwd_kernel", Kernel())
    q = torch.randn(1, 16, 2, 16)
    with pytest.raises(_Launched):
        fa.attention(q, q, q, causal=True, backend="triton")
    names = [f"{Path(f.filename).name}:{f.function}" for f in frames]
    assert len(frames) <= 5, names
    assert names[-1] == "api.py:attention", names
    assert len(selections) == 1
