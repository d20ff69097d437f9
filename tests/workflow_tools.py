"""UI-format workflows: build them from node schemas, convert them to API format, validate them.

ComfyUI's frontend saves workflows in "UI format" (nodes with positions, ``links``, and widget
values as a positional list ``widgets_values``); ``POST /prompt`` takes "API format"
(``{id: {"class_type", "inputs"}}``). The frontend converts with ``graphToPrompt``; this module
does the same so that tests can run shipped workflows: widget values map to the node's widget
inputs in schema order (required, then optional), skipping the extra value that a seed widget's
"control after generate" adds, and the value an upload button adds after its combo.

Schemas come from ``/object_info`` of a live server, plus recorded schemas of packs the test
host does not install (``tests/data/recorded_schemas.json``: SAM2).
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass, field
from pathlib import Path

DATA = Path(__file__).resolve().parent / "data"
WIDGET_TYPES = {"INT", "FLOAT", "STRING", "BOOLEAN", "COMBO"}
UI_ONLY_NODES = {"Note", "MarkdownNote", "Reroute", "PrimitiveNode"}
TITLE_H = 30  # the editor draws a node's title bar above its pos
GROUP_TITLE_H = 40
SLOT_H = 20  # one input or output row
VIEW_MARGIN = (100, 120)  # where the saved view puts the note: clear of the side bar and the top menu


def recorded_schemas() -> dict:
    data = json.loads((DATA / "recorded_schemas.json").read_text())
    return {k: v for k, v in data.items() if not k.startswith("_")}


# --------------------------------------------------------------------------- schema helpers


def _spec_type(spec) -> str:
    kind = spec[0]
    return "COMBO" if isinstance(kind, list) else kind


def _spec_opts(spec) -> dict:
    return spec[1] if len(spec) > 1 and isinstance(spec[1], dict) else {}


def combo_options(spec) -> list:
    return spec[0] if isinstance(spec[0], list) else _spec_opts(spec).get("options", [])


def schema_inputs(schema: dict) -> list[tuple[str, list, bool]]:
    """(name, spec, required) in the order the frontend lays out widgets."""
    out = []
    order = schema.get("input_order", {})
    for section, required in (("required", True), ("optional", False)):
        specs = schema["input"].get(section, {})
        names = order.get(section, list(specs))
        out += [(name, specs[name], required) for name in names if name in specs]
    return out


def is_widget(spec) -> bool:
    opts = _spec_opts(spec)
    return _spec_type(spec) in WIDGET_TYPES and not opts.get("forceInput")


def extra_widget_values(name: str, spec) -> int:
    """Values the frontend stores after this widget's own: control-after-generate, upload buttons."""
    opts = _spec_opts(spec)
    n = 0
    if opts.get("control_after_generate") or (name in ("seed", "noise_seed") and _spec_type(spec) == "INT"):
        n += 1
    if opts.get("image_upload") or opts.get("video_upload") or opts.get("upload"):
        n += 1
    return n


# --------------------------------------------------------------------------- building


@dataclass
class Node:
    id: int
    type: str
    pos: tuple[float, float]
    widgets: dict
    title: str | None = None
    size: tuple[float, float] = (320, 140)
    properties: dict = field(default_factory=dict)
    mode: int = 0


