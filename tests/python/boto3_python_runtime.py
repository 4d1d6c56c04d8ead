"""The launch post's Python function on silo, through boto3 (a real AWS SDK).

Deploys tests/python/launch_post/lambda_function.py, exactly as the launch
post shows it, as a zip with Runtime python3.11 and Handler
lambda_function.lambda_handler in tenant isolation mode; invokes tenant-A,
tenant-A, tenant-B and reads the request counts 1, 2, 1 from the function's
response body. Then: a function with a pure-Python dependency vendored in
its zip (jmespath, copied from this machine's boto3 installation) whose log
lines (LogType Tail) carry the tenant id; an exception as Lambda reports it;
Runtime.ImportModuleError and Runtime.HandlerNotFound; UpdateFunctionCode of
a Python function; an unknown runtime refused with the runtimes offered
(with SCENARIO=launch-post, only the launch post's part). Run by
tests/python_runtime_e2e.rs with SILO_ENDPOINT, ADMIN_KEY, ADMIN_SECRET.
"""

import json
import os

import botocore.exceptions
import jmespath
import silo_lambda

from silo_lambda import (client, create_function, expect_function_error, invoke,
                         lam_invoke_plain, package)

HERE = os.path.dirname(os.path.abspath(__file__))
# Measured in the KVM test host (TCG): the runtime's init 1.0 s (guest clock),
# a cold start to the first answer 3.0-3.3 s; 30 s leaves a 10x margin for a
# loaded CI machine.
TIMEOUT = int(os.environ.get("FUNCTION_TIMEOUT", "30"))


def launch_post_code():
    with open(os.path.join(HERE, "launch_post", "lambda_function.py")) as f:
        return f.read()


def vendored(package_module):
    """The files of an installed pure-Python package, for a zip."""
    root = os.path.dirname(package_module.__file__)
    base = os.path.dirname(root)
    files = {}
    for d, _, names in os.walk(root):
        for n in names:
            if n.endswith(".py"):
                p = os.path.join(d, n)
                with open(p, "rb") as f:
                    files[os.path.relpath(p, base)] = f.read()
    assert files, root
    return files


def create(lam, name, handler, files, tenant=True):
    """A python3.11 function: create_function with this script's timeout
    and FUNCTION_MEMORY."""
    return create_function(lam, name, "python3.11", handler, files, TIMEOUT,
                           int(os.environ.get("FUNCTION_MEMORY", "256")), tenant)


def main():
    lam = client()

    # The launch post, verbatim.
    create(lam, "tenant-counter", "lambda_function.lambda_handler",
           {"lambda_function.py": launch_post_code()})
    counts = []
    for tenant in ["tenant-A", "tenant-A", "tenant-B"]:
        r, body, _ = invoke(lam, "tenant-counter", tenant)
        assert "FunctionError" not in r, body
        assert body["statusCode"] == 200, body
        inner = json.loads(body["body"])
        assert inner["message"] == f"File contents for {tenant} (isolated per tenant)", inner
        assert inner["file_data"]["tenant_id"] == tenant, inner
        counts.append(inner["file_data"]["request_count"])
    print("counts", counts, flush=True)
    assert counts == [1, 2, 1], counts
    # Idle, the VMs give memory back: their guests report free pages to
    # the balloon, and /metrics shows it with the memory they hold.
    text = silo_lambda.wait_for_balloon_reports("tenant-counter")
    labels = 'function="tenant-counter",state="idle"'
    for name in ["silo_balloon_discarded_bytes", "silo_memory_held_bytes"]:
        v = silo_lambda.metric(text, name, labels)
        print(name, v, flush=True)
        assert v and v > 0, (name, text)
    assert (silo_lambda.metric(text, "silo_memory_vms", labels) or 0) >= 1, text
    if os.environ.get("SCENARIO") == "launch-post":
        print("PYTHON_RUNTIME_OK", flush=True)
        return

    # A vendored pure-Python dependency; the tenant in the log lines; an
    # exception with its stack trace.
    app = (
        "import jmespath\n"
        "import logging\n"
        "logging.getLogger().setLevel(logging.INFO)\n"
        "def handler(event, context):\n"
        "    print(f'tenant={context.tenant_id} request={context.aws_request_id}')\n"
        "    logging.info('searching for tenant %s', context.tenant_id)\n"
        "    if event.get('fail'):\n"
        "        raise KeyError('no such key for ' + context.tenant_id)\n"
        "    return {'tenant': context.tenant_id, 'found': jmespath.search('a.b', event),\n"
        "            'jmespath': jmespath.__file__}\n"
    )
    files = {"app.py": app}
    files.update(vendored(jmespath))
    create(lam, "vendored", "app.handler", files)
    r, body, log = invoke(lam, "vendored", "tenant-C", b'{"a": {"b": 42}}', tail=True)
    assert "FunctionError" not in r, body
    assert body["tenant"] == "tenant-C" and body["found"] == 42, body
    assert body["jmespath"].startswith("/var/task/jmespath/"), body
    assert "tenant=tenant-C" in log, log
    assert "searching for tenant tenant-C" in log, log
    print("LOG_TAIL_BEGIN\n" + log + "\nLOG_TAIL_END", flush=True)
    r, body, _ = invoke(lam, "vendored", "tenant-C", b'{"fail": true}')
    expect_function_error(r, body, "KeyError", "no such key for tenant-C")
    assert any("app.py" in line for line in body["stackTrace"]), body

    # Init errors as Lambda reports them.
    create(lam, "no-module", "missing_module.handler",
           {"lambda_function.py": launch_post_code()}, tenant=False)
    r, body, _ = lam_invoke_plain(lam, "no-module")
    expect_function_error(r, body, "Runtime.ImportModuleError",
                          "Unable to import module 'missing_module'")
    create(lam, "no-handler", "lambda_function.nope",
           {"lambda_function.py": launch_post_code()}, tenant=False)
    r, body, _ = lam_invoke_plain(lam, "no-handler")
    expect_function_error(r, body, "Runtime.HandlerNotFound", "nope")

    # New code for the launch post's function.
    new = launch_post_code().replace(
        "(isolated per tenant)", "(isolated per tenant, v2)")
    assert new != launch_post_code()
    lam.update_function_code(FunctionName="tenant-counter",
                             ZipFile=package({"lambda_function.py": new}))
    lam.get_waiter("function_updated_v2").wait(FunctionName="tenant-counter")
    r, body, _ = invoke(lam, "tenant-counter", "tenant-A")
    inner = json.loads(body["body"])
    assert inner["message"].endswith("(isolated per tenant, v2)"), inner
    assert inner["file_data"]["request_count"] == 1, inner

    # A runtime this daemon does not run.
    try:
        lam.create_function(
            FunctionName="node", Runtime="nodejs18.x", Role="r", Handler="index.handler",
            Code={"ZipFile": package({"index.js": "exports.handler = async () => 1;"})})
        raise AssertionError("nodejs18.x was accepted")
    except botocore.exceptions.ClientError as e:
        err = e.response["Error"]
        assert err["Code"] == "InvalidParameterValueException", err
        for offered in ["python3.11", "nodejs22.x", "provided.al2023"]:
            assert offered in err["Message"], err
    print("PYTHON_RUNTIME_OK", flush=True)


if __name__ == "__main__":
    main()
