"""Loading and running the user's transform (one deterministic function for both paths, rule 5).

A transform takes one source item as a plain dict (numbers are Decimal) and returns an iterable
of 0, 1 or N destination items (plain dicts). Users may validate with their own pydantic models.
"""

from __future__ import annotations

import hashlib
import importlib
import inspect
import sys
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

from livemigrate.errors import TransformLoadError, TransformOutputError
from livemigrate.items import MAX_ITEM_BYTES, PlainItem, TypedItem, item_size, to_typed
from livemigrate.values import is_binary, raw_bytes
from livemigrate.versioning import is_reserved, user_attributes

TransformFn = Callable[[PlainItem], Iterable[Mapping[str, Any]]]


def load_transform(spec: str) -> TransformFn:
    """Import ``package.module:function``; a clear error if it is not there or not callable."""
    module_name, _, attr = spec.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise TransformLoadError(
            f"transform module {module_name!r} cannot be imported: {exc}",
            "check LIVEMIGRATE_TRANSFORM and that the module is on PYTHONPATH",
        ) from exc
    fn = getattr(module, attr, None)
    if not callable(fn):
        raise TransformLoadError(
            f"{spec!r}: module {module_name!r} has no callable {attr!r}",
            "LIVEMIGRATE_TRANSFORM must name a function as 'package.module:function'",
        )
    return fn  # type: ignore[no-any-return]


def code_hash(fn: Callable[..., Any]) -> str:
    """A short hash of the source of the module that defines ``fn``, read when it is loaded.

    Recorded by every process that opens a migration (``deadletters.record_code_version``), so
    ``livemigrate dead-letters`` can tell whether the running consumers use the fixed code.
    """
    module = sys.modules.get(getattr(fn, "__module__", "") or "")
    try:
        source = inspect.getsource(module) if module is not None else inspect.getsource(fn)
    except (OSError, TypeError):
        source = repr(fn)  # built without a source file: its name is all we can compare
    return hashlib.sha256(source.encode()).hexdigest()[:16]


class Transformer:
    """Runs the transform on one source item and checks every output against the destination.

    Parameters
    ----------
    fn:
        The user's transform.
    key_names:
        The destination table's key attribute names.
    key_types:
        Their DynamoDB scalar types ("S", "N" or "B"), to check outputs before any write.
    """

    def __init__(self, fn: TransformFn, key_names: Sequence[str], key_types: Mapping[str, str]):
        self.fn = fn
        self.key_names = tuple(key_names)
        self.key_types = dict(key_types)
        self.code_hash = code_hash(fn)

    def run(self, item: PlainItem) -> list[TypedItem]:
        """Typed destination items for one source item, or TransformOutputError with the reason.

        livemigrate's own ``_lm_*`` attributes are taken off first: the user's function sees
        the application's item only (after a cutover, both tables carry stamps).
        """
        try:
            produced = self.fn(user_attributes(item))
            if isinstance(produced, Mapping) or produced is None:
                raise TransformOutputError(
                    "transform returned a single dict or None; return a list of 0, 1 or N items"
                )
            outputs = [dict(out) for out in produced]
        except TransformOutputError:
            raise
        except Exception as exc:  # user code: any failure is this item's dead letter
            raise TransformOutputError(f"transform raised {type(exc).__name__}: {exc}") from exc
        return [self._check(out) for out in outputs]

    def _check(self, out: dict[str, Any]) -> TypedItem:
        for name in self.key_names:
            if name not in out:
                raise TransformOutputError(f"output lacks destination key attribute {name!r}")
            want = self.key_types.get(name, "S")
            value = out[name]
            if want == "S" and (not isinstance(value, str) or not value):
                raise TransformOutputError(f"key {name!r} must be a non-empty string")
            if want == "N" and isinstance(value, bool | str | float):
                raise TransformOutputError(f"key {name!r} must be a number (int or Decimal)")
            # boto3 deserialises binary as ``Binary``, which is not a bytes subclass (issue 11).
            if want == "B" and not (is_binary(value) and raw_bytes(value)):
                raise TransformOutputError(f"key {name!r} must be non-empty bytes (or Binary)")
        reserved = [name for name in out if is_reserved(name)]
        if reserved:
            raise TransformOutputError(f"output uses reserved attribute names {reserved}")
        try:
            typed = to_typed(out)
        except (TypeError, ValueError) as exc:
            raise TransformOutputError(f"output cannot be stored in DynamoDB: {exc}") from exc
        size = item_size(typed)
        # Leave room for the metadata attributes livemigrate adds.
        if size > MAX_ITEM_BYTES - 128:
            raise TransformOutputError(
                f"output item is {size} bytes; DynamoDB's limit is {MAX_ITEM_BYTES} bytes"
            )
        return typed
