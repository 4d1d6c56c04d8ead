"""Function logs through boto3's `logs` client (and the AWS CLI), against
`silo serve` with real microVMs. Run by tests/logs_e2e.rs with
SILO_ENDPOINT, ADMIN_KEY, ADMIN_SECRET, TENANT_A_KEY, TENANT_A_SECRET and
PHASE:

- PHASE=write: creates `printer` (python3.11, Text) and `jsonlog`
  (python3.11, LoggingConfig JSON), invokes them as tenant-A and tenant-B,
  floods `printer`'s log as tenant-B, and checks what the admin key and
  tenant-A's key read back: lines, START/END/REPORT with the right request
  ids, REPORT's Duration equal to the invoke's own (its log tail), Init
  Duration on the cold start only, tenantId in every JSON record, the
  DEBUG record filtered out, the init phase's records (INIT_START and,
  for a runtime failing its init, INIT_REPORT / platform.initReport),
  tenant-A's lines intact after tenant-B's
  flood, and a tenant key seeing only its own tenant's events whatever it
  asks. Prints `COUNT_A <n>` (tenant-A's events of printer).
- PHASE=after-restart: the same events are still there; prints `COUNT_A`.
"""

import json
import os
import re
import shutil
import subprocess
import time

import boto3
import botocore.config
import botocore.exceptions

from silo_lambda import client, create_function, expect_function_error, invoke

TIMEOUT = int(os.environ.get("FUNCTION_TIMEOUT", "60"))
FLOOD_LINES = int(os.environ.get("FLOOD_LINES", "8000"))
STREAM_NAME = re.compile(r"^\d{4}/\d{2}/\d{2}/\[\$LATEST\][0-9a-f]{32}$")

PRINTER = """
import logging
logger = logging.getLogger()
logger.setLevel(logging.INFO)

def handler(event, context):
    t = context.tenant_id
    n = int(event.get("flood", 0))
    if n:
        line = "flood tenant=%s %s" % (t, "x" * 80)
        for i in range(n):
            print(line, i)
        return {"flooded": n}
    m = event["marker"]
    print("hello tenant=%s marker=%s" % (t, m))
    print("second line tenant=%s marker=%s" % (t, m))
    logger.info("logged tenant=%s marker=%s", t, m)
    return {"ok": True}
"""

JSONLOG = """
import logging
logger = logging.getLogger()

def handler(event, context):
    logger.info("json info tenant=%s", context.tenant_id)
    logger.debug("json debug hidden tenant=%s", context.tenant_id)
    print("plain print tenant=%s" % context.tenant_id)
    return {}
"""

INITFAIL = """
import silo_no_such_module

def handler(event, context):
    return {}
"""


def logs_client(key, secret):
    return boto3.client(
        "logs",
        endpoint_url=os.environ["SILO_ENDPOINT"],
        region_name="us-east-1",
        aws_access_key_id=key,
        aws_secret_access_key=secret,
        config=botocore.config.Config(retries={"max_attempts": 0}, read_timeout=120),
    )


def all_events(logs, group, **kw):
    """Every event FilterLogEvents returns, following nextToken."""
    out, token = [], None
    while True:
        if token:
            kw["nextToken"] = token
        r = logs.filter_log_events(logGroupName=group, **kw)
        out.extend(r["events"])
        token = r.get("nextToken")
        if not token:
            return out


def wait_for(logs, group, pattern, count, what):
    """Polls until `pattern` matches at least `count` events (the writer
    works off the invoke path)."""
    deadline = time.monotonic() + 60
    while True:
        ev = all_events(logs, group, filterPattern=pattern)
        if len(ev) >= count or time.monotonic() > deadline:
            assert len(ev) >= count, (what, len(ev), [e["message"] for e in ev])
            return ev
        time.sleep(0.5)


def tenant_a_events(admin):
    return all_events(admin, "/aws/lambda/printer", filterPattern='{ $.tenantId = "tenant-A" }')


