"""Envoy's stats view: tag extraction (``stats_config.stats_tags`` and the default
tag extractors) and the stats matcher (``stats_config.stats_matcher``); sans-IO.

The master applies both when it renders ``/stats`` and ``/stats/prometheus`` and when it
flushes to the stats sinks; workers keep counting every stat by its full name, so the
per-request cost does not change with the configuration.

Tag extraction works as Envoy's ``TagProducerImpl``:

* the default extractors (Envoy's ``source/common/config/well_known_names.cc``) come
  first, unless ``use_all_default_tags`` is false, then the ``stats_tags`` in order;
* an extractor whose regex starts with ``^<word>\\.`` (or whose token pattern starts
  with a literal word) only runs on names whose first token is that word; the others
  run on every name, first. This decides the order of the tags, and so of the labels
  in ``/stats/prometheus`` and of the tags a DogStatsD line carries;
* a regex extractor's group 1 is removed from the name and group 2 (else group 1) is
  the tag's value; a token extractor (``cluster.$.**``) takes the ``$`` token and
  removes it with one of its dots; a fixed value tags every stat and removes nothing;
* of several extractors with one tag name, the first that matches a stat wins.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

# -- the extractors -------------------------------------------------------------------

_TAG_VALUE = r"[^\.]+"
_EXPAND = {
    "<ADDRESS>": r"(?:(?:\d{1,3}\.\d{1,3}\.\d{1,3}\.\d{1,3}|\[[a-fA-F_\d]+\])_\d+)",
    "<CIPHER>": r"[\w-]+",
    "<TLS_VERSION>": r"TLSv\d\.\d",
    "<TAG_VALUE>": _TAG_VALUE,
    "<ROUTE_CONFIG_NAME>": r"[\w\-\./]+",
    "<SCOPED_ROUTE_CONFIG_NAME>": r"[\w\-\.]+",
    "<LISTENER_OR_CLUSTER_WITH_NAME>": r"(?:listener|cluster)\..*?",
    "<PROXY_PROTOCOL_VERSION>": r"\d",
}


def _expand(regex: str) -> str:
    for key, value in _EXPAND.items():
        regex = regex.replace(key, value)
    return regex


def regex_prefix(regex: str) -> str:
    """Envoy's ``extractRegexPrefix``: the literal first token a regex requires, or "".

    ``^cluster\\.(...)`` → "cluster"; ``_rq(_(\\d{3}))$`` → "" (runs on every name).
    """
    if not regex.startswith("^"):
        return ""
    for i in range(1, len(regex)):
        c = regex[i]
        if c.isascii() and (c.isalnum() or c == "_"):
            continue
        if i > 1:
            rest = regex[i:]
            last = i == len(regex) - 1
            if (not last and (rest.startswith("\\.") or rest.startswith("(?=\\."))) or (
                last and c == "$"
            ):
                return regex[1:i]
        return ""
    return ""


class TagExtractor:
    """One extractor: ``extract(name)`` → (value, (start, end) to remove) or None."""

    __slots__ = ("name", "prefix")

    def __init__(self, name: str, prefix: str) -> None:
        self.name = name
        self.prefix = prefix

    def extract(self, stat: str, tokens: list[str]) -> tuple[str, tuple[int, int]] | None:
        raise NotImplementedError


class RegexTagExtractor(TagExtractor):
    """A default extractor's regex (Envoy's TagExtractorRe2Impl): a match whose group 1
    is empty is no match, and the value is group 2, else group 1."""

    __slots__ = ("regex", "substr", "negative_match")

    def __init__(self, name: str, regex: str, substr: str = "", negative_match: str = "") -> None:
        super().__init__(name, regex_prefix(regex))
        self.regex = re.compile(regex)
        self.substr = substr
        self.negative_match = negative_match

    def extract(self, stat: str, tokens: list[str]) -> tuple[str, tuple[int, int]] | None:
        if self.substr and self.substr not in stat:
            return None
        m = self.regex.search(stat)
        if m is None or m.re.groups < 1 or m.group(1) is None:
            return None
        if m.start(1) == m.end(1):  # an empty removal is no match (Envoy's remove_subexpr)
            return None
        value = m.group(2) if m.re.groups >= 2 and m.group(2) else m.group(1)
        if self.negative_match and value == self.negative_match:
            return None
        return value, m.span(1)


class CustomRegexTagExtractor(RegexTagExtractor):
    """A ``stats_tags`` regex (Envoy's TagExtractorStdRegexImpl): any match of a regex
    with a group counts; the value is group 2 when the regex has two groups (empty when
    it did not take part), else group 1."""

    __slots__ = ()

    def extract(self, stat: str, tokens: list[str]) -> tuple[str, tuple[int, int]] | None:
        m = self.regex.search(stat)
        if m is None or m.re.groups < 1:
            return None
        if m.re.groups >= 2:
            value = m.group(2) or ""
        else:
            value = m.group(1) or ""
        start, end = m.span(1)
        if start < 0:  # group 1 did not take part: nothing to remove
            start = end = 0
        return value, (start, end)


class TokensTagExtractor(TagExtractor):
    """A token pattern (Envoy's TagExtractorTokensImpl): ``*`` is any one token, ``**``
    any number of tokens, ``$`` the token that becomes the value."""

    __slots__ = ("tokens", "match_index")

    def __init__(self, name: str, pattern: str) -> None:
        tokens = pattern.split(".")
        first = tokens[0]
        super().__init__(name, first if first not in ("$", "*", "**") else "")
        self.tokens = tokens
        self.match_index = tokens.index("$")

    def extract(self, stat: str, tokens: list[str]) -> tuple[str, tuple[int, int]] | None:
        found = self._search(tokens, 0, 0, 0, None)
        if found is None:
            return None
        start, index = found
        value = tokens[index]
        end = start + len(value)
        if index < len(tokens) - 1:
            end += 1  # "ab." at the start or "cd." in the middle
        elif start > 0:
            start -= 1  # ".ef" at the end
        return value, (start, end)

    def _search(
        self, tokens: list[str], i: int, p: int, char: int, found: tuple[int, int] | None
    ) -> tuple[int, int] | None:
        """(char index of the ``$`` token, its token index) when the pattern matches
        ``tokens`` from ``i`` on, pattern position ``p``; ``found`` is the ``$`` met
        before. A trailing ``**`` takes one token or more, as in Envoy."""
        pattern = self.tokens
        while i < len(tokens) and p < len(pattern):
            expected = pattern[p]
            if p == self.match_index:
                found = (char, i)
            elif expected == "**":
                if p == len(pattern) - 1:
                    return found
                for j in range(i, len(tokens)):
                    rest = self._search(tokens, j, p + 1, char, found)
                    if rest is not None:
                        return rest
                    char += len(tokens[j]) + 1
                return None
            elif expected != "*" and expected != tokens[i]:
                return None
            char += len(tokens[i]) + 1
            i += 1
            p += 1
        if p == len(pattern) and i == len(tokens):
            return found
        return None


class FixedTagExtractor(TagExtractor):
    """``stats_tags: {tag_name, fixed_value}``: every stat gets the tag."""

    __slots__ = ("value",)

    def __init__(self, name: str, value: str) -> None:
        super().__init__(name, "")
        self.value = value

    def extract(self, stat: str, tokens: list[str]) -> tuple[str, tuple[int, int]] | None:
        return self.value, (0, 0)


def _re2(name: str, regex: str, substr: str = "", negative: str = "") -> TagExtractor:
    return RegexTagExtractor(name, _expand(regex), substr, negative)


# Envoy 1.40's defaults, in its order: the regex extractors, then the token ones.
def _default_extractors() -> list[TagExtractor]:
    return [
        _re2("envoy.response_code", r"_rq(_(\d{3}))$", "_rq_"),
        _re2("envoy.response_code_class", r"_rq_((\d))xx$", "_rq_"),
        _re2(
            "envoy.dynamo_partition_id",
            r"^http\.<TAG_VALUE>\.dynamodb\.table\.<TAG_VALUE>\.capacity\.<TAG_VALUE>"
            r"(\.__partition_id=(\w{7}))$",
            ".dynamodb.table.",
        ),
        _re2(
            "envoy.dynamo_operation",
            r"^http\.<TAG_VALUE>\.dynamodb.(?:operation|table\.<TAG_VALUE>\.capacity)"
            r"(\.(<TAG_VALUE>))(?:\.|$)",
            ".dynamodb.",
        ),
        _re2(
            "envoy.dynamo_table",
            r"^http\.<TAG_VALUE>\.dynamodb.(?:table|error)\.((<TAG_VALUE>)\.)",
            ".dynamodb.",
        ),
        _re2("envoy.ssl_cipher", r"^listener\..*?\.ssl\.ciphers(\.(<CIPHER>))$", ".ssl.ciphers."),
        _re2(
            "envoy.ssl_curve",
            r"^<LISTENER_OR_CLUSTER_WITH_NAME>\.ssl\.curves(\.(<CIPHER>))$",
            ".ssl.curves.",
        ),
        _re2(
            "envoy.ssl_sigalg",
            r"^<LISTENER_OR_CLUSTER_WITH_NAME>\.ssl\.sigalgs(\.(<CIPHER>))$",
            ".ssl.sigalgs.",
        ),
        _re2(
            "envoy.ssl_version",
            r"^<LISTENER_OR_CLUSTER_WITH_NAME>\.ssl\.versions(\.(<TLS_VERSION>))$",
            ".ssl.versions.",
        ),
        _re2(
            # Envoy 1.40 names the cluster ciphers envoy.ssl_cipher too (no ssl_cipher_suite).
            "envoy.ssl_cipher",
            r"^cluster\.<TAG_VALUE>\.ssl\.ciphers(\.(<CIPHER>))$",
            ".ssl.ciphers.",
        ),
        _re2(
            "envoy.http_conn_manager_prefix", r"^listener\..*?\.http\.((<TAG_VALUE>)\.)", ".http."
        ),
        _re2(
            "envoy.worker_id",
            r"^(?:listener\.(?:<ADDRESS>|<TAG_VALUE>)|server|listener_manager"
            r"|thread_local_cluster_manager)\.worker_((\d+)\.)",
        ),
        _re2("envoy.listener_address", r"^listener\.((<ADDRESS>|<TAG_VALUE>)\.)", "", "admin"),
        _re2(
            "envoy.rds_route_config",
            r"^http\.<TAG_VALUE>\.rds\.((<ROUTE_CONFIG_NAME>)\.)\w+?$",
            ".rds.",
        ),
        _re2(
            "envoy.scoped_rds_config",
            r"^http\.<TAG_VALUE>\.scoped_rds\.((<SCOPED_ROUTE_CONFIG_NAME>)\.)\w+?$",
            ".scoped_rds.",
        ),
        _re2(
            "envoy.rbac_policy_name",
            r"^http\.<TAG_VALUE>\.rbac\.(?:<TAG_VALUE>\.)?policy\.((<TAG_VALUE>)\.)"
            r"(allowed|shadow_allowed|denied|shadow_denied)$",
        ),
        _re2(
            "envoy.rbac_http_prefix",
            r"^http\.<TAG_VALUE>\.rbac\.((<TAG_VALUE>)\.).*?",
            "",
            "policy",
        ),
        _re2("envoy.proxy_protocol_prefix", r"^proxy_proto\.((<TAG_VALUE>)\.).+$", "", "versions"),
        _re2(
            "envoy.proxy_protocol_version",
            r"^proxy_proto\.((?:<TAG_VALUE>\.)?versions\.v(<PROXY_PROTOCOL_VERSION>)\.)\w+$",
        ),
        _re2(
            "envoy.tls_certificate",
            r"^<LISTENER_OR_CLUSTER_WITH_NAME>\.ssl\.certificate\.((<TAG_VALUE>)\.).*$",
            ".ssl.certificate",
        ),
        _re2("envoy.xds_resource_name", r"^sds\.((<TAG_VALUE>)\.).+"),
        _re2(
            "envoy.health_check_name",
            r"^cluster\.<TAG_VALUE>\.health_check(\.name\.(<TAG_VALUE>))\..+",
            ".health_check.name.",
        ),
        TokensTagExtractor("envoy.mongo_callsite", "mongo.*.collection.*.callsite.$.query.**"),
        TokensTagExtractor("envoy.mongo_collection", "mongo.*.collection.$.**.query.*"),
        TokensTagExtractor("envoy.mongo_cmd", "mongo.*.cmd.$.**"),
        TokensTagExtractor("envoy.grpc_bridge_method", "cluster.*.grpc.*.$.**"),
        TokensTagExtractor("envoy.http_user_agent", "http.*.user_agent.$.**"),
        TokensTagExtractor("envoy.virtual_cluster", "vhost.*.vcluster.$.**"),
        TokensTagExtractor("envoy.fault_downstream_cluster", "http.*.fault.$.**"),
        TokensTagExtractor("envoy.grpc_bridge_service", "cluster.*.grpc.$.**"),
        TokensTagExtractor("envoy.tcp_prefix", "tcp.$.**"),
        TokensTagExtractor("envoy.udp_prefix", "udp.$.**"),
        TokensTagExtractor("envoy.clientssl_prefix", "auth.clientssl.$.**"),
        TokensTagExtractor("envoy.ratelimit_prefix", "ratelimit.$.**"),
        TokensTagExtractor("envoy.cluster_name", "cluster.$.**"),
        TokensTagExtractor("envoy.ext_authz_prefix", "cluster.*.ext_authz.$.**"),
        TokensTagExtractor("envoy.ext_authz_prefix", "http.*.ext_authz.$.**"),
        TokensTagExtractor("envoy.http_conn_manager_prefix", "http.$.**"),
        TokensTagExtractor("envoy.virtual_host", "vhost.$.**"),
        TokensTagExtractor("envoy.mongo_prefix", "mongo.$.**"),
        TokensTagExtractor("envoy.route", "vhost.*.route.$.**"),
        TokensTagExtractor("envoy.thrift_prefix", "thrift.$.**"),
        TokensTagExtractor("envoy.redis_prefix", "redis.$.**"),
        TokensTagExtractor("envoy.local_http_ratelimit_prefix", "$.http_local_rate_limit.**"),
        TokensTagExtractor("envoy.local_network_ratelimit_prefix", "local_rate_limit.$.**"),
        TokensTagExtractor(
            "envoy.local_listener_ratelimit_prefix", "listener_local_ratelimit.$.**"
        ),
        TokensTagExtractor("envoy.dns_filter_prefix", "dns_filter.$.**"),
        TokensTagExtractor("envoy.connection_limit_prefix", "connection_limit.$.**"),
        TokensTagExtractor("envoy.rbac_prefix", "$.rbac.**"),
        TokensTagExtractor("envoy.google_grpc_client_prefix", "grpc.$.**"),
    ]


def default_tag_names() -> frozenset[str]:
    """The names of Envoy's default tags (a name-only ``stats_tags`` entry takes one)."""
    return frozenset(e.name for e in _default_extractors())


@dataclass(frozen=True, slots=True)
class TagSpec:
    """One ``stats_config.stats_tags`` entry: a regex, a fixed value, or neither (then
    the default extractors of that name)."""

    name: str
    regex: str = ""
    fixed_value: str | None = None


class UnknownDefaultTag(ValueError):
    """A name-only tag specifier whose name has no default extractor."""


class TagProducer:
    """Envoy's TagProducerImpl: ``produce(name)`` → (tag-extracted name, tags)."""

    def __init__(self, specs: tuple[TagSpec, ...] = (), use_all_default_tags: bool = True) -> None:
        self._plain: list[TagExtractor] = []
        self._by_prefix: dict[str, list[TagExtractor]] = {}
        self._cache: dict[str, tuple[str, tuple[tuple[str, str], ...]]] = {}
        if use_all_default_tags:
            for ex in _default_extractors():
                self._add(ex)
        for spec in specs:
            if spec.fixed_value is not None:
                self._add(FixedTagExtractor(spec.name, spec.fixed_value))
            elif spec.regex:
                self._add(CustomRegexTagExtractor(spec.name, spec.regex))
            else:
                defaults = [e for e in _default_extractors() if e.name == spec.name]
                if not defaults:
                    raise UnknownDefaultTag(spec.name)
                for ex in defaults:
                    self._add(ex)
        names = [e.name for e in self._plain] + [
            e.name for group in self._by_prefix.values() for e in group
        ]
        self._shared = frozenset(n for n in names if names.count(n) > 1)

    def _add(self, ex: TagExtractor) -> None:
        if ex.prefix:
            self._by_prefix.setdefault(ex.prefix, []).append(ex)
        else:
            self._plain.append(ex)

    def produce(self, stat: str) -> tuple[str, tuple[tuple[str, str], ...]]:
        cached = self._cache.get(stat)
        if cached is not None:
            return cached
        result = self._produce(stat)
        if len(self._cache) < 200_000:
            self._cache[stat] = result
        return result

    def _produce(self, stat: str) -> tuple[str, tuple[tuple[str, str], ...]]:
        tokens = stat.split(".")
        extractors = self._plain
        dot = stat.find(".")
        if dot >= 0:
            group = self._by_prefix.get(stat[:dot])
            if group:
                extractors = extractors + group
        tags: list[tuple[str, str]] = []
        removed: list[tuple[int, int]] = []
        done: set[str] = set()
        for ex in extractors:
            if ex.name in done:
                continue
            found = ex.extract(stat, tokens)
            if found is None:
                continue
            value, span = found
            tags.append((ex.name, value))
            if span[0] != span[1]:
                removed.append(span)
            if ex.name in self._shared:
                done.add(ex.name)
        if not removed:
            return stat, tuple(tags)
        keep = bytearray(b"\x01") * len(stat)
        for start, end in removed:
            keep[start:end] = bytes(end - start)
        # Envoy's stat names drop trailing dots ("cluster.." becomes "cluster"), not
        # leading ones.
        extracted = "".join(c for c, k in zip(stat, keep, strict=True) if k).rstrip(".")
        return extracted, tuple(tags)


# -- the matcher ----------------------------------------------------------------------


class StatsMatcher:
    """``stats_config.stats_matcher``: which stats exist. Envoy never creates a rejected
    stat, so it is in no admin page and no sink; proxyd counts it and never shows it."""

    def __init__(
        self, mode: str = "accept_all", patterns: tuple[Callable[[str], bool], ...] = ()
    ) -> None:
        # "accept_all", "reject_all", "exclusion" or "inclusion".
        self.mode = mode
        self._patterns = patterns
        self._cache: dict[str, bool] = {}

    @property
    def accepts_all(self) -> bool:
        return self.mode == "accept_all"

    def accepts(self, stat: str) -> bool:
        mode = self.mode
        if mode == "accept_all":
            return True
        if mode == "reject_all":
            return False
        cached = self._cache.get(stat)
        if cached is None:
            hit = any(p(stat) for p in self._patterns)
            cached = hit if mode == "inclusion" else not hit
            if len(self._cache) < 200_000:
                self._cache[stat] = cached
        return cached


class StatsView:
    """The tag producer and the matcher one configuration gives, and the histogram
    bucket bounds (``histogram_bucket_settings``: the first rule whose matcher takes
    the name, else ``default_buckets``)."""

    def __init__(
        self,
        tags: TagProducer | None = None,
        matcher: StatsMatcher | None = None,
        bucket_rules: tuple[tuple[Callable[[str], bool], tuple[float, ...]], ...] = (),
        default_buckets: tuple[float, ...] = (),
    ) -> None:
        self.tags = tags if tags is not None else TagProducer()
        self.matcher = matcher if matcher is not None else StatsMatcher()
        self.bucket_rules = bucket_rules
        self.default_buckets = default_buckets

    def buckets_for(self, name: str) -> tuple[float, ...] | None:
        """The bucket bounds of histogram ``name``; None: the default ones."""
        for matches, buckets in self.bucket_rules:
            if matches(name):
                return buckets
        return None
