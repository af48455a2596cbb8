"""Make a self-contained JSON schema of a CRD kind from its cloudcoil
models: $defs kept, every object with properties closed
(additionalProperties false), status dropped."""
import json, sys, importlib
module, kind, out = sys.argv[1], sys.argv[2], sys.argv[3]
cls = getattr(importlib.import_module(module), kind)
schema = cls.model_json_schema(by_alias=True)
def close(node):
    if isinstance(node, dict):
        if node.get("type") == "object" and "properties" in node and "additionalProperties" not in node:
            node["additionalProperties"] = False
        for v in node.values():
            close(v)
    elif isinstance(node, list):
        for v in node:
            close(v)
close(schema)
schema.get("properties", {}).pop("status", None)
schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
json.dump(schema, open(out, "w"), indent=1, sort_keys=True)
print(out, len(json.dumps(schema)))
