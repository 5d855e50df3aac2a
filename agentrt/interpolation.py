"""``${VAR}`` and ``${VAR:-default}`` interpolation of configuration strings, before validation."""

from __future__ import annotations

import re
from collections.abc import Mapping

from agentrt.errors import ConfigIssue

__all__ = ["interpolate"]

# `$${` escapes a literal `${`.
_REFERENCE = re.compile(r"\$\$\{|\$\{([A-Za-z_][A-Za-z0-9_]*)(?:(:?-)([^}]*))?\}")


def interpolate(
    tree: object, environ: Mapping[str, str], issues: list[ConfigIssue], path: str = ""
) -> object:
    """Return ``tree`` with every string's references replaced from ``environ``.

    ``${VAR:-default}`` uses the default when VAR is unset or empty, ``${VAR-default}`` only when
    it is unset. A reference to an unset variable without a default adds an issue at its key
    path and leaves the string unchanged.
    """
    if isinstance(tree, str):
        return _interpolate_string(tree, environ, issues, path)
    if isinstance(tree, Mapping):
        return {
            key: interpolate(value, environ, issues, _join(path, str(key)))
            for key, value in tree.items()
        }
    if isinstance(tree, list):
        return [
            interpolate(item, environ, issues, f"{path}[{index}]")
            for index, item in enumerate(tree)
        ]
    return tree


def _interpolate_string(
    text: str, environ: Mapping[str, str], issues: list[ConfigIssue], path: str
) -> str:
    def replace(match: re.Match[str]) -> str:
        if match.group(0) == "$${":
            return "${"
        name, operator, default = match.group(1), match.group(2), match.group(3)
        value = environ.get(name)
        if operator == ":-" and not value:
            return default or ""
        if operator == "-" and value is None:
            return default or ""
        if value is None:
            issues.append(
                ConfigIssue(
                    path,
                    f"environment variable {name} is not set and has no default "
                    f"(set it, or write ${{{name}:-default}})",
                    text,
                )
            )
            return match.group(0)
        return value

    return _REFERENCE.sub(replace, text)


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key
