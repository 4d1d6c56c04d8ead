"""Helpers shared by the boto3 scripts of the managed runtimes
(boto3_python_runtime.py, boto3_nodejs_runtime.py): an admin Lambda client
for silo (SILO_ENDPOINT, ADMIN_KEY, ADMIN_SECRET), zips, CreateFunction and
Invoke with the checks every call makes.
"""

import base64
import io
import json
import os
import time
import zipfile

import boto3
import botocore.config


def client():
    """An admin Lambda client of the daemon at SILO_ENDPOINT, no retries."""
    return boto3.client(
        "lambda",
        endpoint_url=os.environ["SILO_ENDPOINT"],
        region_name="us-east-1",
        aws_access_key_id=os.environ["ADMIN_KEY"],
        aws_secret_access_key=os.environ["ADMIN_SECRET"],
        config=botocore.config.Config(
            retries={"max_attempts": 0}, read_timeout=900, connect_timeout=30
        ),
    )


def package(files):
    """A zip of {path: text or bytes}."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
        for name, data in sorted(files.items()):
            z.writestr(name, data)
    return buf.getvalue()


def create_function(lam, name, runtime, handler, files, timeout, memory, tenant=True):
    """Creates function `name` on `runtime` from `files` ({path: text or
    bytes}), per tenant unless `tenant` is false; checks the answer and
    waits until it is active."""
    kw = {}
    if tenant:
        kw["TenancyConfig"] = {"TenantIsolationMode": "PER_TENANT"}
    r = lam.create_function(
        FunctionName=name,
        Runtime=runtime,
        Role="arn:aws:iam::000000000000:role/" + name,
        Handler=handler,
        Code={"ZipFile": package(files)},
        Timeout=timeout,
        MemorySize=memory,
        **kw,
    )
    assert r["Runtime"] == runtime, r
    assert r["Handler"] == handler, r
    lam.get_waiter("function_active_v2").wait(FunctionName=name)
    return r


def invoke(lam, name, tenant, payload=b"{}", tail=False):
    """Invokes `name` as `tenant`, with its log tail if `tail`: the answer,
    its JSON body and the log ("" without `tail`); prints how long it took."""
    kw = {"LogType": "Tail"} if tail else {}
    t = time.monotonic()
    r = lam.invoke(FunctionName=name, TenantId=tenant, Payload=payload, **kw)
    elapsed = time.monotonic() - t
    assert r["StatusCode"] == 200, r
    body = json.loads(r["Payload"].read())
    log = base64.b64decode(r["LogResult"]).decode() if tail else ""
    print(f"invoke {name} {tenant}: {elapsed:.2f} s", flush=True)
    return r, body, log


def expect_function_error(r, body, error_type, text):
    """Checks that `r`, `body` is an unhandled function error of
    `error_type` whose message contains `text`."""
    assert r.get("FunctionError") == "Unhandled", (r, body)
    assert body["errorType"] == error_type, body
    assert text in body["errorMessage"], body


def lam_invoke_plain(lam, name):
    """Invokes `name` with no tenant (a function not in tenant isolation
    mode): the answer, its JSON body and no log."""
    r = lam.invoke(FunctionName=name, Payload=b"{}")
    assert r["StatusCode"] == 200, r
    return r, json.loads(r["Payload"].read()), ""


def metrics():
    """The daemon's `GET /metrics` text, signed with the admin key."""
    import urllib.request

    from botocore.auth import SigV4Auth
    from botocore.awsrequest import AWSRequest
    from botocore.credentials import Credentials

    url = os.environ["SILO_ENDPOINT"].rstrip("/") + "/metrics"
    req = AWSRequest(method="GET", url=url)
    creds = Credentials(os.environ["ADMIN_KEY"], os.environ["ADMIN_SECRET"])
    SigV4Auth(creds, "lambda", "us-east-1").add_auth(req)
    r = urllib.request.Request(url, headers=dict(req.headers.items()))
    with urllib.request.urlopen(r, timeout=60) as resp:
        return resp.read().decode()


def metric(text, name, labels):
    """The value of `name{labels}` in a /metrics text, or None."""
    prefix = f"{name}{{{labels}}} "
    for line in text.splitlines():
        if line.startswith(prefix):
            return float(line[len(prefix):])
    return None


def wait_for_balloon_reports(function, limit_s=240):
    """Polls /metrics until the function's idle VMs have reported free
    pages to their balloons (the agent's idle reclaim, then the guest's
    free page reporting); returns the text then, fails after `limit_s`."""
    labels = f'function="{function}",state="idle"'
    deadline = time.time() + limit_s
    while True:
        text = metrics()
        reports = metric(text, "silo_balloon_reports", labels)
        if reports and reports > 0:
            return text
        if time.time() > deadline:
            raise AssertionError(f"no balloon report from {function}'s idle VMs:\n{text}")
        time.sleep(2)
