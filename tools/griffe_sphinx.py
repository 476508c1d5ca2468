"""A griffe extension for the docs site (mkdocs.yml): reads the docstrings in the Sphinx conventions the code
uses.

- Sphinx roles (``:class:`~limio_provider.x.Y```, ``:meth:`start```, ``:func:`Title <path>```) become
  cross-references to the API reference, resolved from the object's scope as Python would; ``mkdocs build
  --strict`` then fails on one that points at a public object the reference does not show. A role naming
  something outside the package or private (``json.dumps``, ``_OrderRecord``) becomes plain code.
- ``#:`` comments above a module or class attribute (Sphinx's autodoc convention, which griffe does not read)
  become that attribute's docstring.
- A class whose ``__init__`` passes ``**kwargs`` on to its base, and documents some of them with ``:param:``
  (the batch operator), shows those as keyword-only parameters of its signature, taken from the base's
  ``__init__``. A ``:param:`` that no ``__init__`` in the class's bases takes still fails the build.
"""

from __future__ import annotations

import re
from typing import Any

import griffe

ROLE = re.compile(r":(?:class|func|meth|attr|exc|data|mod|obj):`(?P<text>[^`]+)`")
PACKAGE = "limio_provider"
_NAMED = (griffe.ParameterKind.keyword_only, griffe.ParameterKind.positional_or_keyword)


def _target(obj: griffe.Object, name: str) -> str | None:
    """The full path ``name`` means in ``obj``'s scope, or ``None`` if it is outside the package or private."""
    if name.startswith(PACKAGE + "."):
        path = name
    else:
        first, _, rest = name.partition(".")
        try:
            path = obj.resolve(first)
        except griffe.NameResolutionError:
            return None
        path = f"{path}.{rest}" if rest else path
    if not path.startswith(PACKAGE + ".") or any(part.startswith("_") for part in path.split(".")):
        return None
    return path


def _role(obj: griffe.Object, match: re.Match[str]) -> str:
    text = match["text"].strip()
    title_and_path = re.fullmatch(r"(?P<title>.+?)\s*<(?P<path>[^>]+)>", text)
    if title_and_path:
        title, name = title_and_path["title"], title_and_path["path"]
    elif text.startswith("~"):
        name = text[1:]
        title = name.rsplit(".", 1)[-1]
    else:
        title = name = text
    path = _target(obj, name)
    return f"[`{title}`][{path}]" if path else f"`{title}`"


def _forward_documented_kwargs(cls: griffe.Class) -> None:
    """Add to ``cls.__init__``'s signature the parameters its docstring documents that it only takes through
    ``**kwargs``, as its bases' ``__init__`` declare them."""
    init = cls.members.get("__init__")
    if init is None or init.is_alias or not init.is_function or cls.docstring is None:
        return
    params = list(init.parameters)
    if not params or params[-1].kind is not griffe.ParameterKind.var_keyword:
        return
    known = {param.name for param in params}
    documented = re.findall(r"^:param (\w+):", cls.docstring.value, flags=re.M)
    forwarded: list[griffe.Parameter] = []
    bases = list(cls.resolved_bases)
    while bases:
        base = bases.pop(0)
        base_init = base.members.get("__init__")
        if base_init is not None and not base_init.is_alias and base_init.is_function:
            for param in base_init.parameters:
                if param.name in documented and param.name not in known and param.kind in _NAMED:
                    forwarded.append(
                        griffe.Parameter(
                            param.name,
                            annotation=param.annotation,
                            kind=griffe.ParameterKind.keyword_only,
                            default=param.default,
                        )
                    )
                    known.add(param.name)
        bases.extend(base.resolved_bases)
    if forwarded:
        init.parameters = griffe.Parameters(*params[:-1], *forwarded, params[-1])


def _comment_docstring(obj: griffe.Object) -> str | None:
    """The ``#:`` comment lines right above an attribute, joined."""
    lines = obj.module.lines
    index = (obj.lineno or 0) - 2  # the line above, 0-based
    comment: list[str] = []
    while index >= 0 and lines[index].lstrip().startswith("#:"):
        comment.insert(0, lines[index].lstrip()[2:].strip())
        index -= 1
    return " ".join(comment) or None


class SphinxConventions(griffe.Extension):
    """Applies the three conversions above once the whole package is loaded (a role may name a member defined
    further down)."""

    def on_package(self, *, pkg: griffe.Module, **kwargs: Any) -> None:
        if pkg.path == PACKAGE:
            self._visit(pkg)

    def _visit(self, obj: griffe.Object) -> None:
        if obj.is_attribute and obj.docstring is None:
            text = _comment_docstring(obj)
            if text:
                obj.docstring = griffe.Docstring(text, parent=obj)
        if obj.is_class:
            _forward_documented_kwargs(obj)
        if obj.docstring is not None:
            obj.docstring.value = ROLE.sub(lambda match: _role(obj, match), obj.docstring.value)
        for member in obj.members.values():
            if not member.is_alias:
                self._visit(member)
