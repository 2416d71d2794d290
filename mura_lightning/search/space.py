"""The search space of `hparams_search.params`: checked specs, the values a trial draws, and override lines."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from omegaconf import OmegaConf

from mura_lightning.errors import MuraError

TYPES = ("float", "int", "categorical")
RANGE_FIELDS = ("low", "high", "log", "step")
FIELDS = {"key", "type", "when", "choices", *RANGE_FIELDS}
FOLDER_DIGITS = 3  # significant digits of a float in a trial folder's name


@dataclass(frozen=True)
class Param:
    """One searched setting: `name` in Optuna and folder names, `key` the train override it sets."""

    name: str
    key: str
    type: str
    low: float | None = None
    high: float | None = None
    log: bool = False
    step: float | None = None
    choices: tuple[Any, ...] = ()
    when: dict[str, tuple[Any, ...]] = field(default_factory=dict)

    def active(self, values: Mapping[str, Any]) -> bool:
        """Whether the values drawn so far meet this parameter's `when` condition."""
        return all(name in values and values[name] in allowed for name, allowed in self.when.items())

    def suggest(self, trial) -> Any:
        """The value an Optuna trial draws for this parameter."""
        if self.type == "categorical":
            return trial.suggest_categorical(self.name, list(self.choices))
        if self.type == "int":
            return trial.suggest_int(self.name, int(self.low), int(self.high), step=int(self.step or 1), log=self.log)
        return trial.suggest_float(self.name, self.low, self.high, step=self.step, log=self.log)


def parse_space(params: Mapping[str, Any] | None, source: str) -> list[Param]:
    """The checked parameters of a `params` mapping (from `source`, named in errors), in their order."""
    plain = OmegaConf.to_container(params, resolve=True) if OmegaConf.is_config(params) else params
    if not plain:
        raise MuraError(f"hparams_search.params in {source} is empty: give at least one parameter to search")
    space: list[Param] = []
    for name, spec in plain.items():
        space.append(parse_param(str(name), spec, {param.name: param for param in space}, source))
    return space


def parse_param(name: str, spec: Any, earlier: Mapping[str, Param], source: str) -> Param:
    """One parameter's spec checked: its type, range or choices, and a condition on an earlier parameter."""
    where = f"hparams_search.params.{name} in {source}"
    if not isinstance(spec, Mapping):
        raise MuraError(f"{where} must be a mapping with a type (one of {', '.join(TYPES)}), not {spec!r}")
    unknown = sorted(set(spec) - FIELDS)
    if unknown:
        raise MuraError(f"{where} has unknown field(s) {', '.join(unknown)}; known: {', '.join(sorted(FIELDS))}")
    kind = spec.get("type")
    if kind not in TYPES:
        raise MuraError(f"{where} has type {kind!r}; use one of: {', '.join(TYPES)}")
    when = parse_condition(spec.get("when") or {}, earlier, where)
    key = str(spec.get("key") or name)
    if kind == "categorical":
        return categorical_param(name, key, spec, when, where)
    return range_param(name, key, kind, spec, when, where)


def categorical_param(name: str, key: str, spec: Mapping[str, Any], when: dict, where: str) -> Param:
    """A categorical parameter: a non-empty list of choices and no range fields."""
    choices = spec.get("choices")
    if not isinstance(choices, list) or not choices:
        raise MuraError(f"{where}: a categorical parameter needs a non-empty list of choices, not {choices!r}")
    extra = [field_name for field_name in RANGE_FIELDS if field_name in spec]
    if extra:
        raise MuraError(f"{where}: a categorical parameter takes choices, not {', '.join(extra)}")
    return Param(name, key, "categorical", choices=tuple(choices), when=when)


def range_param(name: str, key: str, kind: str, spec: Mapping[str, Any], when: dict, where: str) -> Param:
    """A float or int parameter: low < high, log scale (low > 0) or a step, no choices."""
    low, high = spec.get("low"), spec.get("high")
    numbers = (int, float) if kind == "float" else (int,)
    for label, value in (("low", low), ("high", high)):
        if isinstance(value, bool) or not isinstance(value, numbers):
            wanted = "a number" if kind == "float" else "an integer"
            raise MuraError(f"{where}: {label} must be {wanted}, not {value!r}")
    if low >= high:
        raise MuraError(f"{where}: low ({low}) must be below high ({high})")
    log, step = bool(spec.get("log", False)), spec.get("step")
    if "choices" in spec:
        raise MuraError(f"{where}: a {kind} parameter takes low and high, not choices")
    if log and low <= 0:
        raise MuraError(f"{where}: a log-scale range needs low > 0, not {low}")
    if log and step is not None:
        raise MuraError(f"{where}: give log or step, not both (Optuna has no stepped log scale)")
    if step is not None and (isinstance(step, bool) or not isinstance(step, numbers) or step <= 0):
        raise MuraError(f"{where}: step must be a positive {kind}, not {step!r}")
    return Param(name, key, kind, low=low, high=high, log=log, step=step, when=when)


def parse_condition(when: Any, earlier: Mapping[str, Param], where: str) -> dict[str, tuple[Any, ...]]:
    """A `when` condition as {earlier parameter: allowed values}; each value must be one it can take."""
    if not isinstance(when, Mapping):
        raise MuraError(f"{where}: when must map an earlier parameter to its value(s), not {when!r}")
    condition: dict[str, tuple[Any, ...]] = {}
    for other, values in when.items():
        if other not in earlier:
            known = ", ".join(earlier) or "none"
            raise MuraError(f"{where}: when names {other!r}, not a parameter listed before it (those: {known})")
        allowed = tuple(values) if isinstance(values, list) else (values,)
        choices = earlier[other].choices
        missing = [value for value in allowed if choices and value not in choices]
        if missing:
            raise MuraError(f"{where}: when {other} is {missing[0]!r}, which is not among its choices {list(choices)}")
        condition[str(other)] = allowed
    return condition


def suggest(trial, space: list[Param]) -> dict[str, Any]:
    """The values a trial draws, parameter name to value; conditional ones only when their condition holds."""
    values: dict[str, Any] = {}
    for param in space:
        if param.active(values):
            values[param.name] = param.suggest(trial)
    return values


def override_value(value: Any) -> str:
    """A value as a Hydra override writes it (full float precision, so the run is reproduced exactly)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    return repr(value) if isinstance(value, float) else str(value)


def overrides(space: list[Param], values: Mapping[str, Any]) -> list[str]:
    """The train overrides `key=value` of the drawn values, in the space's order."""
    return [f"{param.key}={override_value(values[param.name])}" for param in space if param.name in values]


def folder_label(space: list[Param], values: Mapping[str, Any]) -> list[str]:
    """The drawn values as `name=value`, in the space's order, floats cut to FOLDER_DIGITS significant digits."""
    parts = []
    for param in space:
        if param.name in values:
            value = values[param.name]
            shown = f"{value:.{FOLDER_DIGITS}g}" if isinstance(value, float) else override_value(value)
            parts.append(f"{param.name}={shown}")
    return parts
