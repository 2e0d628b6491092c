"""The emulator's selector parsers against apimachinery's documented behaviour, and the
emulator's label selector parser against the product's (`sidecar.core.grammar`).

The emulator's parser is written from k8s.io/apimachinery/pkg/labels/selector.go; the
product's validates `WATCH_SELECTOR` before any request. Both run over one table: they must
agree on what is accepted, except for the rows of KNOWN_DIFFERENCES, each with its reason.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.parse
import urllib.request

import pytest

from sidecar.core.grammar import parse_label_selector as product_parse
from sidecar.sim.kube import KubeEmulator
from sidecar.sim.kube.fields import (
    FieldRequirement,
    field_selector_name,
    fields_match,
    parse_field_selector,
)
from sidecar.sim.kube.selectors import (
    Op,
    Requirement,
    SelectorError,
    labels_match,
    parse_label_selector,
    selector_from_label_selector,
)

# (selector, accepted by the API server)
TABLE: list[tuple[str, bool]] = [
    ("", True),
    ("   ", True),
    ("a", True),
    ("!a", True),
    ("! a", True),
    ("a=b", True),
    ("a==b", True),
    ("a!=b", True),
    ("a = b", True),
    (" a=b ", True),
    ("a\tin\t(b)", True),
    ("a=b\n", True),
    ("a=b,c", True),
    ("a,b", True),
    ("a , b", True),
    ("!a,b", True),
    ("a=", True),
    ("a=,b", True),
    ("a in (b)", True),
    ("a in (b,c)", True),
    ("a in ( b , c )", True),
    ("a in(b)", True),
    ("a notin (b,c)", True),
    ("a in (b),c notin (d)", True),
    ("a in ()", True),
    ("a notin ()", True),
    ("a in (,)", True),
    ("a in (b,)", True),
    ("a in (,b)", True),
    ("a in (b,,c)", True),
    ("a in (b,,)", False),
    ("a in (b c)", False),
    ("a in (b", False),
    ("a in b", False),
    ("in", True),
    ("in in (in)", True),
    ("notin notin (notin)", True),
    ("a>5", True),
    ("a<5", True),
    ("a > 5", True),
    ("a>0005", True),
    ("a>+5", False),
    ("a>-5", False),
    ("a>5x", False),
    ("a>", False),
    ("a>=5", False),
    ("a>99999999999999999999", False),
    ("a=b,,c", False),
    ("a=b,", False),
    (",a", False),
    ("!a=b", False),
    ("!!a", False),
    ("a!", False),
    ("a=b=c", False),
    ("a==b==c", False),
    ("a=(b)", False),
    ("a=b c", False),
    ("a=b)", False),
    ("(a)", False),
    (")", False),
    ("Bad Key=1", False),
    ("a/b/c", False),
    ("/a", False),
    ("a/", False),
    ("example.com/a=b", True),
    ("cache-buster.io/enabled=true", True),
    ("Example.com/a=b", False),
    ("a_b.c-d=e_f.g-h", True),
    ("-a", False),
    ("a-", False),
    ("x" * 63, True),
    ("x" * 64, False),
    ("a=" + "x" * 63, True),
    ("a=" + "x" * 64, False),
    ("a\v=b", False),
    ("a=é", False),
]

# Selectors on which the product's parser and the API server's grammar deliberately or
# knowingly disagree. The product's answer is the opposite of the table's.
KNOWN_DIFFERENCES: dict[str, str] = {
    # Stricter, deliberately: the server reads `()` as the set {""} (the label present with
    # an empty value), which is almost always a typo in a watch selector; the product
    # refuses it at start-up with a clear error rather than watch nothing.
    "a in ()": "product refuses an empty set",
    "a notin ()": "product refuses an empty set",
    # Looser, product limitations: these pass the product's check and then get a 400 from
    # the API server on the first list, instead of one clear error at start-up.
    "a in (b,,)": "product accepts an empty member before `)` after `,,`",
    "a>-5": "product accepts a sign; the server also validates the bound as a label value",
    "a>99999999999999999999": "product does not check the 64-bit range of a Gt/Lt bound",
    "a\v=b": "product treats every Unicode blank as a separator; the server only ' \\t\\r\\n'",
}


def _sim_accepts(selector: str) -> bool:
    try:
        parse_label_selector(selector)
    except SelectorError:
        return False
    return True


def _product_accepts(selector: str) -> bool:
    try:
        product_parse(selector)
    except ValueError:
        return False
    return True


def test_the_table_has_no_duplicates_and_the_differences_are_rows() -> None:
    selectors = [s for s, _ in TABLE]
    assert len(selectors) == len(set(selectors))
    assert set(KNOWN_DIFFERENCES) <= set(selectors)


@pytest.mark.parametrize(("selector", "server_accepts"), TABLE)
def test_the_emulator_parses_as_the_server_does(selector: str, server_accepts: bool) -> None:
    assert _sim_accepts(selector) is server_accepts


@pytest.mark.parametrize(("selector", "server_accepts"), TABLE)
def test_the_product_agrees_with_the_emulator_but_for_known_differences(
    selector: str, server_accepts: bool
) -> None:
    product = _product_accepts(selector)
    if selector in KNOWN_DIFFERENCES:
        assert product is not server_accepts, f"no longer a difference: {selector!r}"
    else:
        assert product is server_accepts


@pytest.mark.parametrize(
    "selector", [s for s, ok in TABLE if ok and s not in KNOWN_DIFFERENCES and s.strip()]
)
def test_where_both_accept_they_read_the_same_requirements(selector: str) -> None:
    ours = sorted(
        (r.key, r.op.value, tuple(sorted(r.values))) for r in parse_label_selector(selector)
    )
    theirs = sorted(
        (key, op, tuple(sorted(set(values)))) for key, op, values in product_parse(selector)
    )
    assert ours == theirs


# ---------------------------------------------------------------- the emulator's parser


def test_requirements_carry_the_servers_reading() -> None:
    # A bound must also be a label value: no sign, even `-0`.
    assert not _sim_accepts("r<-0")
    assert parse_label_selector("z,!y,x in (b,,a),w==v,u!=t,s>3") == [
        Requirement("s", Op.GREATER_THAN, frozenset({"3"})),
        Requirement("u", Op.NOT_EQUALS, frozenset({"t"})),
        Requirement("w", Op.DOUBLE_EQUALS, frozenset({"v"})),
        Requirement("x", Op.IN, frozenset({"a", "b", ""})),
        Requirement("y", Op.DOES_NOT_EXIST),
        Requirement("z", Op.EXISTS),
    ]
    assert parse_label_selector("a in ()") == [Requirement("a", Op.IN, frozenset({""}))]
    assert parse_label_selector("a=") == [Requirement("a", Op.EQUALS, frozenset({""}))]
    assert parse_label_selector("in in (in)") == [Requirement("in", Op.IN, frozenset({"in"}))]


def test_errors_read_like_the_servers() -> None:
    with pytest.raises(SelectorError, match=r"^unable to parse requirement: found 'c', expected"):
        parse_label_selector("a in (b c)")
    with pytest.raises(SelectorError, match=r"^found '=', expected: ',' or 'end of string'$"):
        parse_label_selector("!a=b")
    with pytest.raises(SelectorError, match=r"identifier after ','"):
        parse_label_selector("a,")
    with pytest.raises(SelectorError, match="the value must be an integer"):
        parse_label_selector("a>x")


@pytest.mark.parametrize(
    ("selector", "labels", "matches"),
    [
        ("a=1", {"a": "1"}, True),
        ("a==1", {"a": "2"}, False),
        ("a=1", {}, False),
        # `!=` and `notin` match objects without the label.
        ("a!=1", {}, True),
        ("a!=1", {"a": "1"}, False),
        ("a notin (1,2)", {}, True),
        ("a notin (1,2)", {"a": "2"}, False),
        ("a notin (1,2)", {"a": "3"}, True),
        ("a in (1,2)", {}, False),
        ("a in ()", {"a": ""}, True),
        ("a in ()", {"a": "x"}, False),
        ("a in ()", {}, False),
        ("a", {"a": ""}, True),
        ("!a", {"a": ""}, False),
        ("!a", {}, True),
        # `>` and `<` need the label, and an integer value.
        ("a>1", {"a": "2"}, True),
        ("a>1", {"a": "1"}, False),
        ("a<10", {"a": "9"}, True),
        ("a<10", {"a": "010"}, False),
        ("a>1", {}, False),
        ("a<1", {}, False),
        ("a>1", {"a": "x"}, False),
        ("a<1", {"a": ""}, False),
        ("a>1,b", {"a": "5"}, False),
        ("a>1,b", {"a": "5", "b": "x"}, True),
    ],
)
def test_matching(selector: str, labels: dict[str, str], matches: bool) -> None:
    assert labels_match(parse_label_selector(selector), labels) is matches


def test_a_nul_ends_the_selector_as_it_does_for_the_server() -> None:
    assert parse_label_selector("a=b\0 what follows is not read") == [
        Requirement("a", Op.EQUALS, frozenset({"b"}))
    ]


def test_label_selector_objects_are_validated() -> None:
    reqs = selector_from_label_selector(
        {
            "matchLabels": {"app": "web"},
            "matchExpressions": [
                {"key": "tier", "operator": "In", "values": ["a", "b"]},
                {"key": "gone", "operator": "DoesNotExist"},
            ],
        }
    )
    assert labels_match(reqs, {"app": "web", "tier": "b"})
    assert not labels_match(reqs, {"app": "web", "tier": "b", "gone": "1"})
    for bad in (
        {"matchLabels": {"bad key": "x"}},
        {"matchLabels": {"app": "-x"}},
        {"matchExpressions": [{"key": "a", "operator": "In", "values": []}]},
        {"matchExpressions": [{"key": "a", "operator": "Exists", "values": ["x"]}]},
        {"matchExpressions": [{"key": "a", "operator": "Gt", "values": ["1"]}]},
    ):
        with pytest.raises(SelectorError):
            selector_from_label_selector(bad)


# ---------------------------------------------------------------- field selectors


def test_field_selectors() -> None:
    assert parse_field_selector("metadata.name=web,status.phase!=Failed") == [
        FieldRequirement("metadata.name", True, "web"),
        FieldRequirement("status.phase", False, "Failed"),
    ]
    assert parse_field_selector("metadata.name==web") == [
        FieldRequirement("metadata.name", True, "web")
    ]
    # Empty terms are skipped; an escaped comma, equals or backslash is part of the value.
    assert parse_field_selector(",metadata.name=a\\,b\\=c\\\\,") == [
        FieldRequirement("metadata.name", True, "a,b=c\\")
    ]
    assert parse_field_selector("metadata.name=") == [FieldRequirement("metadata.name", True, "")]
    pod = {"metadata": {"name": "a,b"}, "status": {"phase": "Running"}}
    reqs = parse_field_selector("metadata.name=a\\,b,status.phase!=Failed")
    assert fields_match(reqs, pod)
    assert not fields_match(parse_field_selector("status.phase=Failed"), pod)
    assert field_selector_name(reqs) == "a,b"
    assert field_selector_name(parse_field_selector("metadata.name!=x")) is None


@pytest.mark.parametrize(
    ("selector", "message"),
    [
        ("metadata.name", "can't understand 'metadata.name'"),
        ("metadata.name=a=b", "unescaped character in value: ="),
        ("metadata.name=a\\x", "invalid escape sequence: \\x"),
        ("metadata.name=a\\", "invalid escape sequence: \\"),
        ("spec.bogus=1", "field label not supported: spec.bogus"),
        # Nothing is trimmed: the field is ` metadata.name`.
        (" metadata.name=web", "field label not supported:  metadata.name"),
    ],
)
def test_bad_field_selectors(selector: str, message: str) -> None:
    with pytest.raises(SelectorError) as exc:
        parse_field_selector(selector)
    assert message in str(exc.value)


# ---------------------------------------------------------------- over HTTP


def test_a_bad_selector_is_a_400_with_the_parsers_message() -> None:
    with KubeEmulator() as kube:
        for param, value, start in (
            ("labelSelector", "a in (b c)", "unable to parse requirement: "),
            ("fieldSelector", "spec.bogus=1", "field label not supported: "),
        ):
            query = urllib.parse.urlencode({param: value})
            url = f"{kube.url}/api/v1/namespaces/default/configmaps?{query}"
            with pytest.raises(urllib.error.HTTPError) as exc:
                urllib.request.urlopen(url, timeout=5)
            assert exc.value.code == 400
            status = json.loads(exc.value.read())
            assert status["reason"] == "BadRequest"
            assert status["message"].startswith(start)
