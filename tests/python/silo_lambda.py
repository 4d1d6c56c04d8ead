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