class Graph:
    """A small builder for UI-format workflows, laid out from real node schemas."""

    def __init__(self, schemas: dict, packs=None):
        self.schemas = schemas
        self.packs = packs or (lambda type_: None)  # node type -> {"cnr_id", "ver"} saved in its properties
        self.nodes: list[Node] = []
        self.links: list[list] = []  # [id, from_node, from_slot, to_node, to_slot, type]
        self.notes: list[dict] = []
        self.groups: list[dict] = []

    def node(self, type_: str, pos, title=None, box=(320, 140), models=None, **widgets) -> Node:
        if type_ not in self.schemas:
            raise KeyError(f"unknown node type {type_}")
        schema_widgets = {n for n, spec, _ in schema_inputs(self.schemas[type_]) if is_widget(spec)}
        unknown = set(widgets) - schema_widgets
        if unknown:
            raise KeyError(f"{type_}: no widget named {sorted(unknown)}")
        props = {**(self.packs(type_) or {}), "Node name for S&R": type_}
        if models:
            props["models"] = models
        n = Node(len(self.nodes) + len(self.notes) + 1, type_, pos, widgets, title, box, props)
        self.nodes.append(n)
        return n

    def note(self, text: str, pos, box=(420, 220), title="Note"):
        self.notes.append(
            {
                "id": len(self.nodes) + len(self.notes) + 1,
                "type": "Note",
                "pos": list(pos),
                "size": list(box),
                "title": title,
                "text": text,
            }
        )

    def group(self, title: str, members: list, color: str = "#3f789e", pad: int = 20) -> None:
        """A titled box around ``members`` (nodes, or note dicts), as the editor draws a group."""
        rects = [
            (m.pos[0], m.pos[1] - TITLE_H, m.size[0], m.size[1] + TITLE_H)
            if isinstance(m, Node)
            else (m["pos"][0], m["pos"][1] - TITLE_H, m["size"][0], m["size"][1] + TITLE_H)
            for m in members
        ]
        x0, y0 = min(r[0] for r in rects) - pad, min(r[1] for r in rects) - pad - GROUP_TITLE_H
        x1, y1 = max(r[0] + r[2] for r in rects) + pad, max(r[1] + r[3] for r in rects) + pad
        self.groups.append(
            {
                "id": len(self.groups) + 1,
                "title": title,
                "bounding": [x0, y0, x1 - x0, y1 - y0],
                "color": color,
                "font_size": 24,
                "flags": {},
            }
        )

    def _output_slot(self, node: Node, output) -> tuple[int, str]:
        schema = self.schemas[node.type]
        names = schema.get("output_name", schema["output"])
        slot = output if isinstance(output, int) else names.index(output)
        return slot, schema["output"][slot]

    def link(self, src: Node, output, dst: Node, input_name: str) -> None:
        slot, type_ = self._output_slot(src, output)
        self.links.append([len(self.links) + 1, src.id, slot, dst.id, input_name, type_])

    def _view(self) -> dict:
        """The saved view: 100 % zoom with the first note's top-left corner near the window's top-left."""
        x, y = self.notes[0]["pos"] if self.notes else (0, 0)
        return {"scale": 1.0, "offset": [VIEW_MARGIN[0] - x, VIEW_MARGIN[1] - y]}

    def to_ui(self) -> dict:
        ui_nodes = []
        for order, n in enumerate(self.nodes):
            schema = self.schemas[n.type]
            inputs, values = [], []
            for name, spec, required in schema_inputs(schema):
                link = next((ln for ln in self.links if ln[3] == n.id and ln[4] == name), None)
                if is_widget(spec):
                    opts = _spec_opts(spec)
                    if name in n.widgets:
                        value = n.widgets[name]
                    elif "default" in opts:
                        value = opts["default"]
                    elif _spec_type(spec) == "COMBO":
                        options = combo_options(spec)
                        value = options[0] if options else ""
                    else:
                        value = {"INT": 0, "FLOAT": 0.0, "STRING": "", "BOOLEAN": False}[_spec_type(spec)]
                    values.append(value)
                    extra = extra_widget_values(name, spec)
                    if extra and (opts.get("control_after_generate") or name in ("seed", "noise_seed")):
                        values.append("fixed")
                        extra -= 1
                    values += ["image"] * extra
                    if link is not None:
                        inputs.append(
                            {"name": name, "type": _spec_type(spec), "widget": {"name": name}, "link": link[0]}
                        )
                elif link is not None or required:
                    inputs.append({"name": name, "type": _spec_type(spec), "link": link[0] if link else None})
                else:
                    inputs.append({"name": name, "type": _spec_type(spec), "link": None, "shape": 7})
            names = schema.get("output_name", schema["output"])
            outputs = [
                {
                    "name": names[i],
                    "type": t,
                    "slot_index": i,
                    "links": [ln[0] for ln in self.links if ln[1] == n.id and ln[2] == i],
                }
                for i, t in enumerate(schema["output"])
            ]
            entry = {
                "id": n.id,
                "type": n.type,
                "pos": list(n.pos),
                "size": list(n.size),
                "flags": {},
                "order": order,
                "mode": n.mode,
                "inputs": inputs,
                "outputs": outputs,
                "properties": n.properties,
                "widgets_values": values,
            }
            if n.title:
                entry["title"] = n.title
            ui_nodes.append(entry)
        for note in self.notes:
            ui_nodes.append(
                {
                    "id": note["id"],
                    "type": "Note",
                    "pos": note["pos"],
                    "size": note["size"],
                    "flags": {},
                    "order": len(ui_nodes),
                    "mode": 0,
                    "inputs": [],
                    "outputs": [],
                    "title": note["title"],
                    "properties": {},
                    "widgets_values": [note["text"]],
                    "color": "#432",
                    "bgcolor": "#653",
                }
            )
        links = []
        for ln in self.links:
            dst = next(n for n in ui_nodes if n["id"] == ln[3])
            to_slot = next(i for i, inp in enumerate(dst["inputs"]) if inp["name"] == ln[4])
            links.append([ln[0], ln[1], ln[2], ln[3], to_slot, ln[5]])
        return {
            "id": str(uuid.uuid5(uuid.NAMESPACE_URL, "kfi/" + "/".join(n.type for n in self.nodes))),
            "revision": 0,
            "last_node_id": max(n["id"] for n in ui_nodes),
            "last_link_id": len(links),
            "nodes": ui_nodes,
            "links": links,
            "groups": self.groups,
            "config": {},
            "extra": {"ds": self._view()},
            "version": 0.4,
        }


