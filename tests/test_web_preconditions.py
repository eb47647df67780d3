"""
If-Match on changes, as RFC 9110 13.1.1 defines it: a list of entity-tags
compared strongly, C{*} for any current config, 412 for a false
precondition and 400 only for a malformed field (through StubTreq).
"""

from __future__ import annotations

import pytest

from tests.webtools import Admin


@pytest.fixture
def admin(factories):
    return Admin(factories)


def patch(admin, if_match):
    return admin.request("PATCH", "/api/v1/backends/b1", {"weight": 4}, headers={"If-Match": if_match})


@pytest.mark.parametrize("value", [
    '"stale-version-0"',
    '"0", "7"',
    'W/"1"',
    '"01"',
    '"0",W/"1"',
])
def test_well_formed_tag_that_is_not_current_is_412(admin, value):
    """A well-formed If-Match naming no current version (another tag, a
    list of stale ones, the current one weak, another spelling of it) is a
    false precondition: 412 with the current version, nothing changed."""
    r = patch(admin, value)
    assert r.code == 412, r.json
    assert r.json["current_version"] == 1
    assert admin.balancer.config.version == 1
    assert admin.balancer.config.backend("b1").weight == 1


@pytest.mark.parametrize("value", ['"1"', '"0", "1"', ' , "7" ,"1",', 'W/"1", "1"', "*", "1"])
def test_a_listed_current_version_or_star_matches(admin, value):
    """The current version anywhere in the list (empty elements ignored),
    C{*}, or the bare version the first release took: the change applies."""
    r = patch(admin, value)
    assert r.code == 200, r.json
    assert r.header("ETag") == '"2"'
    assert admin.balancer.config.backend("b1").weight == 4


def test_field_lines_are_one_list(admin):
    """Two If-Match field lines are one list: the current version in the
    second one matches."""
    r = patch(admin, ['"0"', '"1"'])
    assert r.code == 200, r.json


@pytest.mark.parametrize("value", ["yesterday", '"1" "2"', '"1', "", "  ", ",", "W/1", '"a"b', "1, 2", '"1"; q=1'])
def test_malformed_field_is_400(admin, value):
    """Only a field that is not C{*} or a list of entity-tags is 400, and
    the message says what the field must look like."""
    r = patch(admin, value)
    assert r.code == 400, r.json
    assert "If-Match must be * or a list of entity-tags" in r.json["error"]
    assert admin.balancer.config.version == 1


def test_bad_body_is_400_even_with_a_false_precondition(admin):
    """A bad body is refused as such first, whatever the If-Match."""
    r = admin.request("PATCH", "/api/v1/backends/b1", {"weight": -1}, headers={"If-Match": '"stale"'})
    assert r.code == 400 and "weight" in r.json["error"]


def test_schema_pattern_agrees_with_the_parser():
    """The openapi.json pattern of If-Match accepts what the server parses
    and refuses what it answers 400 to."""
    import re

    from lbproxy.web.openapi_ops import _IF_MATCH

    pattern = re.compile(_IF_MATCH["schema"]["pattern"])
    for ok in ('"stale-version-0"', '"0", "7"', 'W/"1"', "*", "1", ' , "7" ,"1",'):
        assert pattern.search(ok), ok
    for bad in ("yesterday", '"1" "2"', '"1', "", ",", "W/1", "1, 2"):
        assert not pattern.search(bad), bad
