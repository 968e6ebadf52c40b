"""Validation of an API-format workflow graph, answering with ComfyUI's error types and shapes."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from sdplay.server.comfy.nodes import LINK_TYPES, NodeSpec

MAX_NODES = 1000  # large real workflows have a few hundred nodes
MAX_LIST_IN_ERROR = 20  # ComfyUI's limit on choices echoed back in an error


def error(kind: str, message: str, details: str = "", **extra_info: Any) -> dict[str, Any]:
    """One ComfyUI error object."""
    return {"type": kind, "message": message, "details": details, "extra_info": extra_info}


class PromptRefused(Exception):
    """The graph cannot run: ComfyUI's 400 body `{"error": ..., "node_errors": ...}`."""

    def __init__(self, err: dict[str, Any], node_errors: dict[str, Any] | None = None):
        super().__init__(err["message"])
        self.error = err
        self.node_errors = node_errors or {}

    def body(self) -> dict[str, Any]:
        return {"error": self.error, "node_errors": self.node_errors}


@dataclass
class Checked:
    """A graph that passed validation: the outputs to run, in-order node ids and converted input values."""

    outputs: list[str]
    order: list[str]  # every node the outputs need, dependencies first
    values: dict[str, dict[str, Any]]  # node id -> input name -> converted value or (node id, slot) link
    node_errors: dict[str, Any]


Resolver = Callable[[str, str, Any], Any]  # (class, input, value) -> canonical choice or None


def check(prompt: Any, nodes: dict[str, NodeSpec], resolve: Resolver | None = None) -> Checked:
    """Validate `prompt` as ComfyUI does; raise PromptRefused with its error body when nothing can run."""
    graph = _structure(prompt, nodes)
    outputs = [nid for nid, node in graph.items() if nodes[node["class_type"]].output_node]
    if not outputs:
        raise PromptRefused(
            error("prompt_no_outputs", "Prompt has no outputs", "Add a SaveImage or PreviewImage node.")
        )
    order = _order(graph, outputs)
    errors: dict[str, list] = {}
    valid: dict[str, bool] = {}
    values: dict[str, dict[str, Any]] = {}
    for nid in order:
        node = graph[nid]
        values[nid], errors[nid] = _inputs(nid, node, graph, nodes, resolve or (lambda c, i, v: None))
        links = [v[0] for v in values[nid].values() if isinstance(v, tuple)]
        valid[nid] = not errors[nid] and all(valid.get(up, False) for up in links)
    node_errors: dict[str, Any] = {}
    for out in outputs:
        if valid[out]:
            continue
        for nid in _upstream(out, values):
            if errors.get(nid):
                entry = node_errors.setdefault(
                    nid, {"errors": errors[nid], "dependent_outputs": [], "class_type": graph[nid]["class_type"]}
                )
                entry["dependent_outputs"].append(out)
    good = [out for out in outputs if valid[out]]
    if not good:
        details = "\n".join(f"{e['message']}: {e['details']}" for n in node_errors.values() for e in n["errors"])
        raise PromptRefused(
            error("prompt_outputs_failed_validation", "Prompt outputs failed validation", details), node_errors
        )
    needed = set()
    for out in good:
        needed |= _upstream(out, values)
    return Checked(good, [n for n in order if n in needed], values, node_errors)


def _structure(prompt: Any, nodes: dict[str, NodeSpec]) -> dict[str, dict]:
    """Check the shape: an object of node id -> {class_type, inputs}, of known classes, not too many."""
    if not isinstance(prompt, dict) or not prompt:
        raise PromptRefused(
            error(
                "invalid_prompt",
                "The prompt must be a non-empty JSON object of node id -> {class_type, inputs}.",
                "Export the workflow with 'Save (API Format)'.",
            )
        )
    if len(prompt) > MAX_NODES:
        raise PromptRefused(
            error(
                "invalid_prompt",
                f"The prompt has {len(prompt):,} nodes; this server runs at most {MAX_NODES:,}.",
                "Split the workflow into smaller prompts.",
            )
        )
    for nid, node in prompt.items():
        if not isinstance(node, dict) or not isinstance(node.get("class_type"), str):
            raise PromptRefused(
                error(
                    "invalid_prompt",
                    "Cannot execute because a node is missing the class_type property.",
                    f"Node ID '#{nid}'",
                )
            )
        if not isinstance(node.get("inputs", {}), dict):
            raise PromptRefused(error("invalid_prompt", "A node's inputs must be a JSON object.", f"Node ID '#{nid}'"))
    unknown = [nid for nid, node in prompt.items() if node["class_type"] not in nodes]
    if unknown:
        known = ", ".join(sorted(nodes))
        node_errors = {
            nid: {
                "errors": [
                    error(
                        "missing_node_type",
                        f"Node '{prompt[nid]['class_type']}' not found on this server.",
                        f"Node ID '#{nid}'. This server runs: {known}.",
                        node_id=nid,
                        class_type=prompt[nid]["class_type"],
                    )
                ],
                "dependent_outputs": [],
                "class_type": prompt[nid]["class_type"],
            }
            for nid in unknown
        }
        first = prompt[unknown[0]]["class_type"]
        raise PromptRefused(
            error("invalid_prompt", f"Cannot execute because node {first} does not exist.", f"Node ID '#{unknown[0]}'"),
            node_errors,
        )
    return prompt


def _is_link(value: Any) -> bool:
    return isinstance(value, list)


def _deps(node: dict) -> list[str]:
    return [str(v[0]) for v in node.get("inputs", {}).values() if _is_link(v) and len(v) == 2]


