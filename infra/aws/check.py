"""Offline checks of infra/aws/template.yaml against the code (run by `make lint` and `make test`).

1. Routes: the template's HttpApi events and the `cargo lambda watch` router in Cargo.toml are the
   same table (path, method, function), and exactly the open routes skip the authorizer.
2. Least privilege: each function's (and the fleet task's) IAM statements equal the reviewed table
   below, and every granted action is one the code that function runs actually calls (derived by
   scanning its AWS adapters for SDK operations). A grant without a caller fails; so does a policy
   change that nobody reviewed here.

Usage: check.py   (from any folder; needs cfn-lint, installed in .lmaas/infra-venv)
"""
import re
import sys
import tomllib
from pathlib import Path

from cfnlint.decode import decode

ROOT = Path(__file__).resolve().parents[2]
TEMPLATE = ROOT / "infra/aws/template.yaml"

# Routes that need no token (the V2 server metadata and health, DESIGN.md section 3).
OPEN_ROUTES = {("/v2", "GET"), ("/v2/health/live", "GET"), ("/v2/health/ready", "GET")}

# The reviewed grants: (action, resource) per principal. `bucket` is the lmaas bucket's ARN.
S3_READ_KEYS = {("s3:GetObject", "bucket/auth/keys/*")}
LIST = {("s3:ListBucket", "bucket")}
WORKER = {
    ("s3:GetObject", "bucket/*"),
    ("s3:PutObject", "bucket/results/*"),
    ("s3:DeleteObject", "bucket/results/*"),
    ("s3:PutObject", "bucket/jobs/*"),
    ("s3:PutObject", "bucket/models/*"),  # quantize and train_classifier publish versions
} | LIST
REVIEWED = {
    "authorizer": S3_READ_KEYS | LIST,
    "infer": {("s3:GetObject", "bucket/models/*")} | S3_READ_KEYS | LIST,
    "chat": {("s3:GetObject", "bucket/models/*")} | S3_READ_KEYS | LIST,
    "models": {("s3:GetObject", "bucket/models/*"), ("s3:PutObject", "bucket/models/*"),
               ("s3:DeleteObject", "bucket/models/*")} | S3_READ_KEYS | LIST,
    "jobs": {("s3:GetObject", "bucket/jobs/*"), ("s3:PutObject", "bucket/jobs/*"),
             ("s3:GetObject", "bucket/models/*"), ("sqs:SendMessage", "JobsQueue")} | S3_READ_KEYS | LIST,
    "ingest": {("s3:GetObject", "bucket/jobs/*"), ("s3:PutObject", "bucket/jobs/*"),
               ("s3:GetObject", "bucket/models/*"), ("sqs:SendMessage", "JobsQueue")} | LIST,
    # The Lambda worker's receive/delete come from SAM's SQS event source policy.
    "worker": WORKER | {("sqs:ChangeMessageVisibility", "JobsQueue"), ("sqs:GetQueueAttributes", "JobsQueue")},
    "fleet": WORKER | {
        (action, queue)
        for action in ("sqs:ReceiveMessage", "sqs:DeleteMessage", "sqs:ChangeMessageVisibility",
                       "sqs:GetQueueAttributes")
        for queue in ("JobsQueue", "JobsDeadLetterQueue")
    } | {("sqs:GetQueueUrl", "JobsDeadLetterQueue")},
}

# The AWS adapters each deployable's code path uses (object.rs is their shared JSON reader/writer).
OBJECT = "shared/aws/src/object.rs"
CODE = {
    "authorizer": [OBJECT, "shared/aws/src/keys.rs"],
    "infer": [OBJECT, "shared/aws/src/s3.rs", "shared/aws/src/keys.rs"],
    "chat": [OBJECT, "shared/aws/src/s3.rs", "shared/aws/src/keys.rs"],
    "models": [OBJECT, "shared/aws/src/s3.rs", "shared/aws/src/keys.rs"],
    "jobs": [OBJECT, "shared/aws/src/s3.rs", "shared/aws/src/keys.rs", "shared/aws/src/jobs.rs",
             "shared/aws/src/queue.rs"],
    "ingest": [OBJECT, "shared/aws/src/s3.rs", "shared/aws/src/jobs.rs", "shared/aws/src/queue.rs"],
    "worker": [OBJECT, "shared/aws/src/s3.rs", "shared/aws/src/jobs.rs", "shared/aws/src/batch.rs",
               "shared/worker/src/queue.rs", "shared/worker/src/lambda.rs"],
    "fleet": [OBJECT, "shared/aws/src/s3.rs", "shared/aws/src/jobs.rs", "shared/aws/src/batch.rs",
              "shared/worker/src/queue.rs", "shared/worker/src/daemon.rs"],
}

