"""The building blocks of the experiment and profile schemas: strict field types, names checked
against registries at validation time, partial (override) models, and error messages that name
the key, the problem and the fix.

Strict means a YAML value of the wrong type is an error, never a conversion: "3" is not 3, true
is not 1, 1.5 is not an int. An int is accepted where a float is asked for (`lr: 1`).
"""
from __future__ import annotations

import dataclasses
import functools
import math
import typing
from typing import Annotated, Any, Callable, Iterable

from annotated_types import Ge, Gt, Le, Lt
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, Strict, ValidationError, create_model
from pydantic_core import InitErrorDetails, PydanticCustomError, core_schema

from methods import METHODS


class ConfigError(ValueError):
    """An experiment or profile file with problems; the message lists every one."""

    @classmethod
    def listing(cls, source: str, problems: list[str]) -> "ConfigError":
        return cls(f"{source} has {len(problems)} problem(s):\n  - " + "\n  - ".join(problems))


class ConfigWarning(UserWarning):
    """A valid setting that probably does not do what its author meant (e.g. a milestone past the epochs)."""


# extra="forbid": an unknown key is an error, listed with the allowed keys.
STRICT_MODEL = ConfigDict(extra="forbid", frozen=True)

# -- strict scalars ---------------------------------------------------------------------------
PositiveInt = Annotated[int, Strict(), Gt(0)]
NonNegativeInt = Annotated[int, Strict(), Ge(0)]
StrictBool = Annotated[bool, Strict()]
# numpy's RandomState (the class order) takes seeds in [0, 2^32); torch's takes that range too.
Seed = Annotated[int, Strict(), Ge(0), Lt(2 ** 32)]


def finite(*bounds: Any) -> Any:
    """A float that is not nan or +-inf, within `bounds` (annotated_types Gt/Ge/Lt/Le)."""
    return Annotated[float, Strict(), Field(allow_inf_nan=False), *bounds]


PositiveFloat = finite(Gt(0))
NonNegativeFloat = finite(Ge(0))
Fraction = finite(Gt(0), Le(1))


def _no_repeats(values: tuple) -> tuple:
    repeated = sorted({str(v) for v in values if values.count(v) > 1})
    if repeated:
        raise ValueError(f"lists {', '.join(repeated)} more than once")
    return values


def unique_tuple(item: Any) -> Any:
    """A non-empty list of `item` without repeats (a repeat would plan or train a run twice)."""
    return Annotated[tuple[item, ...], Field(min_length=1), AfterValidator(_no_repeats)]


class OneOf:
    """Annotation: a string from a collection known only at validation time (a registry, the
    profile files), so a method registered after import is accepted. JSON schema: an enum."""

    def __init__(self, names: Callable[[], Iterable[str]], unknown: Callable[[str], str] | None = None) -> None:
        self.names = names
        self.unknown = unknown or (lambda value: f"{value!r} is not allowed; use one of {', '.join(names())}")

    def __get_pydantic_core_schema__(self, source: Any, handler: Any) -> Any:
        return core_schema.no_info_after_validator_function(self.check, handler(source))

    def __get_pydantic_json_schema__(self, schema: Any, handler: Any) -> dict[str, Any]:
        json_schema = handler(schema)
        json_schema["enum"] = list(self.names())
        return json_schema

    def check(self, value: str) -> str:
        if value not in self.names():
            raise ValueError(self.unknown(value))
        return value


def choice(names: Callable[[], Iterable[str]], unknown: Callable[[str], str] | None = None) -> Any:
    return Annotated[str, Strict(), OneOf(names, unknown)]


MethodName = choice(METHODS.names, METHODS.unknown_message)


# -- method options ---------------------------------------------------------------------------
# Each method declares its options once, as a dataclass of typed fields with defaults
# (Method.options_type, e.g. methods/icarl.py); these check them as strictly as the rest of the file.
OPTIONS_MODEL = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False)


@functools.cache
def options_model(options_type: type) -> type[BaseModel]:
    """A strict pydantic model of a method's options dataclass (an int is accepted for a float)."""
    hints = typing.get_type_hints(options_type)
    fields = {field.name: (hints[field.name], _default(field)) for field in dataclasses.fields(options_type)}
    return create_model(f"{options_type.__name__}Model", __config__=OPTIONS_MODEL, **fields)


def _default(field: dataclasses.Field) -> Any:
    if field.default_factory is not dataclasses.MISSING:
        return field.default_factory()
    return ... if field.default is dataclasses.MISSING else field.default


