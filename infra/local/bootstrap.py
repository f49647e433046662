"""Create the local stack's AWS resources on the emulator: the bucket, the jobs queue and its DLQ.

Usage: bootstrap.py --bucket B --queue NAME
Prints the jobs queue URL on stdout. Idempotent: existing resources are reused. The queue
redrives to NAME-dlq after 5 receives, as in production (DESIGN.md section 4).
"""
import argparse
import json
import os

import boto3
from botocore.config import Config


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bucket", required=True)
    parser.add_argument("--queue", required=True)
    args = parser.parse_args()
    region = os.environ.get("AWS_REGION", "us-east-1")
    s3 = boto3.client("s3", region_name=region, config=Config(s3={"addressing_style": "path"}))
    sqs = boto3.client("sqs", region_name=region)
    s3.create_bucket(Bucket=args.bucket)
    dlq_url = sqs.create_queue(QueueName=f"{args.queue}-dlq")["QueueUrl"]
    dlq_arn = sqs.get_queue_attributes(QueueUrl=dlq_url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
    redrive = json.dumps({"deadLetterTargetArn": dlq_arn, "maxReceiveCount": "5"})
    queue_url = sqs.create_queue(QueueName=args.queue, Attributes={"RedrivePolicy": redrive, "VisibilityTimeout": "60"})["QueueUrl"]
    print(queue_url)


if __name__ == "__main__":
    main()
