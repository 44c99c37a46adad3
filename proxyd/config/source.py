"""Reading a bootstrap file into plain data (dicts, lists, scalars).

Like Envoy, a ``.json`` file is read as JSON and anything else as YAML. YAML is read
with ``yaml.safe_load`` semantics, changed where Envoy's YAML reader (yaml-cpp) differs:

* a key tagged ``!ignore`` is dropped with its value (a place to keep anchors that
  aliases elsewhere use), and a tag Envoy does not know on a value is ignored (the
  value reads as if untagged);
* a YAML merge key ``<<`` is an ordinary key, so Envoy's parser refuses it as an
  unknown field, and so does proxyd's;
* a key given twice in one mapping takes the last value, as in Envoy; proxyd also
  logs a warning naming the key and both lines;
* ``y``, ``Y``, ``n`` and ``N`` are booleans, as yaml-cpp reads them (so a string field
  refuses them, as Envoy's loader does); a mapping key is always text (``y:``,
  ``true:``, ``1:``), as it is in the JSON Envoy makes of the YAML;
* a plain scalar is a number only when it is an integer as C++ streams read one: decimal,
  octal with a leading ``0`` (``017``) or hexadecimal (``0x1F``), with a sign or not.
  Envoy turns only a value that fits in 32 bits into a JSON number; a larger one that fits
  in 64 bits becomes its decimal text, and anything else (``1.5``, ``.5``, ``.inf``,
  ``1e3``, ``1_000``, ``0b11``, ``190:20:30``) stays text, which protobuf's JSON parser
  then reads as a number where the field is one. So ``name: 1.5`` is the string "1.5",
  as in Envoy.
"""

from __future__ import annotations

import json
import re
import typing
from typing import Any

import yaml

from proxyd.errors import ConfigError
from proxyd.log import get_logger

log = get_logger("proxyd.config")

# libyaml's parser when it is built in (about ten times faster), else the pure-Python one.
_SafeLoader: type = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


IGNORE_TAG = "!ignore"
_MERGE_TAG = "tag:yaml.org,2002:merge"
_STR_TAG = "tag:yaml.org,2002:str"
_BOOL_TAG = "tag:yaml.org,2002:bool"
_INT_TAG = "tag:yaml.org,2002:int"
_FLOAT_TAG = "tag:yaml.org,2002:float"
# A key is text in the JSON Envoy makes of the YAML, whatever it looks like.
_TEXT_KEY_TAGS = frozenset({_BOOL_TAG, _INT_TAG, _FLOAT_TAG})
# The integers yaml-cpp's int64 conversion takes (a C++ stream with the base unset).
_INT_RE = re.compile(r"^[-+]?(?:0[xX][0-9a-fA-F]+|0[0-7]*|[1-9][0-9]*)$")
_INT32 = range(-(2**31), 2**31)
_INT64 = range(-(2**63), 2**63)


class _EnvoyLoader(_SafeLoader):
    """A safe loader that reads YAML as Envoy does (see the module docstring)."""

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        # (key, line, line of the first occurrence), 1-based lines.
        self.duplicates: list[tuple[Any, int, int]] = []


def _construct_mapping(loader: Any, node: yaml.MappingNode, deep: bool = False) -> Any:
    node.value = [(k, v) for k, v in node.value if k.tag != IGNORE_TAG]
    for key_node, _value_node in node.value:
        if key_node.tag == _MERGE_TAG:  # '<<' is a plain key to Envoy (no merging)
            key_node.tag = _STR_TAG
        elif key_node.tag in _TEXT_KEY_TAGS:  # a key is text to Envoy (JSON keys): "y", "1"
            key_node.tag = _STR_TAG
    seen: dict[Any, yaml.Node] = {}
    for key_node, _value_node in node.value:
        key = loader.construct_object(key_node, deep=deep)
        if not isinstance(key, typing.Hashable):
            continue  # construct_mapping reports an unhashable key itself
        if key in seen:  # the last one wins, as in Envoy
            first = seen[key].start_mark.line + 1
            loader.duplicates.append((key, key_node.start_mark.line + 1, first))
        seen[key] = key_node
    return loader.construct_mapping(node, deep=deep)


