"""Test-only stand-ins for third-party node packs the test host does not install (SAM2).

They register the node types recorded in ../recorded_schemas.json with exactly those schemas,
so that the graph editor can lay out shipped workflows that use them. Running one raises: the
end-to-end tests replace those parts of a workflow instead.
"""

import json
import os

_HERE = os.path.dirname(os.path.realpath(__file__))
with open(os.path.join(os.path.dirname(_HERE), "recorded_schemas.json")) as _f:
    _SCHEMAS = json.load(_f)


def _make(name, schema):
    def run(self, **kwargs):
        raise RuntimeError(f"{name} is a recorded schema for the graph editor only; install its pack to run it.")

    return type(
        name,
        (),
        {
            "INPUT_TYPES": classmethod(lambda cls: schema["input"]),
            "RETURN_TYPES": tuple(schema["output"]),
            "RETURN_NAMES": tuple(schema.get("output_name", schema["output"])),
            "FUNCTION": "run",
            "CATEGORY": schema.get("category", "recorded"),
            "run": run,
        },
    )


NODE_CLASS_MAPPINGS = {name: _make(name, s) for name, s in _SCHEMAS.items() if not name.startswith("_")}
NODE_DISPLAY_NAME_MAPPINGS = {
    name: s.get("display_name", name) for name, s in _SCHEMAS.items() if not name.startswith("_")
}
