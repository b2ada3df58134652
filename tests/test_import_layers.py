"""The package's import graph: no circle, and no arrow from a lower layer back up (DEVELOPERS.md, Layers).

The graph is read from the source (ast), every `import` and `from ... import` of a crosssite module,
at module level or inside a function, so a lazy import inside a function counts as much as one at the
top. A new module must be given its layer in LAYERS: the test names any module missing there.
"""

import ast
from pathlib import Path

import crosssite

PACKAGE = Path(crosssite.__file__).parent

#: bottom to top; a module may import from its own layer or below. A name ending in "." is a package:
#: the package and all its modules. Modules of a layer marked independent import none of each other.
LAYERS = [
    ("ground", ["crosssite", "errors", "ranks", "stats", "losses", "opcount", "capture"], False),
    ("files", ["io", "run_folder"], False),
    ("data", ["data."], False),
    ("models", ["models.", "runtime"], False),
    ("settings", ["config", "presets", "paper", "preprocessing", "metrics", "scans", "calibration",
                  "operating_point"], False),
    ("engine", ["distributed", "methods.", "inference", "checkpoint", "export_formats."], False),
    ("library", ["evaluate", "inputs", "exported", "tensorboard", "ood", "decisions", "decision_report", "dicom_sr",
                 "pacs", "saliency", "dicom_gradcam"], False),
    ("training", ["train"], False),
    ("federated", ["federated."], False),
    ("commands", ["predict", "export", "gradcam", "adapt", "calibrate", "audit", "card", "sweep"], True),
    ("launchers", ["slurm", "launchers"], False),
    ("report", ["report."], False),
    ("command line", ["cli", "__main__"], False),
]


def module_names() -> dict[str, Path]:
    names = {}
    for path in PACKAGE.rglob("*.py"):
        parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        names[".".join(parts)] = path
    return names


def import_graph() -> dict[str, set[str]]:
    """module -> the crosssite modules it imports (a `from package import name` of a module: that module)."""
    modules = module_names()
    graph = {}
    for name, path in modules.items():
        here = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
        targets = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom):
                base = ".".join(here[:len(here) - node.level + 1] + [node.module or ""]).rstrip(".") \
                    if node.level else node.module
                if base.split(".")[0] == "crosssite":
                    targets |= {f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names}
            elif isinstance(node, ast.Import):
                targets |= {a.name for a in node.names if a.name.split(".")[0] == "crosssite"}
        graph[name] = targets - {name}
    return graph


def layer_of(module: str) -> int | None:
    short = module.removeprefix("crosssite.") if module != "crosssite" else module
    for index, (_, members, _) in enumerate(LAYERS):
        for member in members:
            if short == member or (member.endswith(".") and (short + ".").startswith(member)):
                return index
    return None


def test_every_module_has_a_layer():
    missing = sorted(m for m in module_names() if layer_of(m) is None)
    assert not missing, f"give these modules a layer in tests/test_import_layers.py LAYERS: {missing}"


def test_no_import_climbs_to_a_higher_layer():
    graph = import_graph()
    upward = [f"{a} ({LAYERS[layer_of(a)][0]}) imports {b} ({LAYERS[layer_of(b)][0]})"
              for a, targets in graph.items() for b in targets if layer_of(b) > layer_of(a)]
    assert not upward, "\n".join(upward)


def test_commands_do_not_import_each_other():
    graph = import_graph()
    crossing = [f"{a} imports {b}" for a, targets in graph.items() for b in targets
                if layer_of(a) == layer_of(b) and LAYERS[layer_of(a)][2]]
    assert not crossing, "\n".join(crossing)


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import circle (a list of modules, the first repeated at the end), or None."""
    state: dict[str, str] = {}
    stack: list[str] = []

    def visit(node):
        state[node] = "open"
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == "open":
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        stack.pop()
        state[node] = "done"
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node)):
            return found
    return None


def test_no_import_circle():
    cycle = find_cycle(import_graph())
    assert cycle is None, " -> ".join(cycle)


def test_the_checks_see_circles_and_upward_arrows():
    """The checks above can fail: a made-up circle is found, and the graph holds known downward arrows."""
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None
    graph = import_graph()
    assert "crosssite.inputs" in graph["crosssite.predict"] and "crosssite.ranks" in graph["crosssite.io"]
    assert "crosssite.methods.sepnorm" in graph["crosssite.methods"]  # `from . import sepnorm` in __init__
    assert layer_of("crosssite.io") < layer_of("crosssite.data.volumes") < layer_of("crosssite.cli")