def _order(graph: dict[str, dict], outputs: list[str]) -> list[str]:
    """Nodes the outputs need, dependencies first (iterative DFS); a dependency cycle is refused."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    order: list[str] = []
    for root in outputs:
        if root in state:
            continue
        state[root] = 1
        stack = [(root, iter(_deps(graph[root])))]
        while stack:
            nid, deps = stack[-1]
            nxt = next(deps, None)
            if nxt is None:
                state[nid] = 2
                order.append(nid)
                stack.pop()
            elif nxt in graph and state.get(nxt) == 1:
                path = [n for n, _ in stack]
                cycle = [*path[path.index(nxt) :], nxt]
                _cycle(graph, cycle)
            elif nxt in graph and nxt not in state:
                state[nxt] = 1
                stack.append((nxt, iter(_deps(graph[nxt]))))
    return order


def _cycle(graph: dict[str, dict], cycle: list[str]) -> None:
    text = " -> ".join(f"#{n}" for n in cycle)
    err = error("dependency_cycle", "The graph has a dependency cycle", text)
    node_errors = {
        n: {"errors": [err], "dependent_outputs": [], "class_type": graph[n]["class_type"]} for n in cycle[:-1]
    }
    raise PromptRefused(
        error("invalid_prompt", f"Cannot execute because the graph has a cycle: {text}.", text), node_errors
    )


def _upstream(out: str, values: dict[str, dict[str, Any]]) -> set[str]:
    seen, todo = set(), [out]
    while todo:
        nid = todo.pop()
        if nid in seen or nid not in values:
            continue
        seen.add(nid)
        todo += [v[0] for v in values[nid].values() if isinstance(v, tuple)]
    return seen


def _inputs(
    nid: str, node: dict, graph: dict[str, dict], nodes: dict[str, NodeSpec], resolve: Resolver
) -> tuple[dict[str, Any], list[dict]]:
    spec = nodes[node["class_type"]]
    given = node.get("inputs", {})
    values: dict[str, Any] = {}
    errors: list[dict] = []
    for name, config in [*spec.required.items(), *spec.optional.items()]:
        if name not in given:
            if name in spec.required:
                errors.append(error("required_input_missing", "Required input is missing", name, input_name=name))
            continue
        value, err = _value(spec, name, config, given[name], graph, nodes, resolve)
        if err is not None:
            errors.append(err)
        else:
            values[name] = value
    return values, errors


def _value(spec: NodeSpec, name: str, config: tuple, value: Any, graph, nodes, resolve) -> tuple[Any, dict | None]:
    kind, options = config[0], (config[1] if len(config) > 1 else {})
    info = {"input_name": name, "input_config": list(config), "received_value": value}
    if _is_link(value):
        return _link(name, kind, value, graph, nodes, info)
    if isinstance(kind, str) and kind in LINK_TYPES:
        return None, error("required_input_missing", f"{name} must be linked to a node's {kind} output", name, **info)
    if isinstance(kind, list):
        choice = value if value in kind else resolve(spec.name, name, value)
        if choice is None:
            shown = kind if len(kind) <= MAX_LIST_IN_ERROR else f"(list of length {len(kind)})"
            return None, error("value_not_in_list", "Value not in list", f"{name}: '{value}' not in {shown}", **info)
        return choice, None
    try:
        converted = _convert(kind, value)
    except (TypeError, ValueError, OverflowError) as exc:
        return None, error(
            "invalid_input_type",
            f"Failed to convert an input value to a {kind} value",
            f"{name}, {value}, {exc}",
            **info,
            exception_message=str(exc),
        )
    if "min" in options and converted < options["min"]:
        return None, error(
            "value_smaller_than_min", f"Value {converted} smaller than min of {options['min']}", name, **info
        )
    if "max" in options and converted > options["max"]:
        return None, error(
            "value_bigger_than_max", f"Value {converted} bigger than max of {options['max']}", name, **info
        )
    return converted, None


def _convert(kind: str, value: Any) -> Any:
    if kind == "INT":
        if isinstance(value, float) and not math.isfinite(value):
            raise ValueError("not a finite number")
        return int(value)
    if kind == "FLOAT":
        number = float(value)
        if not math.isfinite(number):
            raise ValueError("not a finite number")
        return number
    if kind == "BOOLEAN":
        if not isinstance(value, bool):
            raise ValueError("expected true or false")
        return value
    if isinstance(value, (dict, list)):
        raise ValueError("expected text")
    return str(value)


def _link(name: str, kind: Any, value: list, graph, nodes, info: dict) -> tuple[Any, dict | None]:
    if len(value) != 2 or not isinstance(value[1], int) or isinstance(value[1], bool):
        return None, error(
            "bad_linked_input", "Bad linked input, must be a length-2 list of [node_id, slot_index]", name, **info
        )
    source = str(value[0])
    if source not in graph:
        return None, error("bad_linked_input", f"Linked node #{source} does not exist", name, **info)
    outputs = nodes[graph[source]["class_type"]].outputs
    if not 0 <= value[1] < len(outputs):
        return None, error("bad_linked_input", f"Node #{source} has no output {value[1]}", name, **info)
    received = outputs[value[1]]
    if received != kind:
        return None, error(
            "return_type_mismatch",
            "Return type mismatch between linked nodes",
            f"{name}, received_type({received}) mismatch input_type({kind})",
            **info,
            received_type=received,
            linked_node=value,
        )
    return (source, value[1]), None
