"""URI templates (path_match_policy / path_rewrite_policy) → regex and substitution; the
compat test (tests/compat/test_uri_template_compat.py) holds the same against Envoy."""

from __future__ import annotations

import re

import pytest

from proxyd.config.uri_template import TemplateError, match_regex, rewrite_substitution
from proxyd.protocol.redirect import re2_substitution


def rewrite(template: str, rewrite_to: str, path: str) -> str | None:
    regex, names = match_regex(template)
    if re.fullmatch(regex, path) is None:
        return None
    rx = re.compile(f"^{regex}$")
    return rx.sub(re2_substitution(rewrite_substitution(rewrite_to, names), rx.groups), path)


@pytest.mark.parametrize(
    ("template", "to", "path", "expect"),
    [
        ("/books/{author}/{title}", "/l/{title}/{author}", "/books/a/b", "/l/b/a"),
        ("/books/{author}/{title}", "/l/{title}", "/books/a", None),
        ("/v/*/{id}/{seg=**}.ts", "/{id}/{seg}.ts", "/v/h/1/x/y.ts", "/1/x/y.ts"),
        ("/f/{p=**}", "/g/{p}", "/f/", "/g/"),
        ("/x/{n=users/*}/p", "/{n}", "/x/users/bob/p", "/users/bob"),
        ("/d/**/end", "/d", "/d/a/b/end", "/d"),
        ("/a/{x}", "/{x}", "/a/b*c", "/b*c"),
        ("/a/{x}", "/{x}", "/a/b[c", None),
    ],
)
def test_templates(template: str, to: str, path: str, expect: str | None) -> None:
    assert rewrite(template, to, path) == expect


@pytest.mark.parametrize(
    ("template", "reason"),
    [
        ("a/{x}", "must start with '/'"),
        ("/a/**/*", "'**' must be the last operator"),
        ("/a/{x}/{x}", "repeated variable 'x'"),
        ("/a/{1x}", "invalid variable name"),
        ("/a/{x", "unbalanced"),
        ("/a//b", "empty segment"),
        ("/{a}/{b}/{c}/{d}/{e}/{f}", "at most 5 variables"),
        ("/a/b*c", "invalid segment"),
    ],
)
def test_bad_templates_are_refused(template: str, reason: str) -> None:
    with pytest.raises(TemplateError, match=re.escape(reason)):
        match_regex(template)


def test_rewrite_names_only_the_match_variables() -> None:
    with pytest.raises(TemplateError, match="'y' is not in the path template"):
        rewrite_substitution("/{y}", ("x",))
    with pytest.raises(TemplateError, match="must start with '/'"):
        rewrite_substitution("{x}", ("x",))
