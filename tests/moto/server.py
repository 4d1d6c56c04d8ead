"""moto (PyPI) in server mode, as the tests' STS and S3, recording what it
receives: every AssumeRole request's form parameters and the access key id
that signed it go to RECORD (one JSON object per line), then moto answers
it as usual. moto itself is unchanged (its WSGI application, wrapped).

Usage: server.py HOST PORT RECORD [--auth-user KEYFILE]
  --auth-user: moto's IAM authorization on (INITIAL_NO_AUTH_ACTION_COUNT=2):
  the server first creates an IAM user with no policy and an access key for
  it (those are the two unauthenticated actions) and writes the key to
  KEYFILE as JSON; that user's calls (AssumeRole among them) are refused by
  moto with AccessDenied.
"""
import io
import json
import os
import sys
import threading
import urllib.parse

host, port, record = sys.argv[1], int(sys.argv[2]), sys.argv[3]
auth_keyfile = None
if len(sys.argv) > 5 and sys.argv[4] == "--auth-user":
    auth_keyfile = sys.argv[5]
    os.environ["INITIAL_NO_AUTH_ACTION_COUNT"] = "2"

from moto.server import DomainDispatcherApplication, create_backend_app  # noqa: E402
from werkzeug.serving import make_server  # noqa: E402

app = DomainDispatcherApplication(create_backend_app)
lock = threading.Lock()


def recorder(environ, start_response):
    length = int(environ.get("CONTENT_LENGTH") or 0)
    body = environ["wsgi.input"].read(length) if length else b""
    environ["wsgi.input"] = io.BytesIO(body)
    form = dict(urllib.parse.parse_qsl(body.decode("utf-8", "replace"), keep_blank_values=True))
    if form.get("Action") == "AssumeRole":
        auth = environ.get("HTTP_AUTHORIZATION", "")
        signer = auth.split("Credential=")[1].split("/")[0] if "Credential=" in auth else ""
        with lock, open(record, "a") as f:
            f.write(json.dumps({"signer": signer, "form": form}) + "\n")
    return app(environ, start_response)


server = make_server(host, port, recorder, threaded=True)
if auth_keyfile:
    import boto3

    def setup():
        iam = boto3.client("iam", endpoint_url=f"http://{host}:{port}", region_name="us-east-1",
                           aws_access_key_id="setup", aws_secret_access_key="setup")
        iam.create_user(UserName="no-assume")
        key = iam.create_access_key(UserName="no-assume")["AccessKey"]
        with open(auth_keyfile + ".tmp", "w") as f:
            json.dump({"id": key["AccessKeyId"], "secret": key["SecretAccessKey"]}, f)
        os.rename(auth_keyfile + ".tmp", auth_keyfile)

    threading.Thread(target=setup, daemon=True).start()
print(f"moto listening on {host}:{port}", flush=True)
server.serve_forever()