# SDK operation -> the IAM action it needs.
OPERATIONS = {
    "get_object": "s3:GetObject", "head_object": "s3:GetObject", "put_object": "s3:PutObject",
    "create_multipart_upload": "s3:PutObject", "upload_part": "s3:PutObject",
    "complete_multipart_upload": "s3:PutObject", "delete_object": "s3:DeleteObject",
    "list_objects_v2": "s3:ListBucket", "head_bucket": "s3:ListBucket",
    "send_message": "sqs:SendMessage", "receive_message": "sqs:ReceiveMessage",
    "delete_message": "sqs:DeleteMessage", "change_message_visibility": "sqs:ChangeMessageVisibility",
    "get_queue_attributes": "sqs:GetQueueAttributes", "get_queue_url": "sqs:GetQueueUrl",
}


def code_actions(files: list) -> set:
    actions = set()
    for file in files:
        text = (ROOT / file).read_text()
        for op in re.findall(r"\.([a-z_0-9]+)\(\)", text):
            if op in OPERATIONS:
                actions.add(OPERATIONS[op])
    return actions


def cargo_routes() -> set:
    cargo = tomllib.loads((ROOT / "Cargo.toml").read_text())
    routes = set()
    for route in cargo["workspace"]["metadata"]["lambda"]["watch"]["router"]:
        for method in route["methods"]:
            routes.add((route["path"], method.upper(), route["function"]))
    return routes


def resource_name(value) -> str:
    """`!Sub "${Bucket.Arn}/models/*"` -> `bucket/models/*`; `!GetAtt JobsQueue.Arn` -> `JobsQueue`."""
    if isinstance(value, dict) and "Fn::Sub" in value:
        return str(value["Fn::Sub"]).replace("${Bucket.Arn}", "bucket")
    if isinstance(value, dict) and "Fn::GetAtt" in value:
        target = value["Fn::GetAtt"]
        name = target[0] if isinstance(target, list) else str(target).split(".")[0]
        return "bucket" if name == "Bucket" else name
    return str(value)


def statements_grants(statements) -> set:
    grants = set()
    for statement in statements:
        if statement.get("Effect") != "Allow":
            continue
        actions = statement["Action"] if isinstance(statement["Action"], list) else [statement["Action"]]
        resources = statement["Resource"] if isinstance(statement["Resource"], list) else [statement["Resource"]]
        grants |= {(a, resource_name(r)) for a in actions for r in resources}
    return grants


def main() -> int:
    template, matches = decode(str(TEMPLATE))
    if matches:
        print("\n".join(str(m) for m in matches))
        return 1
    resources = template["Resources"]
    problems = []

    template_routes, open_routes, grants = set(), set(), {}
    for name, resource in resources.items():
        if resource["Type"] != "AWS::Serverless::Function":
            continue
        binary = resource["Metadata"]["BuildProperties"]["Binary"]
        grants[binary] = set()
        for policy in resource["Properties"].get("Policies", []):
            grants[binary] |= statements_grants(policy.get("Statement", []))
        for event in resource["Properties"].get("Events", {}).values():
            if event["Type"] != "HttpApi":
                continue
            key = (event["Properties"]["Path"], event["Properties"]["Method"].upper())
            template_routes.add(key + (binary,))
            if event["Properties"].get("Auth", {}).get("Authorizer") == "NONE":
                open_routes.add(key)
    fleet = resources["FleetTaskRole"]["Properties"]["Policies"]
    grants["fleet"] = set().union(*(statements_grants(p["PolicyDocument"]["Statement"]) for p in fleet))

    router = cargo_routes()
    for route in sorted(router - template_routes):
        problems.append(f"route {route} is in Cargo.toml's router but not in the template")
    for route in sorted(template_routes - router):
        problems.append(f"route {route} is in the template but not in Cargo.toml's router")
    if open_routes != OPEN_ROUTES:
        problems.append(f"routes without the authorizer are {sorted(open_routes)}, expected {sorted(OPEN_ROUTES)}")

    for principal, reviewed in REVIEWED.items():
        granted = grants.get(principal, set())
        for grant in sorted(granted - reviewed):
            problems.append(f"{principal}: {grant} is granted but not in the reviewed table")
        for grant in sorted(reviewed - granted):
            problems.append(f"{principal}: {grant} is in the reviewed table but not granted")
        called = code_actions(CODE[principal])
        for action in sorted({a for a, _ in granted} - called):
            problems.append(f"{principal}: {action} is granted but its code never calls it")
    for principal in sorted(set(grants) - set(REVIEWED)):
        problems.append(f"function {principal} has no reviewed IAM table")

    for problem in problems:
        print(f"check: {problem}")
    print(f"check: {len(router)} routes, {len(grants)} principals: {'FAILED' if problems else 'ok'}")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
