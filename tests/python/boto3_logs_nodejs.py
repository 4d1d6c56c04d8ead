"""A Node.js function's console.log through boto3's `logs` client, in both
of Lambda's log formats: Text (`<time>\t<request id>\tINFO\t<message>`, as
the runtime client writes it) and JSON (the runtime client's records, with
`tenantId` from the daemon; console.debug under ApplicationLogLevel INFO
dropped). Run by tests/logs_nodejs_e2e.rs with SILO_ENDPOINT, ADMIN_KEY,
ADMIN_SECRET.
"""

import json
import os
import time

from boto3_logs import all_events, logs_client
from silo_lambda import client, create_function, invoke, package

TIMEOUT = int(os.environ.get("FUNCTION_TIMEOUT", "60"))
CODE = """
exports.handler = async (event, context) => {
  console.log(`hello tenant=${context.tenantId}`);
  console.debug(`debug tenant=${context.tenantId}`);
  return {};
};
"""


def wait_reports(logs, group, n):
    deadline = time.monotonic() + 60
    while True:
        ev = all_events(logs, group, filterPattern="REPORT")
        json_ev = all_events(logs, group, filterPattern='{ $.type = "platform.report" }')
        if len(ev) + len(json_ev) >= n or time.monotonic() > deadline:
            return


def main():
    lam = client()
    admin = logs_client(os.environ["ADMIN_KEY"], os.environ["ADMIN_SECRET"])
    create_function(lam, "nodetext", "nodejs22.x", "index.handler", {"index.js": CODE}, TIMEOUT, 256)
    lam.create_function(
        FunctionName="nodejson", Runtime="nodejs22.x", Role="arn:aws:iam::000000000000:role/n",
        Handler="index.handler", Code={"ZipFile": package({"index.js": CODE})}, Timeout=TIMEOUT,
        MemorySize=256, TenancyConfig={"TenantIsolationMode": "PER_TENANT"},
        LoggingConfig={"LogFormat": "JSON", "ApplicationLogLevel": "INFO"})
    lam.get_waiter("function_active_v2").wait(FunctionName="nodejson")
    ids = {}
    for name in ["nodetext", "nodejson"]:
        r, _, _ = invoke(lam, name, "tenant-A")
        ids[name] = r["ResponseMetadata"]["RequestId"]
    for name in ["nodetext", "nodejson"]:
        wait_reports(admin, "/aws/lambda/" + name, 1)

    text = [e["message"] for e in all_events(admin, "/aws/lambda/nodetext",
                                             filterPattern='{ $.tenantId = "tenant-A" }')]
    hello = [m for m in text if m.endswith("hello tenant=tenant-A")]
    assert hello, text
    parts = hello[0].split("\t")
    assert parts[1] == ids["nodetext"] and parts[2] == "INFO", parts
    assert any(m.startswith("REPORT RequestId: " + ids["nodetext"]) for m in text), text

    records = [json.loads(e["message"]) for e in all_events(admin, "/aws/lambda/nodejson")]
    info = [r for r in records if r.get("message") == "hello tenant=tenant-A"]
    assert len(info) == 1, records
    assert info[0]["level"] == "INFO" and info[0]["requestId"] == ids["nodejson"], info
    assert info[0]["tenantId"] == "tenant-A", info
    assert not any("debug tenant" in json.dumps(r) for r in records), records
    assert all(r.get("tenantId") == "tenant-A" for r in records), records
    assert any(r.get("type") == "platform.report" for r in records), records
    print("NODEJS_LOGS_OK", flush=True)


if __name__ == "__main__":
    main()