def _construct_local_tag(loader: Any, _suffix: str, node: yaml.Node) -> Any:
    """A value with a local tag (``!custom``, or ``!ignore`` on a value) reads as the
    same node untagged, as yaml-cpp's conversion in Envoy does."""
    if isinstance(node, yaml.MappingNode):
        return _construct_mapping(loader, node, deep=True)
    if isinstance(node, yaml.SequenceNode):
        return loader.construct_sequence(node, deep=True)
    tag = loader.resolve(yaml.ScalarNode, node.value, (True, False))
    return loader.yaml_constructors[tag](loader, node)


def _construct_int(loader: Any, node: yaml.ScalarNode) -> int | str:
    """An integer as Envoy's YAML-to-JSON step gives it: a number within 32 bits, else
    its decimal text (protobuf's JSON parser takes that for 64-bit fields)."""
    text = loader.construct_scalar(node)
    sign, digits = (-1, text[1:]) if text[0] == "-" else (1, text.lstrip("+"))
    if digits[:2] in ("0x", "0X"):
        value = sign * int(digits[2:], 16)
    elif len(digits) > 1 and digits[0] == "0":
        value = sign * int(digits, 8)
    else:
        value = sign * int(digits)
    if value in _INT32:
        return value
    return str(value) if value in _INT64 else text


_EnvoyLoader.add_constructor(
    yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG,
    _construct_mapping,
)
_EnvoyLoader.add_constructor(_INT_TAG, _construct_int)
_EnvoyLoader.add_multi_constructor("!", _construct_local_tag)
# yaml-cpp's booleans include the one-letter forms (YAML 1.1 lists them; PyYAML does not).
_EnvoyLoader.bool_values = {**_EnvoyLoader.bool_values, "y": True, "n": False}
_EnvoyLoader.add_implicit_resolver(
    "tag:yaml.org,2002:bool", re.compile(r"^(?:y|Y|n|N)$"), list("yYnN")
)
# Floats are text to yaml-cpp, and its integers are fewer than YAML 1.1's (no 0b, no _).
_EnvoyLoader.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers if tag not in (_INT_TAG, _FLOAT_TAG)]
    for first, resolvers in _EnvoyLoader.yaml_implicit_resolvers.items()
}
_EnvoyLoader.add_implicit_resolver(_INT_TAG, _INT_RE, list("-+0123456789"))


def read_config_file(path: str) -> dict[str, Any]:
    """The file's content as a dict. Raises ConfigError naming the file (and line)."""
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(path, "", f"cannot read the file: {exc}") from exc
    return parse_config_text(text, path)


def parse_config_text(text: str, path: str) -> dict[str, Any]:
    """Parse ``text`` as JSON (for a ``.json`` path) or YAML; ``path`` is for messages."""
    if path.endswith(".json"):
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ConfigError(
                path, "", f"JSON syntax error at line {exc.lineno}, column {exc.colno}: {exc.msg}"
            ) from exc
    else:
        loader = _EnvoyLoader(text)
        try:
            data = loader.get_single_data()
        except yaml.YAMLError as exc:
            raise ConfigError(path, "", _yaml_reason(exc)) from exc
        finally:
            loader.dispose()
        for key, line, first in loader.duplicates:
            log.warning(
                "duplicate key, the last value is used",
                file=path,
                key=key,
                line=line,
                first_line=first,
            )
    if data is None:
        raise ConfigError(path, "", "the file is empty")
    if not isinstance(data, dict):
        raise ConfigError(
            path, "", f"the top level must be a mapping (a Bootstrap), not {_kind(data)}"
        )
    return data


def _yaml_reason(exc: yaml.YAMLError) -> str:
    mark = getattr(exc, "problem_mark", None)
    problem = getattr(exc, "problem", None) or str(exc)
    context = getattr(exc, "context", None)
    detail = f"{problem} ({context})" if context else problem
    if mark is not None:
        return f"YAML syntax error at line {mark.line + 1}, column {mark.column + 1}: {detail}"
    return f"YAML syntax error: {detail}"


def _kind(value: Any) -> str:
    if isinstance(value, list):
        return "a list"
    if isinstance(value, str):
        return "a string"
    return f"a {type(value).__name__}"
