"""InternalsChanged, and the checks every compat module makes with it."""

from __future__ import annotations

import types
from importlib import import_module
from typing import Any


class InternalsChanged(RuntimeError):
    """A private API of a library that pipelines/compat reads is gone or changed: the
    installed version is not one that module was written against. Not the user's error."""


def installed(library: str) -> str:
    """The installed version of the distribution `library`, or 'not installed'."""
    from importlib import metadata  # only when something changed: ~20 ms at import otherwise

    try:
        return metadata.version(library)
    except metadata.PackageNotFoundError:
        return "not installed"


class Library:
    """One library's private APIs as a compat module reads them, written against `tested`."""

    def __init__(self, name: str, tested: str, module: str) -> None:
        self.name, self.tested, self.module = name, tested, module

    def changed(self, api: str, what: str) -> InternalsChanged:
        """The error for `api` (its dotted name) that `what` (e.g. 'is gone')."""
        return InternalsChanged(
            f"{api} {what} in {self.name} {installed(self.name)}: {self.module} reads it and was written "
            f"against {self.name} {self.tested} (pyproject.toml pins it); install that version or port {self.module}")

    def module_of(self, name: str) -> Any:
        """Import the module `name`; InternalsChanged when it cannot be imported."""
        try:
            return import_module(name)
        except ImportError as e:
            raise self.changed(name, f"cannot be imported ({e})") from e

    def attr(self, obj: Any, name: str, api: str) -> Any:
        """`obj.name`; InternalsChanged naming `api` when it has none."""
        try:
            return getattr(obj, name)
        except AttributeError:
            raise self.changed(api, "is gone") from None

    def function(self, module: str, name: str) -> Any:
        """The callable `module.name`; InternalsChanged when it is gone or not callable."""
        found = self.attr(self.module_of(module), name, f"{module}.{name}")
        if not callable(found):
            raise self.changed(f"{module}.{name}", f"is no longer callable (a {type(found).__name__})")
        return found

    def uses(self, owner: Any, method: str, api: str, *names: str) -> None:
        """InternalsChanged unless the code of `owner.method` (e.g. a class's __init__, a
        module's function) names each of `names`, attributes of `api`: how an attribute a
        constructor sets, or a function reads, is verified without running it."""
        code = getattr(self.attr(owner, method, f"{api}.{method}"), "__code__", None)
        mentioned = _names(code) if isinstance(code, types.CodeType) else set()
        for name in names:
            if name not in mentioned:
                raise self.changed(f"{api}.{name}", f"is no longer used by {method}()")


def _names(code: types.CodeType) -> set[str]:
    """Attribute names and string constants of `code` and the functions nested in it."""
    found = set(code.co_names)
    for const in code.co_consts:
        if isinstance(const, str):
            found.add(const)
        elif isinstance(const, types.CodeType):
            found |= _names(const)
    return found
