"""The launch post's counter function in Node.js on silo, through boto3.

Deploys tests/nodejs/launch_post/index.js as a zip with Runtime nodejs22.x
and Handler index.handler in tenant isolation mode; invokes tenant-A,
tenant-A, tenant-B and reads the request counts 1, 2, 1 from the function's
response body, and the tenant id from its log lines (LogType Tail). Other
scenarios (SCENARIO): "errors" (Runtime.ImportModuleError and
Runtime.HandlerNotFound as Lambda reports them), "esm" (an ES module
handler, index.mjs; with DELIVERY=initramfs, first refused with too little
memory for the runtime, then created with the memory the refusal names),
"error_names" (errors whose name is not ASCII, or not even Latin-1, or holds
a line break, each an Unhandled function error naming it, not a timeout).
Run by tests/nodejs_runtime_e2e.rs with
SILO_ENDPOINT, ADMIN_KEY, ADMIN_SECRET.
"""

import json
import os
import re
import time

import botocore.exceptions

from silo_lambda import client, create_function, expect_function_error, invoke, lam_invoke_plain

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
# Measured in the KVM test host (TCG); a 10x margin for a loaded machine.
TIMEOUT = int(os.environ.get("FUNCTION_TIMEOUT", "60"))
MEMORY = int(os.environ.get("FUNCTION_MEMORY", "256"))


def counter_code():
    with open(os.path.join(ROOT, "nodejs", "launch_post", "index.js")) as f:
        return f.read()


def create(lam, name, handler, files, tenant=True, memory=None):
    """A nodejs22.x function: create_function with this script's timeout and
    `memory` (default FUNCTION_MEMORY)."""
    return create_function(lam, name, "nodejs22.x", handler, files, TIMEOUT,
                           memory or MEMORY, tenant)


def counter(lam):
    import json

    create(lam, "tenant-counter", "index.handler", {"index.js": counter_code()})
    counts = []
    for tenant in ["tenant-A", "tenant-A", "tenant-B"]:
        r, body, log = invoke(lam, "tenant-counter", tenant, tail=True)
        assert "FunctionError" not in r, body
        assert body["statusCode"] == 200, body
        inner = json.loads(body["body"])
        assert inner["message"] == f"File contents for {tenant} (isolated per tenant)", inner
        assert inner["file_data"]["tenant_id"] == tenant, inner
        n = inner["file_data"]["request_count"]
        counts.append(n)
        assert f"tenant={tenant} request_count={n}" in log, log
    print("LOG_TAIL_BEGIN\n" + log + "\nLOG_TAIL_END", flush=True)
    print("counts", counts, flush=True)
    assert counts == [1, 2, 1], counts


def errors(lam):
    create(lam, "no-module", "missing_file.handler",
           {"index.js": counter_code()}, tenant=False)
    r, body, _ = lam_invoke_plain(lam, "no-module")
    print("ImportModuleError:", body, flush=True)
    expect_function_error(r, body, "Runtime.ImportModuleError", "missing_file")
    assert isinstance(body.get("trace"), list), body
    create(lam, "no-handler", "index.nope",
           {"index.js": counter_code()}, tenant=False)
    r, body, _ = lam_invoke_plain(lam, "no-handler")
    print("HandlerNotFound:", body, flush=True)
    expect_function_error(r, body, "Runtime.HandlerNotFound", "index.nope")


def esm(lam):
    code = (
        "import { readFileSync } from 'node:fs';\n"
        "export const handler = async (event, context) => ({\n"
        "  module: 'esm', tenant: context.tenantId, request: context.awsRequestId,\n"
        "  left_ms: context.getRemainingTimeInMillis(), name: context.functionName,\n"
        "  node: process.version, echo: event,\n"
        "  os: readFileSync('/proc/version', 'utf8').split(' ')[0],\n"
        "});\n"
    )
    memory = MEMORY
    if os.environ.get("DELIVERY") == "initramfs":
        # Too little memory to unpack the runtime: refused at creation,
        # saying how much is enough; then created with that much.
        try:
            create(lam, "esm", "index.handler", {"index.mjs": code}, memory=256)
            raise AssertionError("256 MiB with the runtime in the initramfs was accepted")
        except botocore.exceptions.ClientError as e:
            err = e.response["Error"]
            print("refused:", err, flush=True)
            assert err["Code"] == "InvalidParameterValueException", err
            assert "runtime_delivery" in err["Message"], err
            memory = int(re.search(r"use MemorySize (\d+) or more", err["Message"]).group(1))
    create(lam, "esm", "index.handler", {"index.mjs": code}, memory=memory)
    r, body, _ = invoke(lam, "esm", "tenant-E", b'{"x": 1}')
    assert "FunctionError" not in r, body
    assert body["module"] == "esm" and body["tenant"] == "tenant-E", body
    assert body["name"] == "esm" and body["node"].startswith("v22."), body
    assert 0 < body["left_ms"] <= TIMEOUT * 1000, body
    assert body["echo"] == {"x": 1} and body["os"] == "Linux", body
    print(f"esm ({memory} MiB):", body, flush=True)


def error_names(lam):
    code = (
        "class \u9519\u8bef extends Error {\n"
        "  constructor(m) { super(m); this.name = new.target.name; }\n"
        "}\n"
        "exports.handler = async (event) => {\n"
        "  if (event.kind === 'class') throw new \u9519\u8bef('x');\n"
        "  const e = new Error('x');\n"
        "  e.name = event.name;\n"
        "  throw e;\n"
        "};\n"
    )
    create(lam, "error-names", "index.handler", {"index.js": code}, tenant=False)
    cases = [
        ({"kind": "name", "name": "\u9519\u8bef"}, "\u9519\u8bef"),
        ({"kind": "class"}, "\u9519\u8bef"),
        ({"kind": "name", "name": "\u00c9rreur"}, "\u00c9rreur"),
        ({"kind": "name", "name": "bad\nname"}, "bad\nname"),
    ]
    for event, name in cases:
        t = time.monotonic()
        r = lam.invoke(FunctionName="error-names", Payload=json.dumps(event).encode())
        elapsed = time.monotonic() - t
        body = json.loads(r["Payload"].read())
        print(f"error named {name!r}: {elapsed:.2f} s: {body}", flush=True)
        # A timeout is an Unhandled error too, of type Sandbox.Timedout.
        expect_function_error(r, body, name, "x")
        assert body["errorMessage"] == "x", body


def main():
    lam = client()
    scenario = os.environ.get("SCENARIO", "counter")
    {"counter": counter, "errors": errors, "esm": esm, "error_names": error_names}[scenario](lam)
    print("NODEJS_RUNTIME_OK", flush=True)


if __name__ == "__main__":
    main()
