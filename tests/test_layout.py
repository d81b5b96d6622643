"""The import graph of ``src/pcpo``: no cycles between modules, and imports only run downwards through
the layers below, except the one allowed upward import named in ``UPWARD``."""

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parent.parent / "src" / "pcpo"

# Lower layers never import higher ones. A module's layer is that of its longest listed prefix.
LAYERS = [
    ["errors", "registry", "seeds", "fields"],
    ["samplers", "algo", "checkpoint", "figures"],   # checkpoint I/O is shared by trainer and world
    ["models", "rewards", "world", "prompts"],
    ["config", "trainer.config", "run"],
    ["trainer"],
    ["eval"],
    ["cli", "launch"],   # launch: torchrun for pcpo commands, handed its argv by cli
]

# (importer, imported) pairs allowed to run upwards: none today. At most one may ever be added, with
# its reason, so that an upward import is a deliberate decision.
UPWARD: set[tuple[str, str]] = set()


def module_name(path: Path) -> str:
    rel = path.relative_to(SRC).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def imports_of(path: Path) -> set[str]:
    """pcpo modules imported anywhere in the file (also inside functions), as dotted names under pcpo."""
    name = module_name(path)
    pkg = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = pkg[: len(pkg) - node.level + 1]
                mod = ".".join(base + ([node.module] if node.module else []))
            elif node.module and node.module.startswith("pcpo"):
                mod = node.module[5:] if node.module != "pcpo" else ""
            else:
                continue
            for alias in node.names:  # `from . import x` may name a submodule
                cand = f"{mod}.{alias.name}" if mod else alias.name
                out.add(cand if (SRC / cand.replace(".", "/")).with_suffix(".py").exists()
                        or (SRC / cand.replace(".", "/")).is_dir() else mod)
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("pcpo."):
                    out.add(alias.name[5:])
        elif isinstance(node, ast.Call) and getattr(node.func, "attr", None) == "import_module":
            if node.args and isinstance(node.args[0], ast.Constant) and str(node.args[0].value).startswith("pcpo."):
                out.add(node.args[0].value[5:])
    out.discard("")
    out.discard(name)
    return out


def graph() -> dict[str, set[str]]:
    mods = {module_name(p): p for p in SRC.rglob("*.py")}
    g = {}
    for m, p in mods.items():
        g[m] = {i for i in imports_of(p) if i in mods and not m.startswith(i + ".") and i != ""}
    return g


def layer(mod: str) -> int:
    best, best_len = None, -1
    for k, names in enumerate(LAYERS):
        for n in names:
            if (mod == n or mod.startswith(n + ".")) and len(n) > best_len:
                best, best_len = k, len(n)
    assert best is not None, f"module pcpo.{mod} is in no layer of tests/test_layout.py"
    return best


def test_no_import_cycles():
    g = graph()
    seen, stack, cycles = set(), [], []

    def visit(m):
        if m in stack:
            cycles.append(stack[stack.index(m):] + [m])
            return
        if m in seen:
            return
        stack.append(m)
        for n in sorted(g[m]):
            visit(n)
        stack.pop()
        seen.add(m)

    for m in sorted(g):
        visit(m)
    assert not cycles, f"import cycles: {cycles[:5]}"


def test_imports_run_downwards():
    g = graph()
    up = sorted((m, n) for m, deps in g.items() for n in deps
                if layer(n) > layer(m) and (m, n) not in UPWARD)
    assert not up, f"upward imports: {up}"
