"""A graph as Mermaid flowchart text (``perceive graph show --mermaid``)."""

from __future__ import annotations

from perceive.graph.spec import GraphSpec

SHAPES = {"generate": ("([", "])"), "action": ("[", "]"), "route": ("{", "}"), "answer": ("((", "))")}


def to_mermaid(spec: GraphSpec) -> str:
    """Mermaid flowchart text of a graph."""
    lines = ["flowchart TD"]
    for name, n in spec.nodes.items():
        a, b = SHAPES[n.kind]
        detail = {"action": f"{n.action}{' (forced)' if n.forced else ''}", "route": "on call" if n.switch else "when",
                  "generate": "generate", "answer": "answer"}[n.kind]
        lines.append(f'    {name}{a}"{name}<br/>{detail}"{b}')
    for name, n in spec.nodes.items():
        for label, target in n.successors():
            lines.append(f"    {name} -->|{label.replace('*', 'any')}| {target}" if label != "next"
                         else f"    {name} --> {target}")
    if spec.budget is not None:
        lines.append(f"    %% hop budget: {spec.budget}")
    return "\n".join(lines) + "\n"


__all__ = ["SHAPES", "to_mermaid"]
