"""The `masklm serve` options: how requests are batched and what one request may ask for.

Kept apart from the app so that `masklm serve --help` lists them (with their defaults and help, generated from
the fields below) without importing torch or FastAPI.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any


def option(default: Any, help: str) -> Any:
    """A field with the help text `masklm serve --help` shows for its --flag."""
    return field(default=default, metadata={"help": help})


@dataclass(frozen=True)
class ServeOptions:
    """Batching and request limits; every field is a `masklm serve --FIELD-NAME` flag."""

    max_batch: int = option(32, "most inputs (features) in one forward pass")
    max_wait_ms: float = option(2.0, "how long a forward pass waits for more requests once one is waiting")
    max_queue: int = option(256, "requests a model holds (waiting or being computed) before it answers 503")
    max_inputs: int = option(64, "inputs per request (more: 413)")
    max_chars: int = option(5000, "characters per input, all of its texts together (more: 413)")
    max_masks: int = option(16, "[MASK] tokens per fill-mask input (more: 400)")
    max_top_k: int = option(100, "fill-mask candidates per [MASK] a request may ask for")
    max_body_bytes: int = option(
        1 << 20, "request body size; a larger one is refused (413) without reading past the limit"
    )


def flags() -> list[tuple[str, Any, str]]:
    """(flag name, default, help) of every option, in field order."""
    return [(f.name, f.default, f.metadata["help"]) for f in dataclasses.fields(ServeOptions)]


def options_from(values: dict[str, Any]) -> ServeOptions:
    """ServeOptions from parsed arguments (keys are the field names); a value below 1 is refused in one line,
    except max_wait_ms, which may be 0 (never wait)."""
    from masklm.errors import UserError

    chosen = {f.name: values[f.name] for f in dataclasses.fields(ServeOptions) if f.name in values}
    for name, value in chosen.items():
        if value < (0 if name == "max_wait_ms" else 1):
            flag = "--" + name.replace("_", "-")
            raise UserError(f"{flag} must be at least {0 if name == 'max_wait_ms' else 1}, not {value}")
    return ServeOptions(**chosen)
