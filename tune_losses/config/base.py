"""What every config section shares: strict models and the one-line user error."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class ConfigError(ValueError):
    """A user-facing configuration error; its message is one line naming file and field."""


class Strict(BaseModel):
    """A config section: unknown keys are errors, not silently ignored."""

    model_config = ConfigDict(extra="forbid")