def _known_options(value: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Each option must be one its method declares (Method.default_options); numbers finite."""
    problems = []
    for method, options in value.items():
        known = METHODS.get(method).default_options
        unknown = sorted(set(options) - set(known))
        if unknown:
            problems.append(f"{method}: unknown option(s) {unknown}; known: {sorted(known) or 'none'}")
        problems += [f"{method}.{name}: {option!r} is not a finite number" for name, option in options.items()
                     if isinstance(option, float) and not math.isfinite(option)]
    if problems:
        raise ValueError("; ".join(problems))
    return value


def _typed_options(value: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Each option's value of its declared type, every error located at method_options.<method>.<option>.
    The values are kept as written (an int stays an int), so that run ids do not change."""
    errors: list[InitErrorDetails] = []
    for method, options in value.items():
        try:
            options_model(METHODS.get(method).options_type).model_validate(options)
        except ValidationError as error:
            errors += [{**item, "loc": (method, *item["loc"])} for item in _one_per_option(error.errors())]
    if errors:
        raise ValidationError.from_exception_data("method_options", errors)
    return value


def _one_per_option(items: list[dict[str, Any]]) -> list[InitErrorDetails]:
    """pydantic's errors as InitErrorDetails, those of a union's members (loc: option, member)
    merged into one: "Input should be a valid boolean or 'auto'"."""
    merged: dict[str, list[dict[str, Any]]] = {}
    for item in items:
        merged.setdefault(item["loc"][0], []).append(item)
    errors: list[InitErrorDetails] = []
    for option, group in merged.items():
        if len(group) == 1 and len(group[0]["loc"]) == 1:
            item = group[0]
            errors.append(InitErrorDetails(type=item["type"], loc=(option,), input=item["input"],
                                           ctx=item.get("ctx", {})))
            continue
        wanted = " or ".join(item["msg"].removeprefix("Input should be ") for item in group)
        errors.append(InitErrorDetails(type=PydanticCustomError("union_type", f"Input should be {wanted}"),
                                       loc=(option,), input=group[0]["input"]))
    return errors


def _options_schema(schema: dict[str, Any]) -> None:
    """JSON schema: each registered method's options, with their types and defaults."""
    schema["properties"] = {name: options_model(METHODS.get(name).options_type).model_json_schema()
                            for name in METHODS.names()}
    for method in schema["properties"].values():
        method.pop("title", None)
        for option in method.get("properties", {}).values():
            option.pop("title", None)
    schema["additionalProperties"] = False


MethodOptions = Annotated[dict[MethodName, dict[Annotated[str, Strict()], Any]], AfterValidator(_known_options),
                          AfterValidator(_typed_options), Field(json_schema_extra=_options_schema)]


# -- override models --------------------------------------------------------------------------
def drop_default(schema: dict[str, Any]) -> None:
    schema.pop("default", None)  # "not given" is not a value an editor should offer


def derived_model(cls: type, name: str, doc: str, skip: Iterable[str] = (), optional: bool = True,
                  **more: Any) -> type[BaseModel]:
    """A model with `cls`'s fields (same types, constraints and help): with `optional`, each may be
    left out (an override of some of them; read it with exclude_unset), else each keeps its default.
    `more` adds fields as create_model takes them."""
    fields: dict[str, Any] = {}
    for field, info in cls.__pydantic_fields__.items():
        if field in skip:
            continue
        annotation = Annotated[(info.annotation, *info.metadata)] if info.metadata else info.annotation
        default = Field(None, description=info.description, json_schema_extra=drop_default) if optional \
            else Field(info.default, description=info.description)
        fields[field] = (annotation, default)
    return create_model(name, __config__=STRICT_MODEL, __doc__=doc, __module__=cls.__module__, **fields, **more)


# -- error messages ---------------------------------------------------------------------------
def problems_of(error: ValidationError, model: type) -> list[str]:
    """One line per error: its location (dots, [index]), the problem, and what is allowed."""
    lines = []
    items = error.errors()
    for item in items:
        loc = tuple(part for part in item["loc"] if part != "[key]")
        kind = item["type"]
        if kind == "too_short" and _has_inner_error(item, items):
            continue  # a list emptied by its bad items: the bad items are the news
        if kind in ("extra_forbidden", "unexpected_keyword_argument"):
            allowed = ", ".join(_fields_at(model, loc[:-1]) or {})
            lines.append(_at(loc[:-1], f"unknown key {loc[-1]!r}; allowed keys: {allowed}"))
        elif kind in ("missing", "missing_argument"):
            info = (_fields_at(model, loc[:-1]) or {}).get(loc[-1])
            help_text = f": {info.description}" if info is not None and info.description else ""
            lines.append(_at(loc[:-1], f"missing key {loc[-1]!r}{help_text}"))
        elif kind == "value_error":
            lines.append(_at(loc, str(item["ctx"]["error"])))
        else:
            # The YAML user writes lists; that some become tuples inside is not theirs to know.
            message = (item["msg"].replace("a valid tuple", "a list").replace("Tuple should", "List should")
                       .replace(" after validation", ""))
            lines.append(_at(loc, f"{message}, got {_short(item['input'])}"))
    return lines


def _has_inner_error(item: dict[str, Any], items: list[dict[str, Any]]) -> bool:
    size = len(item["loc"])
    return any(len(other["loc"]) > size and other["loc"][:size] == item["loc"] for other in items)


def _at(loc: tuple, text: str) -> str:
    where = "".join(f"[{part}]" if isinstance(part, int) else f".{part}" for part in loc).lstrip(".")
    return f"{where}: {text}" if where else text


def _short(value: Any) -> str:
    text = repr(value)
    kind = f" ({type(value).__name__})" if isinstance(value, (bool, str, int, float)) else ""
    return (text if len(text) <= 60 else text[:57] + "...") + kind


def _fields_at(model: Any, loc: tuple) -> dict[str, Any] | None:
    """The declared fields (name -> FieldInfo) of the (nested) model at `loc`, or None."""
    node = model
    for part in loc:
        fields = _fields(node)
        if fields is not None and part in fields:
            node = fields[part].annotation
        elif typing.get_origin(_bare(node)) is dict:
            node = typing.get_args(_bare(node))[1]
        else:
            return None
    return _fields(node)


def _bare(annotation: Any) -> Any:
    while typing.get_origin(annotation) is Annotated:
        annotation = typing.get_args(annotation)[0]
    return annotation


def _fields(annotation: Any) -> dict[str, Any] | None:
    node = _bare(annotation)
    if isinstance(node, type) and issubclass(node, BaseModel):
        return dict(node.model_fields)
    return getattr(node, "__pydantic_fields__", None)
