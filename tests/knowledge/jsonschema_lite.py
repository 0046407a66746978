"""Just enough JSON Schema (draft 2020-12) to validate attribute files against `attributes/schema.json`.

`jsonschema` is not a dependency; this covers every keyword pydantic emits for `AttributeFile` and fails loudly
on any other, so a schema change cannot make the check silently weaker.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

_TYPES: dict[str, Any] = {
    "object": dict, "array": list, "string": str, "boolean": bool, "null": type(None),
    "integer": int, "number": (int, float),
}
_IGNORED = {"title", "description", "default", "$schema", "$defs", "examples"}


def validate(instance: Any, schema: dict[str, Any], root: dict[str, Any] | None = None, path: str = "$") -> None:
    """Raise AssertionError naming the path of the first violation."""
    root = root if root is not None else schema
    for keyword, value in schema.items():
        if keyword in _IGNORED:
            continue
        if keyword == "$ref":
            assert value.startswith("#/$defs/"), f"unsupported $ref {value}"
            validate(instance, root["$defs"][value.removeprefix("#/$defs/")], root, path)
        elif keyword == "type":
            expected = _TYPES[value]
            ok = isinstance(instance, expected) and not (value in ("integer", "number") and isinstance(instance, bool))
            assert ok, f"{path}: expected {value}, got {type(instance).__name__}"
        elif keyword == "properties":
            for name, sub in value.items():
                if isinstance(instance, dict) and name in instance:
                    validate(instance[name], sub, root, f"{path}.{name}")
        elif keyword == "required":
            missing = [name for name in value if name not in instance]
            assert not missing, f"{path}: missing {missing}"
        elif keyword == "additionalProperties":
            if value is False:
                extra = set(instance) - set(schema.get("properties", {}))
                assert not extra, f"{path}: unexpected {sorted(extra)}"
        elif keyword == "items":
            for index, item in enumerate(instance):
                validate(item, value, root, f"{path}[{index}]")
        elif keyword == "anyOf":
            errors = []
            for option in value:
                try:
                    validate(instance, option, root, path)
                    break
                except AssertionError as exc:
                    errors.append(str(exc))
            else:
                raise AssertionError(f"{path}: matches no option: {errors}")
        elif keyword == "enum":
            assert instance in value, f"{path}: {instance!r} not in {value}"
        elif keyword == "const":
            assert instance == value, f"{path}: {instance!r} != {value!r}"
        elif keyword == "minLength":
            assert len(instance) >= value, f"{path}: shorter than {value}"
        elif keyword == "minItems":
            assert len(instance) >= value, f"{path}: fewer than {value} items"
        elif keyword == "minimum":
            assert instance >= value, f"{path}: below {value}"
        elif keyword == "format":
            assert value == "date-time", f"unsupported format {value}"
            datetime.fromisoformat(instance.replace("Z", "+00:00"))
        else:
            raise AssertionError(f"jsonschema_lite does not know the keyword {keyword!r} (at {path})")