def phase_write():
    lam = client()
    admin = logs_client(os.environ["ADMIN_KEY"], os.environ["ADMIN_SECRET"])
    tenant_a = logs_client(os.environ["TENANT_A_KEY"], os.environ["TENANT_A_SECRET"])

    create_function(lam, "printer", "python3.11", "app.handler", {"app.py": PRINTER}, TIMEOUT, 256)
    r = lam.get_function_configuration(FunctionName="printer")
    assert r["LoggingConfig"] == {"LogFormat": "Text", "LogGroup": "/aws/lambda/printer"}, r
    r = lam.create_function(
        FunctionName="jsonlog", Runtime="python3.11", Role="arn:aws:iam::000000000000:role/j",
        Handler="app.handler", Code={"ZipFile": __import__("silo_lambda").package({"app.py": JSONLOG})},
        Timeout=TIMEOUT, MemorySize=256, TenancyConfig={"TenantIsolationMode": "PER_TENANT"},
        LoggingConfig={"LogFormat": "JSON", "ApplicationLogLevel": "INFO", "SystemLogLevel": "INFO"})
    assert r["LoggingConfig"]["LogFormat"] == "JSON", r
    assert r["LoggingConfig"]["ApplicationLogLevel"] == "INFO", r
    try:
        lam.update_function_configuration(
            FunctionName="printer", LoggingConfig={"LogFormat": "Text", "ApplicationLogLevel": "DEBUG"})
        raise AssertionError("levels with the Text format were accepted")
    except botocore.exceptions.ClientError as e:
        assert e.response["Error"]["Code"] == "InvalidParameterValueException", e.response

    # tenant-A: a cold start and a warm invoke, with their log tails.
    tails = {}
    ids = {}
    for marker in ["m-A1", "m-A2"]:
        r, body, tail = invoke(lam, "printer", "tenant-A", json.dumps({"marker": marker}).encode(), tail=True)
        assert body == {"ok": True}, body
        ids[marker] = r["ResponseMetadata"]["RequestId"]
        tails[marker] = tail
    r, body, _ = invoke(lam, "printer", "tenant-B", b'{"marker": "m-B1"}')
    ids["m-B1"] = r["ResponseMetadata"]["RequestId"]
    # tenant-B floods printer's log (its share is a fraction of this).
    r, body, _ = invoke(lam, "printer", "tenant-B", json.dumps({"flood": FLOOD_LINES}).encode())
    assert body == {"flooded": FLOOD_LINES}, body
    r, body, tail = invoke(lam, "printer", "tenant-A", b'{"marker": "m-A3"}', tail=True)
    ids["m-A3"] = r["ResponseMetadata"]["RequestId"]
    tails["m-A3"] = tail
    for tenant in ["tenant-A", "tenant-B"]:
        invoke(lam, "jsonlog", tenant)
    # A runtime that fails its init: as Text for tenant-A, as JSON for
    # tenant-B (a new environment, after the format changed).
    create_function(lam, "initfail", "python3.11", "app.handler", {"app.py": INITFAIL}, TIMEOUT, 256)
    r, body, _ = invoke(lam, "initfail", "tenant-A")
    expect_function_error(r, body, "Runtime.ImportModuleError", "silo_no_such_module")
    lam.update_function_configuration(FunctionName="initfail", LoggingConfig={"LogFormat": "JSON"})
    lam.get_waiter("function_updated_v2").wait(FunctionName="initfail")
    r, body, _ = invoke(lam, "initfail", "tenant-B")
    expect_function_error(r, body, "Runtime.ImportModuleError", "silo_no_such_module")

    # Admin: groups, streams, the lines and the platform records.
    # tenant-A's three REPORTs and the flood's (its flood evicted tenant-B's
    # earlier lines, its own).
    wait_for(admin, "/aws/lambda/printer", "REPORT", 4, "printer's REPORTs")
    groups = [g["logGroupName"] for g in admin.describe_log_groups(logGroupNamePrefix="/aws/lambda/")["logGroups"]]
    assert "/aws/lambda/printer" in groups and "/aws/lambda/jsonlog" in groups, groups
    streams = admin.describe_log_streams(logGroupName="/aws/lambda/printer")["logStreams"]
    assert len(streams) == 2, streams
    for s in streams:
        assert STREAM_NAME.match(s["logStreamName"]), s

    a_events = tenant_a_events(admin)
    text = [e["message"] for e in a_events]
    for marker in ["m-A1", "m-A2", "m-A3"]:
        rid = ids[marker]
        mine = [m for m in text if rid in m or marker in m]
        assert any(m == f"hello tenant=tenant-A marker={marker}" for m in mine), mine
        assert any(m == f"second line tenant=tenant-A marker={marker}" for m in mine), mine
        assert any(m.startswith("[INFO]") and f"logged tenant=tenant-A marker={marker}" in m for m in mine), mine
        assert f"START RequestId: {rid} Version: $LATEST" in mine, mine
        assert f"END RequestId: {rid}" in mine, mine
        report = [m for m in mine if m.startswith(f"REPORT RequestId: {rid}")]
        assert len(report) == 1, mine
        # The stored REPORT is the invoke's own (its log tail's).
        tail_report = [l for l in tails[marker].splitlines() if l.startswith("REPORT")][0]
        dur = lambda s: float(re.search(r"\tDuration: ([0-9.]+) ms", s).group(1))
        assert abs(dur(report[0]) - dur(tail_report)) <= 5.0, (report[0], tail_report)
        assert ("Init Duration" in report[0]) == (marker == "m-A1"), report[0]
        assert "Max Memory Used" in report[0], report[0]
    assert any(m.startswith("INIT_START") for m in text), text
    assert not any("tenant=tenant-B" in m for m in text), "tenant-B's line under tenant-A's filter"
    # The flood: tenant-B's events are cut to its share, tenant-A's intact.
    flood = all_events(admin, "/aws/lambda/printer", filterPattern='"flood tenant=tenant-B"')
    print(f"flood: {len(flood)} of {FLOOD_LINES} lines of tenant-B kept", flush=True)
    assert len(flood) < FLOOD_LINES, len(flood)
    groups = {g["logGroupName"]: g for g in admin.describe_log_groups()["logGroups"]}
    stored = groups["/aws/lambda/printer"]["storedBytes"]
    print(f"printer stores {stored} bytes", flush=True)
    assert stored <= int(os.environ["MAX_FUNCTION_BYTES"]), stored

    # GetLogEvents from the head of tenant-A's stream.
    a_stream = [e["logStreamName"] for e in a_events][0]
    ev = admin.get_log_events(logGroupName="/aws/lambda/printer", logStreamName=a_stream,
                              startFromHead=True)["events"]
    assert ev[0]["message"].startswith("INIT_START"), ev[:3]
    assert ev[1]["message"].startswith("START RequestId: " + ids["m-A1"]), ev[:3]
    b_stream = [s["logStreamName"] for s in streams if s["logStreamName"] != a_stream][0]

    # JSON: Lambda's records, tenantId in each, DEBUG filtered.
    records = [json.loads(e["message"]) for e in
               wait_for(admin, "/aws/lambda/jsonlog", '{ $.type = "platform.report" }', 2, "jsonlog's reports")]
    records = [json.loads(e["message"]) for e in all_events(admin, "/aws/lambda/jsonlog")]
    for rec in records:
        assert rec.get("tenantId") in ("tenant-A", "tenant-B"), rec
    info = [r for r in records if r.get("level") == "INFO" and "json info" in r.get("message", "")]
    assert {r["tenantId"] for r in info} == {"tenant-A", "tenant-B"}, records
    for r in info:
        assert r["message"] == "json info tenant=" + r["tenantId"], r
        assert r["requestId"] and r["timestamp"], r
    assert not any("hidden" in json.dumps(r) for r in records), records
    assert any(r.get("message") == "plain print tenant=tenant-A" for r in records), records
    types = {r.get("type") for r in records}
    assert {"platform.start", "platform.runtimeDone", "platform.report"} <= types, types
    # The init phase in JSON: each tenant's cold start has its initStart
    # and its report's initDurationMs.
    for tenant in ["tenant-A", "tenant-B"]:
        mine = [r for r in records if r.get("tenantId") == tenant]
        starts = [r for r in mine if r.get("type") == "platform.initStart"]
        assert len(starts) == 1, mine
        assert starts[0]["record"]["phase"] == "init", starts
        assert starts[0]["record"]["initializationType"] == "on-demand", starts
        assert starts[0]["record"]["functionName"] == "jsonlog", starts
        reports = [r for r in mine if r.get("type") == "platform.report"]
        assert len(reports) == 1 and reports[0]["record"]["metrics"]["initDurationMs"] > 0, reports
        assert not any(r.get("type") == "platform.initReport" for r in mine), mine

    # A failed init: INIT_START, then INIT_REPORT with its duration, status
    # and error type (Text), platform.initReport (JSON), each tenant's.
    wait_for(admin, "/aws/lambda/initfail", "REPORT", 1, "initfail's Text REPORT")
    text_a = [e["message"] for e in
              all_events(admin, "/aws/lambda/initfail", filterPattern='{ $.tenantId = "tenant-A" }')]
    assert any(m.startswith("INIT_START Runtime Version: python3.11") for m in text_a), text_a
    init_report = [m for m in text_a if m.startswith("INIT_REPORT")]
    assert len(init_report) == 1, text_a
    assert re.fullmatch(r"INIT_REPORT Init Duration: [0-9]+\.[0-9]{2} ms\tPhase: init\tStatus: error"
                        r"\tError Type: Runtime\.ImportModuleError", init_report[0]), init_report
    order = [m.split(" ")[0] for m in text_a if m.split(" ")[0] in
             ("INIT_START", "START", "INIT_REPORT", "END", "REPORT")]
    assert order == ["INIT_START", "START", "INIT_REPORT", "END", "REPORT"], text_a
    assert not any(m.startswith("{") for m in text_a), text_a
    json_b = [json.loads(e["message"]) for e in
              wait_for(admin, "/aws/lambda/initfail", '{ $.type = "platform.initReport" }', 1, "initfail's initReport")]
    assert len(json_b) == 1, json_b
    rec = json_b[0]
    assert rec["tenantId"] == "tenant-B", rec
    assert rec["record"]["status"] == "error", rec
    assert rec["record"]["errorType"] == "Runtime.ImportModuleError", rec
    assert rec["record"]["phase"] == "init" and rec["record"]["metrics"]["durationMs"] > 0, rec
    b_types = [json.loads(e["message"]).get("type") for e in
               all_events(admin, "/aws/lambda/initfail", filterPattern='{ $.tenantId = "tenant-B" }')]
    assert "platform.initStart" in b_types and "platform.report" in b_types, b_types
    only_b = all_events(admin, "/aws/lambda/jsonlog", filterPattern='{ $.tenantId = "tenant-B" }')
    assert only_b and all(json.loads(e["message"])["tenantId"] == "tenant-B" for e in only_b), only_b

    # tenant-A's key: its own events only, whatever it asks.
    mine = all_events(tenant_a, "/aws/lambda/printer")
    assert len(mine) == len(a_events), (len(mine), len(a_events))
    for pattern in ['{ $.tenantId = "tenant-B" }', '{ $.tenantId != "tenant-A" }', "tenant-B",
                    "flood", '{ $.tenantId = "tenant-A" || $.tenantId = "tenant-B" }',
                    '{ $.tenantId = * }', '?tenant-A ?tenant-B']:
        got = all_events(tenant_a, "/aws/lambda/printer", filterPattern=pattern)
        assert not any("tenant=tenant-B" in e["message"] for e in got), (pattern, got[:3])
        assert all(e["logStreamName"] == a_stream for e in got), (pattern, got[:3])
    got = all_events(tenant_a, "/aws/lambda/printer", logStreamNames=[b_stream])
    assert got == [], got[:3]
    ev = tenant_a.get_log_events(logGroupName="/aws/lambda/printer", logStreamName=b_stream,
                                 startFromHead=True)["events"]
    assert ev == [], ev[:3]
    ev = tenant_a.get_log_events(logGroupName="/aws/lambda/printer", logStreamName=b_stream)["events"]
    assert ev == [], ev[:3]
    seen = [s["logStreamName"] for s in tenant_a.describe_log_streams(logGroupName="/aws/lambda/printer")["logStreams"]]
    assert seen == [a_stream], seen
    jl = all_events(tenant_a, "/aws/lambda/jsonlog")
    assert jl and all(json.loads(e["message"])["tenantId"] == "tenant-A" for e in jl), jl
    try:
        tenant_a.put_retention_policy(logGroupName="/aws/lambda/printer", retentionInDays=1)
        raise AssertionError("a tenant key set a retention policy")
    except botocore.exceptions.ClientError as e:
        assert e.response["Error"]["Code"] == "AccessDeniedException", e.response
    admin.put_retention_policy(logGroupName="/aws/lambda/printer", retentionInDays=30)
    g = admin.describe_log_groups(logGroupNamePrefix="/aws/lambda/printer")["logGroups"][0]
    assert g["retentionInDays"] == 30, g

    # The AWS CLI reads the same.
    aws = shutil.which("aws")
    assert aws, "the AWS CLI is not installed (.ci/run installs awscli)"
    env = dict(os.environ, AWS_ACCESS_KEY_ID=os.environ["TENANT_A_KEY"],
               AWS_SECRET_ACCESS_KEY=os.environ["TENANT_A_SECRET"], AWS_DEFAULT_REGION="us-east-1")
    env.pop("AWS_PROFILE", None)
    out = subprocess.run([aws, "logs", "filter-log-events", "--endpoint-url", os.environ["SILO_ENDPOINT"],
                          "--log-group-name", "/aws/lambda/printer", "--filter-pattern", "marker",
                          "--output", "json"], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    cli = [e["message"] for e in json.loads(out.stdout)["events"]]
    assert any(m == "hello tenant=tenant-A marker=m-A1" for m in cli), cli
    assert not any("tenant-B" in m for m in cli), cli
    print("COUNT_A", len(a_events), flush=True)
    print("LOGS_WRITE_OK", flush=True)


def phase_after_restart():
    admin = logs_client(os.environ["ADMIN_KEY"], os.environ["ADMIN_SECRET"])
    a_events = tenant_a_events(admin)
    text = [e["message"] for e in a_events]
    for marker in ["m-A1", "m-A2", "m-A3"]:
        assert f"hello tenant=tenant-A marker={marker}" in text, text
    g = admin.describe_log_groups(logGroupNamePrefix="/aws/lambda/printer")["logGroups"][0]
    assert g["retentionInDays"] == 30, g
    print("COUNT_A", len(a_events), flush=True)
    print("LOGS_RESTART_OK", flush=True)


if __name__ == "__main__":
    {"write": phase_write, "after-restart": phase_after_restart}[os.environ["PHASE"]]()