# --------------------------------------------------------------------------- UI -> API


class WorkflowError(AssertionError):
    pass


def ui_to_api(workflow: dict, schemas: dict) -> dict:
    """Convert a UI-format workflow to an API-format prompt, as the frontend's graphToPrompt does."""
    links = {ln[0]: ln for ln in workflow["links"]}
    prompt = {}
    for node in workflow["nodes"]:
        if node["type"] in UI_ONLY_NODES or node.get("mode", 0) in (2, 4):
            continue
        schema = schemas.get(node["type"])
        if schema is None:
            raise WorkflowError(f"node {node['id']}: unknown node type {node['type']!r}")
        linked = {inp["name"]: inp["link"] for inp in node.get("inputs", []) if inp.get("link") is not None}
        values = list(node.get("widgets_values") or [])
        inputs = {}
        for name, spec, required in schema_inputs(schema):
            if is_widget(spec):
                if not values and not required:
                    continue  # saved before this optional widget existed: the frontend keeps its default
                if not values:
                    raise WorkflowError(f"node {node['id']} ({node['type']}): no widget value left for {name!r}")
                inputs[name] = values.pop(0)
                for _ in range(extra_widget_values(name, spec)):
                    if values:
                        values.pop(0)
            if name in linked:
                ln = links[linked[name]]
                inputs[name] = [str(ln[1]), ln[2]]
        prompt[str(node["id"])] = {"class_type": node["type"], "inputs": inputs}
    return prompt


def validate_workflow(workflow: dict, schemas: dict) -> list[str]:
    """Problems a graph editor or the server would report; [] when the workflow is sound.

    Checks node types, links (both ends exist, types agree), required inputs, widget value types
    and ranges, and combo values (model files named in the node's ``properties.models`` may be
    absent: they are downloaded by the user).
    """
    problems = []
    nodes = {n["id"]: n for n in workflow["nodes"]}
    for ln in workflow["links"]:
        link_id, src, src_slot, dst, dst_slot, type_ = ln
        if src not in nodes or dst not in nodes:
            problems.append(f"link {link_id}: missing node {src if src not in nodes else dst}")
            continue
        out_type = nodes[src]["outputs"][src_slot]["type"]
        in_type = nodes[dst]["inputs"][dst_slot]["type"]
        if "*" not in (out_type, in_type) and out_type != in_type:
            problems.append(
                f"link {link_id}: {nodes[src]['type']} gives {out_type} but "
                f"{nodes[dst]['type']}.{nodes[dst]['inputs'][dst_slot]['name']} takes {in_type}"
            )
    try:
        prompt = ui_to_api(workflow, schemas)
    except WorkflowError as err:
        return problems + [str(err)]
    for node_id, entry in prompt.items():
        node, schema = nodes[int(node_id)], schemas[entry["class_type"]]
        models = {m["name"] for m in node.get("properties", {}).get("models", [])}
        for name, spec, required in schema_inputs(schema):
            where = f"node {node_id} ({entry['class_type']}).{name}"
            if name not in entry["inputs"]:
                if required:
                    problems.append(f"{where}: required input missing")
                continue
            value, kind, opts = entry["inputs"][name], _spec_type(spec), _spec_opts(spec)
            if isinstance(value, list):
                continue  # a link, checked above
            if kind == "COMBO":
                options = combo_options(spec)
                if value not in options and value not in models and str(value).split("/")[-1] not in models:
                    problems.append(f"{where}: {value!r} is not one of {options[:8]}")
            elif kind == "INT" and (not isinstance(value, int) or isinstance(value, bool)):
                problems.append(f"{where}: {value!r} is not an integer")
            elif kind == "FLOAT" and not isinstance(value, (int, float)):
                problems.append(f"{where}: {value!r} is not a number")
            elif kind == "BOOLEAN" and not isinstance(value, bool):
                problems.append(f"{where}: {value!r} is not a boolean")
            elif kind == "STRING" and not isinstance(value, str):
                problems.append(f"{where}: {value!r} is not text")
            if kind in ("INT", "FLOAT") and isinstance(value, (int, float)):
                if "min" in opts and value < opts["min"] or "max" in opts and value > opts["max"]:
                    problems.append(f"{where}: {value} outside {opts.get('min')}..{opts.get('max')}")
    return problems


