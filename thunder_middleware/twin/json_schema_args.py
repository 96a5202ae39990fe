"""Sample tool-call arguments that satisfy a tool's JSON schema.

Agent frameworks validate the arguments a model returns (LangChain parses them into the
tool's pydantic model) and fail the step when they do not fit, so the twin's tool calls must
be schema-valid. Covered: ``type`` (string, integer, number, boolean, array, object, null,
and lists of types), ``enum``, ``const``, ``default``-free required/optional properties,
nested objects and arrays with ``minItems``/``maxItems``, numeric bounds (inclusive and
exclusive), string ``minLength``/``maxLength``, ``anyOf``/``oneOf`` (first usable branch),
``allOf`` (object branches merged) and local ``$ref`` into ``$defs``/``definitions`` (what
pydantic emits for nested models). Not covered: ``pattern`` and ``format`` (a plain word
string is produced), ``not``, conditionals (``if``/``then``), ``uniqueItems`` beyond chance.
"""

from __future__ import annotations

import random
from collections.abc import Mapping
from typing import Any

WORDS = (
    "alpha", "beta", "delta", "river", "stone", "cloud", "north", "ember", "maple",
    "quartz", "harbor", "signal", "orbit", "lumen", "cedar", "pixel", "vector", "atlas",
)  # fmt: skip

_MAX_DEPTH = 6


class ArgumentSampler:
    """Draws values for one tool's schema; ``root`` resolves local ``$ref``s."""

    def __init__(self, root: Mapping[str, Any], rng: random.Random) -> None:
        self._root = root
        self._rng = rng

    def sample(self, schema: Mapping[str, Any] | None = None, depth: int = 0) -> Any:
        schema = self._resolve(self._root if schema is None else schema)
        if "const" in schema:
            return schema["const"]
        if isinstance(schema.get("enum"), list) and schema["enum"]:
            return self._rng.choice(schema["enum"])
        for key in ("anyOf", "oneOf"):
            branches = schema.get(key)
            if isinstance(branches, list) and branches:
                return self.sample(self._pick_branch(branches), depth)
        if isinstance(schema.get("allOf"), list):
            return self.sample(self._merge_all_of(schema), depth)
        kind = self._type_of(schema)
        if kind == "object":
            return self._object(schema, depth)
        if kind == "array":
            return self._array(schema, depth)
        if kind == "integer":
            return self._integer(schema)
        if kind == "number":
            return self._number(schema)
        if kind == "boolean":
            return self._rng.random() < 0.5
        if kind == "null":
            return None
        return self._string(schema)

    def _resolve(self, schema: Mapping[str, Any]) -> Mapping[str, Any]:
        seen = 0
        while isinstance(schema.get("$ref"), str) and seen < 32:
            ref = schema["$ref"]
            target: Any = self._root
            if not ref.startswith("#"):
                return {}
            for part in ref.lstrip("#/").split("/"):
                if not part:
                    continue
                target = target.get(part.replace("~1", "/").replace("~0", "~"), {})
            schema = target if isinstance(target, Mapping) else {}
            seen += 1
        return schema

    def _pick_branch(self, branches: list[Any]) -> Mapping[str, Any]:
        """Prefer a branch that is not plain null: a tool wants a real value."""
        usable = [b for b in branches if isinstance(b, Mapping)]
        non_null = [b for b in usable if self._type_of(self._resolve(b)) != "null"]
        return (non_null or usable or [{}])[0]

    def _merge_all_of(self, schema: Mapping[str, Any]) -> Mapping[str, Any]:
        merged: dict[str, Any] = {k: v for k, v in schema.items() if k != "allOf"}
        properties: dict[str, Any] = dict(merged.get("properties", {}))
        required: list[str] = list(merged.get("required", []))
        for branch in schema["allOf"]:
            if not isinstance(branch, Mapping):
                continue
            branch = self._resolve(branch)
            for key, value in branch.items():
                if key == "properties":
                    properties.update(value)
                elif key == "required":
                    required.extend(value)
                else:
                    merged.setdefault(key, value)
        if properties:
            merged["properties"] = properties
            merged.setdefault("type", "object")
        if required:
            merged["required"] = required
        return merged

    @staticmethod
    def _type_of(schema: Mapping[str, Any]) -> str:
        kind = schema.get("type")
        if isinstance(kind, list):
            concrete = [k for k in kind if k != "null"]
            kind = concrete[0] if concrete else "null"
        if isinstance(kind, str):
            return kind
        if "properties" in schema:
            return "object"
        if "items" in schema:
            return "array"
        return "string"

    def _object(self, schema: Mapping[str, Any], depth: int) -> dict[str, Any]:
        properties = schema.get("properties") or {}
        required = set(schema.get("required") or [])
        value: dict[str, Any] = {}
        for name, sub in properties.items():
            wanted = name in required or (depth < _MAX_DEPTH and self._rng.random() < 0.5)
            if wanted and isinstance(sub, Mapping):
                value[name] = self.sample(sub, depth + 1)
        for name in required - value.keys():  # required but not described: any string
            value[name] = self._string({})
        return value

    def _array(self, schema: Mapping[str, Any], depth: int) -> list[Any]:
        low = int(schema.get("minItems", 0))
        high = int(schema.get("maxItems", max(low, 3)))
        count = self._rng.randint(low, max(low, min(high, low + 3)))
        if depth >= _MAX_DEPTH:
            count = low
        items = schema.get("items")
        if isinstance(items, list):  # tuple form
            return [self.sample(item, depth + 1) for item in items]
        item_schema = items if isinstance(items, Mapping) else {}
        return [self.sample(item_schema, depth + 1) for _ in range(count)]

    def _bounds(self, schema: Mapping[str, Any], step: float) -> tuple[float, float]:
        maximum = schema.get("maximum")
        default_low = float(maximum) - 1000 if maximum is not None else 0.0
        low = float(schema.get("minimum", default_low))
        high = float(maximum) if maximum is not None else low + 1000
        if "exclusiveMinimum" in schema and not isinstance(schema["exclusiveMinimum"], bool):
            low = max(low, float(schema["exclusiveMinimum"]) + step)
        if "exclusiveMaximum" in schema and not isinstance(schema["exclusiveMaximum"], bool):
            high = min(high, float(schema["exclusiveMaximum"]) - step)
        return low, max(low, high)

    def _integer(self, schema: Mapping[str, Any]) -> int:
        low, high = self._bounds(schema, 1)
        lo, hi = int(-(-low // 1)), int(high // 1)  # ceil(low), floor(high)
        return self._rng.randint(lo, max(lo, hi))

    def _number(self, schema: Mapping[str, Any]) -> float:
        low, high = self._bounds(schema, 1e-6)
        value = self._rng.uniform(low, high)
        rounded = round(value, 3)  # short numbers, like a model writes them
        return rounded if low <= rounded <= high else value

    def _string(self, schema: Mapping[str, Any]) -> str:
        low = int(schema.get("minLength", 1))
        high = int(schema.get("maxLength", max(low, 40)))
        words = " ".join(self._rng.choice(WORDS) for _ in range(self._rng.randint(1, 4)))
        while len(words) < low:
            words += " " + self._rng.choice(WORDS)
        return words[: max(high, 0)] if high >= low else words[:low]


def sample_arguments(parameters: Mapping[str, Any] | None, rng: random.Random) -> dict[str, Any]:
    """Arguments for a function whose ``parameters`` schema is given (None: no arguments)."""
    if not parameters:
        return {}
    value = ArgumentSampler(parameters, rng).sample()
    return value if isinstance(value, dict) else {}
