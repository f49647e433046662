"""Local stand-in for a Lambda SQS event source mapping (with ReportBatchItemFailures).

Usage: event_source.py --queue-url URL --function NAME --invoke-url http://127.0.0.1:9000

Long-polls the queue, invokes the function under `cargo lambda watch` through the Lambda Invoke
API with the same SQS event AWS would send, then deletes every message the function did not list
in `batchItemFailures`. If an invocation fails, nothing is deleted: the messages come back after
their visibility timeout, as on AWS. Runs until killed.
"""
import argparse
import json
import os
import sys
import time
import urllib.request

import boto3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--queue-url", required=True)
    parser.add_argument("--function", required=True)
    parser.add_argument("--invoke-url", required=True)
    args = parser.parse_args()
    region = os.environ.get("AWS_REGION", "us-east-1")
    sqs = boto3.client("sqs", region_name=region)
    arn = sqs.get_queue_attributes(QueueUrl=args.queue_url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
    invoke = f"{args.invoke_url}/2015-03-31/functions/{args.function}/invocations"
    while True:
        messages = sqs.receive_message(
            QueueUrl=args.queue_url, MaxNumberOfMessages=10, WaitTimeSeconds=5, AttributeNames=["All"]
        ).get("Messages", [])
        if not messages:
            continue
        event = {"Records": [record(m, arn, region) for m in messages]}
        try:
            request = urllib.request.Request(invoke, data=json.dumps(event).encode(), method="POST")
            with urllib.request.urlopen(request, timeout=120) as response:
                answer = json.loads(response.read() or b"{}")
        except Exception as e:  # the function failed: SQS redelivers after the visibility timeout
            print(f"[event-source] invoking {args.function} failed: {e}", file=sys.stderr, flush=True)
            time.sleep(1)
            continue
        failed = {f["itemIdentifier"] for f in (answer or {}).get("batchItemFailures", [])}
        done = [m for m in messages if m["MessageId"] not in failed]
        for m in done:
            sqs.delete_message(QueueUrl=args.queue_url, ReceiptHandle=m["ReceiptHandle"])
        print(f"[event-source] {args.function}: {len(done)} done, {len(failed)} to retry", file=sys.stderr, flush=True)


def record(message: dict, arn: str, region: str) -> dict:
    return {
        "messageId": message["MessageId"],
        "receiptHandle": message["ReceiptHandle"],
        "body": message["Body"],
        "attributes": message.get("Attributes", {}),
        "messageAttributes": {},
        "md5OfBody": message["MD5OfBody"],
        "eventSource": "aws:sqs",
        "eventSourceARN": arn,
        "awsRegion": region,
    }


if __name__ == "__main__":
    main()
