"""The layout of broker/ (STYLE.md, "The layout that holds what comes next"):
no import cycle, no module much over 400 lines, and each transport's wire
kept in its own room. Pure: the source is parsed, nothing imported."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
BROKER = REPO / "broker"
MAX_LINES = 420  # "no module over ~400 lines"


def module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


MODULES = {module_name(p): p for p in sorted(BROKER.rglob("*.py"))}


def imports_of(name: str, path: Path) -> set[str]:
    """Every broker module `name` imports, TYPE_CHECKING and function-level
    imports included (a cycle hidden in a function is still a cycle)."""
    found: set[str] = set()
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1]
                                + ([base] if base else []))
            # `from broker.x import y` may import the module broker.x.y
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in MODULES else base
                       for a in node.names]
        else:
            continue
        found.update(t for t in targets if t in MODULES and t != name)
    return found


GRAPH = {name: imports_of(name, path) for name, path in MODULES.items()}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}  # 1: on the stack, 2: done
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return [*stack[stack.index(nxt):], nxt]
            if nxt not in state and (cycle := visit(nxt)) is not None:
                return cycle
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)) is not None:
            return cycle
    return None


def test_the_cycle_finder_finds_a_cycle() -> None:
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set(), "c": {"a", "b"}}) is None


def test_no_import_cycle_in_broker() -> None:
    assert find_cycle(GRAPH) is None, " -> ".join(find_cycle(GRAPH) or [])


def test_the_package_graph_has_no_cycle_either() -> None:
    """Between rooms too (store, delivery, transports.ws, http, ...): a room
    imports only rooms below it."""
    def room(name: str) -> str:
        parts = name.split(".")
        return ".".join(parts[:3]) if parts[1:2] == ["transports"] else ".".join(parts[:2])

    rooms: dict[str, set[str]] = {}
    for name, deps in GRAPH.items():
        rooms.setdefault(room(name), set()).update(room(d) for d in deps if room(d) != room(name))
    assert find_cycle(rooms) is None, " -> ".join(find_cycle(rooms) or [])


@pytest.mark.parametrize("name", sorted(MODULES))
def test_no_module_over_about_400_lines(name: str) -> None:
    lines = len(MODULES[name].read_text().splitlines())
    assert lines <= MAX_LINES, f"{name} has {lines} lines"


def test_only_the_websocket_transport_encodes_frames_or_names_close_codes() -> None:
    """Contract section 4's bytes and close codes belong to transports/ws/;
    the delivery engine speaks to a DeviceChannel (broker/delivery/channel.py)."""
    offenders = []
    for name, path in MODULES.items():
        if name.startswith(("broker.transports.ws", "broker.device_sim")):
            continue  # the transport, and the simulated phone on the other end
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) \
                    and node.value.id == "frames" and node.attr in ("encode", "Send", "Cancel",
                                                                    "Receipt", "Error", "Welcome"):
                offenders.append(f"{name}: frames.{node.attr}")
            if isinstance(node, ast.Name) and node.id.startswith("CLOSE_"):
                offenders.append(f"{name}: {node.id}")
            if isinstance(node, ast.Constant) and node.value in (1002, 1008, 1011, 1012, 1013,
                                                                 4000):
                offenders.append(f"{name}: close code {node.value}")
    assert offenders == []
