"""The dashboard's views through Django's test client: staff only, CSRF on actions, no SQL
parameter values in its JSON.

The client runs in a child Python with the project of ``harness/dashboard_site.py`` (auth,
sessions, CSRF middleware, the pooled PostgreSQL backend on a throwaway server), so that
this process's Django settings, configured once for other modules, stay as they are. The
child does every request and prints what it saw as JSON; the tests check one part each.
"""

from __future__ import annotations

import json
import subprocess
import sys
from importlib import metadata
from typing import Any

import pytest

from harness.dashboard_site import PASSWORD, SECRET_LITERAL, SECRET_PARAM, env_for, make_site

CHILD = f"""
import json, os, sys, threading, time
import django
django.setup()
from django.test import Client

out = {{}}
anon = Client(enforce_csrf_checks=True)
r = anon.get("/lido/")
out["anon_page"] = [r.status_code, r.get("Location")]
out["anon_json"] = anon.get("/lido/snapshot.json").status_code
out["anon_post"] = anon.post("/lido/actions/resize", {{"pid": os.getpid()}}).status_code

plain = Client(enforce_csrf_checks=True)
assert plain.login(username="plain", password={PASSWORD!r})
out["plain_page"] = plain.get("/lido/").status_code
out["plain_json"] = plain.get("/lido/snapshot.json").status_code

staff = Client(enforce_csrf_checks=True)
assert staff.login(username="staff", password={PASSWORD!r})
r = staff.get("/lido/")
out["staff_page"] = r.status_code
page = r.content.decode()
out["page_has_script"] = "django_lido/dashboard.js" in page and "snapshot.json" in page
token = staff.cookies["csrftoken"].value
out["staff_get_action"] = staff.get("/lido/actions/resize").status_code

# The site's view holds a connection in a transaction, after a statement with a parameter
# value and a literal, while the dashboard's JSON is read.
t = threading.Thread(target=lambda: Client().get("/hold", {{"s": "8"}}))
t.start()
me = os.getpid()
deadline = time.monotonic() + 15
while True:
    r = staff.get("/lido/snapshot.json")
    snap = r.json()
    mine = [p for p in snap["processes"] if p.get("pid") == me]
    in_use = sum(p["stats"].get("in_use", 0) for p in (mine[0]["pools"] if mine else []))
    if in_use >= 1 and (snap["connections"] or time.monotonic() > deadline - 10):
        break
    assert time.monotonic() < deadline, "this process's held connection never showed"
    time.sleep(0.2)
out["staff_json"] = r.status_code
out["json_text"] = r.content.decode()
out["snapshot"] = snap
t.join(20)

pool = mine[0]["pools"][0]["name"]
from django_lido.observe.publish import open_pools
pool_max = lambda: open_pools()[0].stats()["pool_max"]
fields = {{"pid": me, "pool": pool, "min_size": 0, "max_size": 7}}
out["post_no_token"] = staff.post("/lido/actions/resize", fields).status_code
r = staff.post("/lido/actions/resize", fields, HTTP_X_CSRFTOKEN=token)
out["post_token"] = [r.status_code, r.json()]
deadline = time.monotonic() + 10
while pool_max() != 7 and time.monotonic() < deadline:
    time.sleep(0.1)
out["pool_max_after_resize"] = pool_max()
r = staff.post("/lido/actions/resize", {{**fields, "max_size": "x"}}, HTTP_X_CSRFTOKEN=token)
out["post_bad_size"] = r.status_code
r = staff.post("/lido/actions/resize", {{**fields, "min_size": 8}}, HTTP_X_CSRFTOKEN=token)
out["post_min_above_max"] = [r.status_code, r.json()]
out["plain_post"] = plain.post(
    "/lido/actions/resize", fields, HTTP_X_CSRFTOKEN=plain.cookies.get("csrftoken").value
    if plain.cookies.get("csrftoken") else "x"
).status_code
# Statement statistics reset on every process: this one's publisher takes the request at
# its next tick; the hold view's statement is gone from its pool's statistics then.
hold_shape = lambda: [q for q in open_pools()[0].query_stats(100) if "OR username" in q["shape"]]
out["shape_before_reset"] = bool(hold_shape())
# A resize for another process only, made before the reset: once this process has taken the
# reset, it has looked at the resize too, and its pool kept its size.
other = {{**fields, "pid": me + 1, "max_size": 9}}
r = staff.post("/lido/actions/resize", other, HTTP_X_CSRFTOKEN=token)
out["post_other_pid"] = r.status_code
out["reset_no_token"] = staff.post("/lido/actions/reset_queries").status_code
out["reset"] = staff.post("/lido/actions/reset_queries", HTTP_X_CSRFTOKEN=token).status_code
deadline = time.monotonic() + 10
while hold_shape() and time.monotonic() < deadline:
    time.sleep(0.1)
out["shape_after_reset"] = bool(hold_shape())
out["pool_max_after_other_pid"] = pool_max()
# A drain reaches every process the same way: this one's pool closes its idle connections.
drained = lambda: open_pools()[0].stats()["closes_drained"]
out["drain_no_token"] = staff.post("/lido/actions/drain", {{"pool": pool}}).status_code
# A valid token (the staff's, in plain's cookie too): refused for not being staff.
plain.cookies["csrftoken"] = token
r = plain.post("/lido/actions/drain", {{"pool": pool}}, HTTP_X_CSRFTOKEN=token)
out["plain_drain"] = [r.status_code, b"CSRF" in r.content]
staff.get("/lido/snapshot.json")  # a connection used and returned: one is idle
out["idle_before_drain"] = open_pools()[0].stats()["idle"]
out["drained_before"] = drained()
r = staff.post("/lido/actions/drain", {{"pool": pool}}, HTTP_X_CSRFTOKEN=token)
out["drain"] = r.status_code
deadline = time.monotonic() + 10
while drained() == out["drained_before"] and time.monotonic() < deadline:
    time.sleep(0.1)
out["drained_after"] = drained()
r = anon.get("/lido/metrics")
out["metrics"] = [r.status_code, r.content.decode(errors="replace")[:20000]]
from django_lido.views import public_snapshot
out["filtered"] = public_snapshot({{
    "host": "h", "taken_at": 1.0,
    "connections": [{{"id": 1, "sql": "raw-1", "holder": {{"label": "GET /", "env": "raw-2"}}}}],
    "queries": [{{"shape": "SELECT ?", "params": ["raw-3"]}}],
    "leaks": [{{"kind": "leak", "stack": ["f.py:1 in g"], "locals": "raw-4"}}],
    "processes": [{{"pid": 1, "environ": "raw-5", "pools": [{{
        "name": "p", "connections": [{{"sql": "raw-6"}}],
        "stats": {{"in_use": 1, "dsn": "raw-7", "usage": {{"p99_ms": 2.0}}}},
    }}]}}],
}})
print("RESULT " + json.dumps(out))
"""


