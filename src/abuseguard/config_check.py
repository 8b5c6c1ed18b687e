"""Type checks of the configuration dataclasses, driven by their annotations.

Every configuration class calls :func:`check_fields` first thing in ``__post_init__``: each
field's value must fit its annotation (``bool`` is not an ``int``, an ``int`` is a
``float``, a float must be finite, a ``str`` is not an ``Iterable[str]``, a tuple may be
given as a list), and every number in it must be >= 0 unless the field is declared signed.
The class's own ``__post_init__`` then checks ranges and relations. A field added later is
checked without any further code. This runs when the configuration is built, never on a
request.

Hand-written rather than pydantic: the classes normalize their input in ``__post_init__``
(CIDR strings to networks, treatment names to rules, an int to a Concurrency) and must stay
plain frozen dataclasses that ``dataclasses.replace`` rebuilds from normalized values;
pydantic's lax mode would coerce ``"yes"`` to True (the very bug to stop) and its strict
mode refuses lists for tuples, and its errors would have to be mapped back to ConfigError
field by field. This module is smaller than that glue, and adds no dependency.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import types
import typing
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping
from typing import Any, Literal, Union, get_args, get_origin

from abuseguard.errors import ConfigError

# (suffix naming the part of the field that is wrong, what is wrong)
Problem = tuple[str, str]


_HINTS: dict[type, dict[str, Any]] = {}


def _hints(cls: type) -> dict[str, Any]:
    hints = _HINTS.get(cls)
    if hints is None:
        hints = _HINTS[cls] = typing.get_type_hints(cls)
    return hints


def check_fields(instance: Any, *, signed: Collection[str] = ()) -> None:
    """Raise ConfigError naming ``Class.field`` for the first field of the dataclass
    ``instance`` whose value does not fit its annotation, or holds a negative number (unless
    the field is in ``signed``). A one-shot iterator is read once into a tuple, and a list
    given for a tuple field is kept as a tuple."""
    cls = type(instance)
    hints = _hints(cls)
    for f in dataclasses.fields(instance):
        if not f.init:
            continue  # derived in __post_init__, not given
        value = getattr(instance, f.name)
        annotation = hints[f.name]
        if isinstance(value, Iterator) or (
            isinstance(value, list) and get_origin(annotation) is tuple
        ):
            value = tuple(value)
            object.__setattr__(instance, f.name, value)
        qualified = f"{cls.__name__}.{f.name}"
        problem = _problem(value, annotation)
        if problem is None and f.name not in signed:
            problem = _negative(value)
        if problem is not None:
            raise ConfigError(qualified + problem[0], problem[1])


def check_callables(field: str, values: object) -> list[Any]:
    """``values`` as a list of callables (observers), or a ConfigError naming ``field``."""
    if isinstance(values, str | bytes | Mapping) or not isinstance(values, Iterable):
        raise ConfigError(field, f"expected a list of callables, got {_show(values)}")
    out = list(values)
    for value in out:
        if not callable(value):
            raise ConfigError(field, f"expected callables, got {_show(value)}")
    return out


def _show(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


@functools.lru_cache(maxsize=1024)
def _shape(annotation: Any) -> tuple[Any, tuple[Any, ...]]:
    return get_origin(annotation), get_args(annotation)


def _is_variadic(args: tuple[Any, ...]) -> bool:
    return len(args) == 2 and args[1] is Ellipsis


def describe(annotation: Any) -> str:
    """An annotation in words, for error messages."""
    origin = get_origin(annotation)
    args = get_args(annotation)
    if annotation is None or annotation is type(None):
        return "None"
    if origin in (Union, types.UnionType):
        return " or ".join(describe(arg) for arg in args)
    if origin is Literal:
        return "one of " + ", ".join(repr(arg) for arg in args)
    if annotation is bool:
        return "a bool"
    if annotation is int:
        return "an int"
    if annotation is float:
        return "a finite number"
    if annotation is str:
        return "a str"
    if origin is tuple:
        if _is_variadic(args):
            return f"a tuple of ({describe(args[0])})"
        return "a tuple (" + ", ".join(describe(arg) for arg in args) + ")"
    if origin is Iterable:
        return f"a list of ({describe(args[0])})"
    if origin is Mapping:
        return f"a mapping of ({describe(args[0])}) to ({describe(args[1])})"
    if origin is Callable:
        return "a callable"
    if isinstance(origin, type):
        return origin.__name__
    if isinstance(annotation, type):
        return annotation.__name__
    return str(annotation)


def expected(annotation: Any, value: object) -> str:
    """The message for a ``value`` that does not fit ``annotation`` ("expected ..., got ...")."""
    return _expected(annotation, value)[1]


def _expected(annotation: Any, value: object) -> Problem:
    unset = " (an unset environment variable?)" if value is None and annotation is str else ""
    return "", f"expected {describe(annotation)}, got {_show(value)}{unset}"


def _problem(value: object, annotation: Any) -> Problem | None:
    """None when ``value`` fits ``annotation``, else what does not."""
    origin, args = _shape(annotation)
    if annotation is Any:
        return None
    if origin in (Union, types.UnionType):
        problems = []
        for arg in args:
            problem = _problem(value, arg)
            if problem is None:
                return None
            problems.append(problem)
        # A container of the right kind with a wrong element: say which element.
        for problem in problems:
            if problem[0]:
                return problem
        return _expected(annotation, value)
    if origin is Literal:
        if any(type(value) is type(arg) and value == arg for arg in args):
            return None
        return _expected(annotation, value)
    if annotation is None or annotation is type(None):
        return None if value is None else _expected(annotation, value)
    if annotation is bool:
        return None if isinstance(value, bool) else _expected(annotation, value)
    if annotation is int:
        fits = isinstance(value, int) and not isinstance(value, bool)
        return None if fits else _expected(annotation, value)
    if annotation is float:
        if isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value):
            return None
        return _expected(annotation, value)
    if annotation is str:
        return None if isinstance(value, str) else _expected(annotation, value)
    if origin is tuple:
        return _sequence_problem(value, annotation, args)
    if origin is Iterable:
        if isinstance(value, str | bytes):
            return "", f"expected {describe(annotation)}, not a single str: {_show(value)}"
        if isinstance(value, Mapping) or not isinstance(value, Iterable):
            return _expected(annotation, value)
        for element in value:
            problem = _problem(element, args[0])
            if problem is not None:
                return "", f"expected {describe(annotation)}, got an item {_show(element)}"
        return None
    if origin is Mapping:
        if not isinstance(value, Mapping):
            return _expected(annotation, value)
        for key, item in value.items():
            if _problem(key, args[0]) is not None:
                return "", f"keys must be {describe(args[0])}, got {_show(key)}"
            problem = _problem(item, args[1])
            if problem is not None:  # the field is named, the message names the key
                return "", f"at [{key!r}]{problem[0]}: {problem[1]}"
        return None
    if origin is Callable:
        return None if callable(value) else _expected(annotation, value)
    cls = origin if isinstance(origin, type) else annotation
    if isinstance(cls, type):
        return None if isinstance(value, cls) else _expected(annotation, value)
    return None  # an annotation form this module does not know: the class checks it


def _sequence_problem(value: object, annotation: Any, args: tuple[Any, ...]) -> Problem | None:
    if not isinstance(value, tuple | list):
        return _expected(annotation, value)
    if _is_variadic(args):
        element_types = [args[0]] * len(value)
    elif len(value) != len(args):
        return "", f"expected {describe(annotation)} of {len(args)} items, got {_show(value)}"
    else:
        element_types = list(args)
    for i, (element, element_type) in enumerate(zip(value, element_types, strict=True)):
        problem = _problem(element, element_type)
        if problem is not None:
            return f"[{i}]{problem[0]}", problem[1]
    return None


def _negative(value: object, suffix: str = "") -> Problem | None:
    """Where ``value`` (or a number inside a tuple, list, set or mapping) is below 0."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        return (suffix, f"must be >= 0, got {value!r}") if value < 0 else None
    if isinstance(value, Mapping):
        for key, item in value.items():
            problem = _negative(item, f"{suffix}[{key!r}]")
            if problem is not None:
                return problem
    elif isinstance(value, tuple):
        for i, item in enumerate(value):
            problem = _negative(item, f"{suffix}[{i}]")
            if problem is not None:
                return problem
    elif isinstance(value, list | set | frozenset):  # an Iterable field: the field is named
        for item in value:
            problem = _negative(item, suffix)
            if problem is not None:
                return problem
    return None


__all__ = ["check_callables", "check_fields", "describe"]
