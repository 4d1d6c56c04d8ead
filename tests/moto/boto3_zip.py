"""Writes a Lambda zip: HANDLER (as lambda_function.py) with this Python's
boto3 and its dependencies vendored (the python3.11 runtime image has no
AWS SDK, as Lambda's zips that pin their own), botocore's service models cut
to STS and S3 so the unpacked function stays a few MB.

Usage: boto3_zip.py HANDLER OUT
"""
import os
import sys
import zipfile

import boto3, botocore, dateutil, jmespath, s3transfer, six, urllib3  # noqa: E401

handler, out = sys.argv[1], sys.argv[2]
keep_models = {"sts", "s3"}


def wanted(rel):
    parts = rel.split(os.sep)
    if "__pycache__" in parts:
        return False
    if parts[:2] == ["botocore", "data"] and len(parts) > 3:
        return parts[2] in keep_models
    if parts[:2] == ["boto3", "data"]:
        return False
    return True


with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as z:
    z.write(handler, "lambda_function.py")
    for mod in (boto3, botocore, dateutil, jmespath, s3transfer, urllib3):
        root = os.path.dirname(mod.__file__)
        base = os.path.dirname(root)
        for d, _, files in os.walk(root):
            for f in files:
                full = os.path.join(d, f)
                rel = os.path.relpath(full, base)
                if wanted(rel):
                    z.write(full, rel)
    z.write(six.__file__, "six.py")
print(os.path.getsize(out))