# --------------------------------------------------------------------------- layout checks


def _rect(node: dict) -> tuple[float, float, float, float]:
    (x, y), (w, h) = node["pos"], node["size"]
    return x, y - TITLE_H, x + w, y + h


def _segment_hits_rect(p, q, rect, margin=4.0) -> bool:
    """Does the segment p-q pass through the rectangle (shrunk by margin)? Sampled: links are short."""
    x0, y0, x1, y1 = rect[0] + margin, rect[1] + margin, rect[2] - margin, rect[3] - margin
    steps = max(2, int(max(abs(q[0] - p[0]), abs(q[1] - p[1])) / 4))
    return any(
        x0 < p[0] + (q[0] - p[0]) * t / steps < x1 and y0 < p[1] + (q[1] - p[1]) * t / steps < y1
        for t in range(steps + 1)
    )


def layout_problems(workflow: dict) -> list[str]:
    """Links drawn over a node (a straight line from the output's row to the input's row stands in for the editor's
    curve), links that run backwards, nodes overlapping, groups overlapping, and nodes outside every group."""
    nodes = {n["id"]: n for n in workflow["nodes"]}
    problems = []
    for ln in workflow["links"]:
        src, dst = nodes[ln[1]], nodes[ln[3]]
        p = (src["pos"][0] + src["size"][0], src["pos"][1] + SLOT_H * (ln[2] + 0.5))
        q = (dst["pos"][0], dst["pos"][1] + SLOT_H * (ln[4] + 0.5))
        if q[0] < p[0]:
            problems.append(f"link {ln[0]}: {src['type']} -> {dst['type']} runs right to left")
        for other in workflow["nodes"]:
            if other["id"] not in (src["id"], dst["id"]) and _segment_hits_rect(p, q, _rect(other)):
                problems.append(
                    f"link {ln[0]}: {src['type']} -> {dst['type']} crosses {other['type']} ({other.get('title', '')})"
                )
    rects = [(n, _rect(n)) for n in workflow["nodes"]]
    for i, (a, ra) in enumerate(rects):
        for b, rb in rects[i + 1 :]:
            if ra[0] < rb[2] and rb[0] < ra[2] and ra[1] < rb[3] and rb[1] < ra[3]:
                problems.append(f"nodes {a['id']} ({a['type']}) and {b['id']} ({b['type']}) overlap")
    boxes = [
        (
            g["title"],
            (
                g["bounding"][0],
                g["bounding"][1],
                g["bounding"][0] + g["bounding"][2],
                g["bounding"][1] + g["bounding"][3],
            ),
        )
        for g in workflow.get("groups", [])
    ]
    for i, (ta, ra) in enumerate(boxes):
        for tb, rb in boxes[i + 1 :]:
            if ra[0] < rb[2] and rb[0] < ra[2] and ra[1] < rb[3] and rb[1] < ra[3]:
                problems.append(f"groups {ta!r} and {tb!r} overlap")
    for n, r in rects:
        if n["type"] not in ("Note", "MarkdownNote") and not any(
            b[0] <= r[0] and b[1] <= r[1] and r[2] <= b[2] and r[3] <= b[3] for _, b in boxes
        ):
            problems.append(f"node {n['id']} ({n['type']}) is in no group")
    return problems
