"""Validate KubeRay manifests offline against the real CRD schemas (tests/data/kuberay, see NOTICE there).

A CRD's OpenAPI v3 schema is close to JSON Schema but not the same; this module closes the gap the way the
Kubernetes API server reads it, so that validation here fails where `kubectl apply` would:

- `x-kubernetes-int-or-string: true` accepts an integer or a string (quantities such as cpu: "8" or 8);
- `nullable: true` also accepts null;
- `format: int32/int64` bounds integers to that range;
- unknown fields are errors, as with kubectl's default `--validate=strict`, except below
  `x-kubernetes-preserve-unknown-fields` and in objects that declare no properties;
- `metadata` is checked as ObjectMeta's name rules (the CRD leaves it open);
- CEL rules (`x-kubernetes-validations`) are not evaluated: no CEL interpreter here.
"""

from __future__ import annotations

import copy
import functools
import re
from pathlib import Path
from typing import Any, Iterable

import jsonschema
import yaml

CRD_DIR = Path(__file__).resolve().parents[1] / "data" / "kuberay"
CRD_FILES = {"RayJob": "ray.io_rayjobs.yaml", "RayCluster": "ray.io_rayclusters.yaml"}
INT_RANGES = {"int32": (-(2 ** 31), 2 ** 31 - 1), "int64": (-(2 ** 63), 2 ** 63 - 1)}
DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")


def to_json_schema(node: Any) -> Any:
    """A JSON Schema (draft 7) copy of an OpenAPI v3 structural schema."""
    if isinstance(node, list):
        return [to_json_schema(n) for n in node]
    if not isinstance(node, dict):
        return node
    out = {k: to_json_schema(v) for k, v in node.items() if not k.startswith("x-kubernetes-") and k != "nullable"}
    if node.get("x-kubernetes-int-or-string"):
        out.pop("type", None)
        out.setdefault("anyOf", [{"type": "integer"}, {"type": "string"}])
    if node.get("type") == "integer" and node.get("format") in INT_RANGES:
        low, high = INT_RANGES[node["format"]]
        out["minimum"] = max(out.get("minimum", low), low)
        out["maximum"] = min(out.get("maximum", high), high)
    if node.get("nullable") and "type" in out:
        out["type"] = [out["type"], "null"]
    strict = "properties" in node and "additionalProperties" not in node
    if strict and not node.get("x-kubernetes-preserve-unknown-fields"):
        out["additionalProperties"] = False
    return out


@functools.lru_cache(maxsize=None)
def crd(kind: str) -> dict[str, Any]:
    # libyaml when present: the two CRDs are 2 MB of YAML, seconds to parse in pure Python.
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    return yaml.load((CRD_DIR / CRD_FILES[kind]).read_text(), Loader=loader)


@functools.lru_cache(maxsize=None)
def validator(kind: str, version: str = "v1") -> jsonschema.Draft7Validator:
    for entry in crd(kind)["spec"]["versions"]:
        if entry["name"] == version:
            schema = to_json_schema(copy.deepcopy(entry["schema"]["openAPIV3Schema"]))
            jsonschema.Draft7Validator.check_schema(schema)
            return jsonschema.Draft7Validator(schema)
    raise KeyError(f"{kind} has no version {version}")


def errors(doc: dict[str, Any]) -> list[str]:
    """Every problem of one KubeRay document, each as 'path: message'; empty when valid."""
    kind = doc.get("kind")
    if kind not in CRD_FILES:
        return [f"kind: {kind!r} is not one of {', '.join(CRD_FILES)}"]
    group = crd(kind)["spec"]["group"]
    api, _, version = str(doc.get("apiVersion", "")).partition("/")
    if api != group or not version:
        return [f"apiVersion: {doc.get('apiVersion')!r} is not {group}/<version>"]
    problems = _metadata_errors(doc.get("metadata"))
    for err in sorted(validator(kind, version).iter_errors(doc), key=lambda e: list(e.absolute_path)):
        where = ".".join(str(p) for p in err.absolute_path) or "<root>"
        problems.append(f"{where}: {err.message}")
    return problems


def _metadata_errors(meta: Any) -> list[str]:
    if not isinstance(meta, dict) or not meta.get("name"):
        return ["metadata.name: required"]
    name = meta["name"]
    if not isinstance(name, str) or len(name) > 253 or not DNS_SUBDOMAIN.match(name):
        return [f"metadata.name: {name!r} is not a DNS-1123 subdomain"]
    return []


def kuberay_docs(docs: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    return [d for d in docs if d and d.get("kind") in CRD_FILES]
