"""The committed JSON Schema and phone-app guide never drift from the code."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import msgspec
import pytest

from protocol import frames, schema
from protocol.lifecycle import REPORTS, STATUSES, Kind, Outcome, apply

PROTOCOL_DIR = Path(schema.__file__).parent
README = PROTOCOL_DIR / "README.md"

DEVICE_STRUCTS: tuple[type[msgspec.Struct], ...] = frames.DeviceFrame.__args__  # type: ignore[attr-defined]
BROKER_STRUCTS: tuple[type[msgspec.Struct], ...] = frames.BrokerFrame.__args__  # type: ignore[attr-defined]


def _tag(struct: type[msgspec.Struct]) -> str:
    tag = struct.__struct_config__.tag
    assert isinstance(tag, str)
    return tag


@pytest.fixture(scope="module")
def committed() -> dict[str, Any]:
    doc: dict[str, Any] = json.loads(schema.SCHEMA_PATH.read_text(encoding="utf-8"))
    return doc


def test_committed_schema_is_what_the_generator_writes() -> None:
    text = schema.SCHEMA_PATH.read_text(encoding="utf-8")
    assert text == schema.render(), "stale: run `python -m protocol.schema` and commit"


def test_render_is_stable() -> None:
    assert schema.render() == schema.render()
    assert schema.render().endswith("}\n")


def test_check_mode_passes() -> None:
    assert schema.main(["--check"]) == 0


@pytest.mark.parametrize(
    ("union", "structs"), [("DeviceFrame", DEVICE_STRUCTS), ("BrokerFrame", BROKER_STRUCTS)]
)
def test_schema_has_every_frame_type(
    committed: dict[str, Any], union: str, structs: tuple[type[msgspec.Struct], ...]
) -> None:
    defs = committed["$defs"]
    mapping = defs[union]["discriminator"]["mapping"]
    assert defs[union]["discriminator"]["propertyName"] == "type"
    assert set(mapping) == {_tag(s) for s in structs}
    assert {ref["$ref"] for ref in defs[union]["anyOf"]} == set(mapping.values())
    for struct in structs:
        name = struct.__name__
        assert mapping[_tag(struct)] == f"#/$defs/{name}"
        body = defs[name]
        assert body["properties"]["type"] == {"enum": [_tag(struct)]}
        assert "type" in body["required"]
        # Every field, with the required ones exactly those without a default.
        fields = msgspec.structs.fields(struct)
        assert set(body["properties"]) == {"type"} | {f.encode_name for f in fields}
        assert set(body["required"]) == {"type"} | {f.encode_name for f in fields if f.required}
        # Unknown fields are ignored by both sides, so the schema allows them.
        assert body.get("additionalProperties", True) is not False


def test_schema_document_validates_either_direction(committed: dict[str, Any]) -> None:
    assert committed["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    assert committed["anyOf"] == [{"$ref": "#/$defs/DeviceFrame"}, {"$ref": "#/$defs/BrokerFrame"}]
    assert committed["x-protocolVersion"] == frames.PROTOCOL_VERSION
    assert committed["x-maxFrameBytes"] == frames.MAX_FRAME_BYTES


def test_schema_carries_the_health_ranges(committed: dict[str, Any]) -> None:
    props = committed["$defs"]["Health"]["properties"]
    battery = props["battery"]["anyOf"][0]
    signal = props["signal"]["anyOf"][0]
    assert (battery["minimum"], battery["maximum"]) == (0, 100)
    assert (signal["minimum"], signal["maximum"]) == (0, 4)


def test_every_ref_resolves(committed: dict[str, Any]) -> None:
    refs: list[str] = []

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            for key, value in node.items():
                if key == "$ref":
                    refs.append(value)
                else:
                    walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(committed)
    assert refs
    for ref in refs:
        assert ref.startswith("#/$defs/")
        assert ref.removeprefix("#/$defs/") in committed["$defs"], ref


# --- protocol/README.md ------------------------------------------------------


def _cell(outcome: Outcome) -> str:
    match outcome.kind:
        case Kind.MOVE:
            return f"→ `{outcome.new_status}`, receipt `{outcome.receipt}`"
        case Kind.REPEAT:
            return f"repeat: receipt `{outcome.receipt}`"
        case Kind.LATE:
            return f"history only: receipt `{outcome.receipt}`"
        case Kind.CANCEL:
            return "`cancel`"
        case Kind.REFUSE:
            return f"`error` {outcome.code}"


def lifecycle_table() -> str:
    """The README's status/report table, rendered from lifecycle.TABLE."""
    head = "| status \\ report | " + " | ".join(f"`{r}`" for r in REPORTS) + " |"
    rule = "|---" * (len(REPORTS) + 1) + "|"
    rows = [
        f"| `{s}` | " + " | ".join(_cell(apply(s, r)) for r in REPORTS) + " |" for s in STATUSES
    ]
    return "\n".join([head, rule, *rows])


def test_readme_has_the_lifecycle_table() -> None:
    table = lifecycle_table()
    assert table in README.read_text(encoding="utf-8"), "paste this into protocol/README.md:\n" + table


def test_readme_names_every_frame_and_error_code() -> None:
    text = README.read_text(encoding="utf-8")
    for struct in DEVICE_STRUCTS + BROKER_STRUCTS:
        assert f'"type": "{_tag(struct)}"' in text, _tag(struct)
    for code in ("bad_json", "bad_frame", "unknown_type", "too_large", "not_acked", "not_yours"):
        assert code in text, code
    assert "frames.schema.json" in text


def _json_blocks(text: str) -> list[str]:
    blocks: list[str] = []
    current: list[str] | None = None
    for line in text.splitlines():
        if current is None and line.strip() == "```json":
            current = []
        elif current is not None and line.strip() == "```":
            blocks.append("\n".join(current))
            current = None
        elif current is not None:
            current.append(line)
    return blocks


def test_readme_json_examples_are_valid_frames() -> None:
    blocks = _json_blocks(README.read_text(encoding="utf-8"))
    assert len(blocks) >= len(DEVICE_STRUCTS) + len(BROKER_STRUCTS)
    for block in blocks:
        try:
            frames.decode_device(block)
        except frames.FrameError:
            frames.decode_broker(block)  # raises if it is neither


def test_readme_session_lines_are_valid_frames() -> None:
    lines = README.read_text(encoding="utf-8").splitlines()
    sent = [line[2:] for line in lines if line.startswith("→ {")]
    received = [line[2:] for line in lines if line.startswith("← {")]
    assert sent and received
    for line in sent:
        frames.decode_device(line)
    for line in received:
        frames.decode_broker(line)
