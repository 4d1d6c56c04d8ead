"""A real AWS client against `silo serve`: boto3 from PyPI with endpoint_url.

Creates a PER_TENANT function, invokes it with TenantId as two tenants, checks
isolation through the function's /tmp counter, and checks the errors for a
missing tenant and a key restricted to another tenant. Run by
tests/boto3_client.rs with SILO_ENDPOINT, the keys and COUNTER_BINARY set.
"""

import io
import json
import os
import sys
import zipfile

import boto3
import botocore.config
import botocore.exceptions


def client(key, secret):
    return boto3.client(
        "lambda",
        endpoint_url=os.environ["SILO_ENDPOINT"],
        region_name="us-east-1",
        aws_access_key_id=key,
        aws_secret_access_key=secret,
        config=botocore.config.Config(
            retries={"max_attempts": 0}, read_timeout=600, connect_timeout=30
        ),
    )


def package(path):
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
        info = zipfile.ZipInfo("bootstrap")
        info.external_attr = 0o755 << 16
        with open(path, "rb") as f:
            z.writestr(info, f.read())
    return buf.getvalue()


def count(lam, tenant):
    r = lam.invoke(FunctionName="counter", TenantId=tenant, Payload=b"{}")
    assert r["StatusCode"] == 200, r
    assert "FunctionError" not in r, r
    body = json.loads(r["Payload"].read())
    assert body["tenant_id"] == tenant, body
    return body["count"]


def expect_error(call, code, text):
    try:
        call()
    except botocore.exceptions.ClientError as e:
        err = e.response["Error"]
        assert err["Code"] == code, err
        assert text in err["Message"], err
        return
    raise AssertionError(f"expected {code}")


def main():
    admin = client(os.environ["ADMIN_KEY"], os.environ["ADMIN_SECRET"])
    created = admin.create_function(
        FunctionName="counter",
        Runtime="provided.al2023",
        Role="arn:aws:iam::000000000000:role/counter",
        Handler="bootstrap",
        Code={"ZipFile": package(os.environ["COUNTER_BINARY"])},
        Timeout=30,
        TenancyConfig={"TenantIsolationMode": "PER_TENANT"},
    )
    assert created["State"] == "Active", created
    assert created["TenancyConfig"]["TenantIsolationMode"] == "PER_TENANT", created
    admin.get_waiter("function_active_v2").wait(FunctionName="counter")
    got = admin.get_function(FunctionName="counter")
    assert got["Configuration"]["FunctionArn"] == created["FunctionArn"]
    names = [f["FunctionName"] for f in admin.list_functions()["Functions"]]
    assert names == ["counter"], names

    counts = [count(admin, "tenant-A"), count(admin, "tenant-A"), count(admin, "tenant-B")]
    print("counts", counts)
    assert counts == [1, 2, 1], counts

    expect_error(
        lambda: admin.invoke(FunctionName="counter", Payload=b"{}"),
        "InvalidParameterValueException",
        "Add a valid tenant ID in your request and try again.",
    )
    tenant_a = client(os.environ["TENANT_A_KEY"], os.environ["TENANT_A_SECRET"])
    assert count(tenant_a, "tenant-A") == 3
    expect_error(
        lambda: tenant_a.invoke(FunctionName="counter", TenantId="tenant-B", Payload=b"{}"),
        "AccessDeniedException",
        "tenant-B",
    )
    r = admin.invoke(
        FunctionName="counter", TenantId="tenant-B", Payload=b"{}", LogType="Tail"
    )
    assert "REPORT RequestId" in __import__("base64").b64decode(r["LogResult"]).decode()
    admin.delete_function(FunctionName="counter")
    expect_error(
        lambda: admin.get_function(FunctionName="counter"),
        "ResourceNotFoundException",
        "counter",
    )
    print("BOTO3_OK")


if __name__ == "__main__":
    try:
        main()
    except Exception as e:  # noqa: BLE001 - report anything and fail
        print(f"FAILED: {e!r}", file=sys.stderr)
        raise
