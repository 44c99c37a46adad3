"""Envoy's URI templates (RouteMatch.path_match_policy and RouteAction.path_rewrite_policy
with the uri_template extensions) compiled to a regex and an RE2-style substitution.

A match template is a path of segments: a literal, ``*`` (one segment), ``**`` (zero or
more segments; the last operator), or a variable ``{name}`` / ``{name=*}`` (one
segment), ``{name=**}`` (zero or more; last), ``{name=videos/*}`` (a literal and
operators over several segments). The last segment may end in a literal after its
variable or operator (``{segment=**}.ts``). A rewrite template is literals and
``{name}`` of the match's variables. The regex matches the whole path without its
query, as a ``safe_regex`` route does, so the worker needs nothing new; the rewrite is a
``regex_rewrite`` of that regex with one group per variable.
"""

from __future__ import annotations

import re

# What an operator or a variable matches: path characters and "*" (Envoy 1.40 matches
# those; "[", "^", "|", "{" and the like make the route not match).
_SEGMENT = r"[a-zA-Z0-9\-._~%!$&'()+,;:@=*]+"
_SEGMENTS = r"[a-zA-Z0-9\-._~%!$&'()+,;:@=*/]*"
_NAME = re.compile(r"[a-zA-Z][a-zA-Z0-9_]{0,15}")
_LITERAL = re.compile(r"[a-zA-Z0-9\-._~%!$&'()+,;:@=]+")
MAX_VARIABLES = 5


class TemplateError(ValueError):
    pass


def match_regex(template: str) -> tuple[str, tuple[str, ...]]:
    """The regex (for a full match of the path without its query) and the variables of a
    path_match_policy template, in order. Raises :class:`TemplateError`."""
    if not template.startswith("/"):
        raise TemplateError(f"path template '{template}' must start with '/'")
    names: list[str] = []
    parts: list[str] = []
    seen_any = False  # a ** (bare or in a variable) was seen: nothing may follow but a suffix
    segments = _split(template[1:], template)
    for i, seg in enumerate(segments):
        if seen_any and not _LITERAL.fullmatch(seg):
            # After "**" only literals (Envoy: "Glob after text glob").
            raise TemplateError(f"path template '{template}': '**' must be the last operator")
        last = i == len(segments) - 1
        body, suffix = seg, ""
        if seg.startswith("{"):
            end = seg.index("}")
            body, suffix = seg[: end + 1], seg[end + 1 :]
        elif seg in ("*", "**"):
            pass
        elif seg.startswith(("*", "**")) and last:
            body = "**" if seg.startswith("**") else "*"
            suffix = seg[len(body) :]
        if suffix and (not last or not _LITERAL.fullmatch(suffix)):
            raise TemplateError(f"path template '{template}': invalid segment '{seg}'")
        if body == "*":
            regex = _SEGMENT
        elif body == "**":
            regex, seen_any = _SEGMENTS, True
        elif body.startswith("{"):
            name, _, inner = body[1:-1].partition("=")
            if not _NAME.fullmatch(name):
                raise TemplateError(f"path template '{template}': invalid variable name '{name}'")
            if name in names:
                raise TemplateError(f"path template '{template}': repeated variable '{name}'")
            names.append(name)
            inner_regex, any_inside = _variable_pattern(inner or "*", template)
            seen_any = seen_any or any_inside
            regex = f"({inner_regex})"
        elif _LITERAL.fullmatch(seg):
            regex = re.escape(seg)
        else:
            raise TemplateError(f"path template '{template}': invalid segment '{seg}'")
        parts.append(regex + re.escape(suffix))
    if len(names) > MAX_VARIABLES:
        raise TemplateError(
            f"path template '{template}': at most {MAX_VARIABLES} variables are allowed"
        )
    return "/" + "/".join(parts), tuple(names)


def _split(rest: str, template: str) -> list[str]:
    """Segments, keeping a variable's inner "/" inside it."""
    out: list[str] = []
    current = ""
    depth = 0
    for ch in rest:
        if ch == "{":
            if depth:
                raise TemplateError(f"path template '{template}': nested '{{'")
            depth = 1
        elif ch == "}":
            if not depth:
                raise TemplateError(f"path template '{template}': unbalanced '}}'")
            depth = 0
        elif ch == "/" and not depth:
            out.append(current)
            current = ""
            continue
        current += ch
    if depth:
        raise TemplateError(f"path template '{template}': unbalanced '{{'")
    out.append(current)
    if any(s == "" for s in out[:-1]) or (len(out) > 1 and out[-1] == ""):
        raise TemplateError(f"path template '{template}': empty segment")
    return out


def _variable_pattern(inner: str, template: str) -> tuple[str, bool]:
    pieces = []
    any_seen = False
    for seg in inner.split("/"):
        if any_seen:
            raise TemplateError(f"path template '{template}': '**' must be the last operator")
        if seg == "*":
            pieces.append(_SEGMENT)
        elif seg == "**":
            pieces.append(_SEGMENTS)
            any_seen = True
        elif _LITERAL.fullmatch(seg):
            pieces.append(re.escape(seg))
        else:
            raise TemplateError(f"path template '{template}': invalid variable pattern '{inner}'")
    return "/".join(pieces), any_seen


_REWRITE_PART = re.compile(r"\{([^{}]*)\}|([^{}]+)")


def rewrite_substitution(rewrite: str, names: tuple[str, ...]) -> str:
    """An RE2-style substitution (``\\1``...) for a path_rewrite_policy template over the
    match template's ``names``. Raises :class:`TemplateError`."""
    if not rewrite.startswith("/"):
        raise TemplateError(f"rewrite template '{rewrite}' must start with '/'")
    out = []
    pos = 0
    for m in _REWRITE_PART.finditer(rewrite):
        if m.start() != pos:
            break
        pos = m.end()
        if m.group(1) is not None:
            name = m.group(1)
            if name not in names:
                raise TemplateError(
                    f"rewrite template '{rewrite}': variable '{name}' is not in the path template"
                )
            out.append("\\" + str(names.index(name) + 1))
        else:
            literal = m.group(2)
            if not all(_LITERAL.fullmatch(p) for p in literal.split("/") if p):
                raise TemplateError(f"rewrite template '{rewrite}': invalid literal '{literal}'")
            out.append(literal.replace("\\", "\\\\"))
    if pos != len(rewrite):
        raise TemplateError(f"rewrite template '{rewrite}': unbalanced braces")
    return "".join(out)