@pytest.fixture(scope="module")
def seen(pg: Any, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    root = make_site(
        pg, tmp_path_factory.mktemp("dashsite"), dbname="lido_dash_client",
        pool={"max_size": 4},
    )  # fmt: skip
    proc = subprocess.run(
        [sys.executable, "-c", CHILD], cwd=root, env=env_for(root), capture_output=True,
        text=True, timeout=120,
    )  # fmt: skip
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    assert proc.returncode == 0 and lines, f"child failed:\n{proc.stdout}\n{proc.stderr}"
    result: dict[str, Any] = json.loads(lines[-1][len("RESULT ") :])
    return result


def test_anonymous_is_sent_to_login_and_refused_json(seen: dict[str, Any]) -> None:
    status, location = seen["anon_page"]
    assert status == 302
    assert location.startswith("/accounts/login/?next=/lido/")
    assert seen["anon_json"] == 403
    assert seen["anon_post"] == 403


def test_signed_in_non_staff_gets_403(seen: dict[str, Any]) -> None:
    assert seen["plain_page"] == 403
    assert seen["plain_json"] == 403
    assert seen["plain_post"] == 403


def test_staff_gets_the_page_and_its_json(seen: dict[str, Any]) -> None:
    assert seen["staff_page"] == 200
    assert seen["page_has_script"]
    assert seen["staff_json"] == 200
    snap = seen["snapshot"]
    keys = {"host", "taken_at", "processes", "pools", "connections", "queries", "leaks"}
    assert keys <= set(snap)
    assert any(p["pools"] for p in snap["processes"])


def test_json_has_no_parameter_values_or_literals(seen: dict[str, Any]) -> None:
    text = seen["json_text"]
    assert SECRET_PARAM not in text
    assert SECRET_LITERAL not in text
    # Not vacuous: the statement itself is there, as a shape, where the build records them.
    snap = seen["snapshot"]
    if not snap["connections"] and not snap["queries"]:
        pytest.skip("this build publishes no connections or statement shapes (Seam B/C)")
    assert "auth_user" in text


def test_actions_are_post_with_csrf_and_a_resize_reaches_the_process_named(
    seen: dict[str, Any],
) -> None:
    assert seen["staff_get_action"] == 405
    assert seen["post_no_token"] == 403
    assert seen["post_other_pid"] == 200
    status, answer = seen["post_token"]
    assert (status, answer) == (200, {"ok": True})
    assert seen["pool_max_after_resize"] == 7
    assert seen["pool_max_after_other_pid"] == 7, "not resized to the 9 of another pid"
    assert seen["post_bad_size"] == 400
    status, answer = seen["post_min_above_max"]
    assert status == 400 and "min_size=8" in answer["error"], answer
    assert seen["reset_no_token"] == 403


def test_reset_queries_action_resets_the_statistics(seen: dict[str, Any]) -> None:
    assert seen["shape_before_reset"]
    assert seen["reset"] == 200
    assert not seen["shape_after_reset"]


def test_drain_action_is_staff_only_with_csrf_and_drains_the_pool(seen: dict[str, Any]) -> None:
    assert seen["drain_no_token"] == 403
    assert seen["plain_drain"] == [403, False], "refused as not staff, not for the token"
    assert seen["drain"] == 200
    assert seen["idle_before_drain"] >= 1
    assert seen["drained_after"] > seen["drained_before"] == 0


def test_templates_and_static_files_are_in_the_installed_wheel() -> None:
    files = {str(f) for f in metadata.files("django-lido") or []}
    for name in (
        "django_lido/templates/django_lido/dashboard.html",
        "django_lido/static/django_lido/dashboard.js",
        "django_lido/static/django_lido/dashboard.css",
        "django_lido/urls.py",
        "django_lido/views.py",
    ):
        assert name in files, name


def test_metrics_route_serves_the_prometheus_exposition(seen: dict[str, Any]) -> None:
    pytest.importorskip("prometheus_client")
    status, body = seen["metrics"]
    assert status == 200, body[:500]
    assert "db_client_connection_count" in body


def test_json_view_passes_on_only_the_keys_the_page_shows(seen: dict[str, Any]) -> None:
    """A key added upstream (raw SQL, an environment) does not reach the browser."""
    filtered = seen["filtered"]
    assert "raw-" not in json.dumps(filtered)
    assert filtered["connections"] == [{"id": 1, "holder": {"label": "GET /"}}]
    assert filtered["queries"] == [{"shape": "SELECT ?"}]
    assert filtered["leaks"][0]["stack"] == ["f.py:1 in g"]
    (pool,) = filtered["processes"][0]["pools"]
    assert pool == {"name": "p", "stats": {"in_use": 1, "usage": {"p99_ms": 2.0}}}


def test_urls_import_without_the_auth_app() -> None:
    """A project may mount ``django_lido.urls`` for the metrics alone, without auth."""
    code = (
        "import django; from django.conf import settings\n"
        "settings.configure(INSTALLED_APPS=['django_lido'], ROOT_URLCONF='django_lido.urls')\n"
        "django.setup()\n"
        "from django.urls import reverse\n"
        "print(reverse('metrics'), reverse('dashboard'))\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, cwd="/"
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["/metrics", "/"]
