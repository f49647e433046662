"""Seed model versions into S3 (e.g. the local moto emulator) in lmaas's storage layout.

Usage:
  seed_models.py --bucket B [--create-bucket] --name NAME [--version 1] [--task tensor|embeddings] DIR
  seed_models.py --bucket B [--create-bucket] --model NAME=DIR:VERSION:TASK [--model ...]

DIR holds model.onnx and optionally tokenizer.json / lmaas.json. For each model this uploads
every file of DIR to models/{name}/versions/{version}/files/{file}, then writes the manifest
models/{name}/versions/{version}/manifest.json (the commit point, so it goes after the files;
inputs/outputs are read from the ONNX graph), then models/{name}/aliases/latest.json.
Re-running overwrites (idempotent). S3 endpoint from AWS_ENDPOINT_URL (path-style), region
from AWS_REGION (default us-east-1), credentials from the usual AWS_* environment variables.
"""
import argparse
import datetime
import hashlib
import json
import os

import boto3
import onnx
from botocore.config import Config
from onnx import TensorProto as T

V2 = {T.FLOAT: "FP32", T.FLOAT16: "FP16", T.BFLOAT16: "BF16", T.DOUBLE: "FP64",
      T.INT8: "INT8", T.INT16: "INT16", T.INT32: "INT32", T.INT64: "INT64",
      T.UINT8: "UINT8", T.UINT16: "UINT16", T.UINT32: "UINT32", T.UINT64: "UINT64",
      T.BOOL: "BOOL", T.STRING: "BYTES"}


def tensor_specs(values) -> list:
    """ONNX ValueInfos -> [{"name", "datatype", "shape"}]; symbolic/unknown dims become -1."""
    specs = []
    for v in values:
        t = v.type.tensor_type
        shape = [d.dim_value if d.HasField("dim_value") else -1 for d in t.shape.dim]
        specs.append({"name": v.name, "datatype": V2[t.elem_type], "shape": shape})
    return specs


def seed(s3, bucket: str, name: str, version: int, task: str, model_dir: str) -> None:
    prefix = f"models/{name}/versions/{version}/"
    files = {}
    for fname in sorted(os.listdir(model_dir)):
        path = os.path.join(model_dir, fname)
        if not os.path.isfile(path):
            continue
        with open(path, "rb") as f:
            body = f.read()
        s3.put_object(Bucket=bucket, Key=prefix + "files/" + fname, Body=body)
        files[fname] = {"sha256": hashlib.sha256(body).hexdigest(), "size": len(body)}
    graph = onnx.load(os.path.join(model_dir, "model.onnx"), load_external_data=False).graph
    initializers = {i.name for i in graph.initializer}
    manifest = {
        "name": name, "version": version, "state": "ready", "task": task, "platform": "onnxruntime_onnx",
        "files": files,
        "inputs": tensor_specs(i for i in graph.input if i.name not in initializers),
        "outputs": tensor_specs(graph.output),
        "created_at": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "config": {}, "acl": {},
    }
    put_json(s3, bucket, prefix + "manifest.json", manifest)
    put_json(s3, bucket, f"models/{name}/aliases/latest.json", {"version": version})
    print(f"seeded s3://{bucket}/{prefix} ({', '.join(files)})")


def put_json(s3, bucket: str, key: str, doc: dict) -> None:
    s3.put_object(Bucket=bucket, Key=key, Body=json.dumps(doc, indent=2).encode(), ContentType="application/json")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bucket", required=True)
    ap.add_argument("--create-bucket", action="store_true", help="create the bucket first (if missing)")
    ap.add_argument("--name")
    ap.add_argument("--version", type=int, default=1)
    ap.add_argument("--task", choices=["tensor", "embeddings"], default="tensor")
    ap.add_argument("--model", action="append", default=[], metavar="NAME=DIR:VERSION:TASK")
    ap.add_argument("dir", nargs="?")
    args = ap.parse_args()

    jobs = []
    if args.name or args.dir:
        if not (args.name and args.dir):
            ap.error("--name and DIR go together")
        jobs.append((args.name, args.version, args.task, args.dir))
    for spec in args.model:
        name, _, rest = spec.partition("=")
        model_dir, version, task = rest.rsplit(":", 2)
        if task not in ("tensor", "embeddings"):
            ap.error(f"bad task in --model {spec}")
        jobs.append((name, int(version), task, model_dir))
    if not jobs:
        ap.error("nothing to seed: give --name NAME DIR or --model NAME=DIR:VERSION:TASK")

    s3 = boto3.client("s3", endpoint_url=os.environ.get("AWS_ENDPOINT_URL"),
                      region_name=os.environ.get("AWS_REGION", "us-east-1"),
                      config=Config(s3={"addressing_style": "path"}))
    if args.create_bucket:
        try:
            s3.create_bucket(Bucket=args.bucket)
        except s3.exceptions.BucketAlreadyOwnedByYou:
            pass
    for job in jobs:
        seed(s3, args.bucket, *job)


if __name__ == "__main__":
    main()
