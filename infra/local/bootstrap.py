"""Create the local stack's AWS resources on the emulator: the bucket, the jobs queue and its DLQ,
and the ingest queue that the bucket notifies when an object is created under batch/.

Usage: bootstrap.py --bucket B --queue NAME --ingest-queue NAME
Prints the jobs queue URL and the ingest queue URL, one per line. Idempotent: existing resources
are reused. Both queues redrive to NAME-dlq after 5 receives, as in production (DESIGN.md section 4).
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
    parser.add_argument("--ingest-queue", required=True)
    args = parser.parse_args()
    region = os.environ.get("AWS_REGION", "us-east-1")
    s3 = boto3.client("s3", region_name=region, config=Config(s3={"addressing_style": "path"}))
    sqs = boto3.client("sqs", region_name=region)
    s3.create_bucket(Bucket=args.bucket)
    queue_url = queue_with_dlq(sqs, args.queue, visibility=60)
    ingest_url = queue_with_dlq(sqs, args.ingest_queue, visibility=30)
    ingest_arn = sqs.get_queue_attributes(QueueUrl=ingest_url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
    # S3 -> SQS for batch uploads; S3 first sends an s3:TestEvent, which ingest skips.
    s3.put_bucket_notification_configuration(
        Bucket=args.bucket,
        NotificationConfiguration={"QueueConfigurations": [{
            "QueueArn": ingest_arn,
            "Events": ["s3:ObjectCreated:*"],
            "Filter": {"Key": {"FilterRules": [{"Name": "prefix", "Value": "batch/"}]}},
        }]},
    )
    print(queue_url)
    print(ingest_url)


def queue_with_dlq(sqs, name: str, visibility: int) -> str:
    dlq_url = sqs.create_queue(QueueName=f"{name}-dlq")["QueueUrl"]
    dlq_arn = sqs.get_queue_attributes(QueueUrl=dlq_url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
    redrive = json.dumps({"deadLetterTargetArn": dlq_arn, "maxReceiveCount": "5"})
    attributes = {"RedrivePolicy": redrive, "VisibilityTimeout": str(visibility)}
    return sqs.create_queue(QueueName=name, Attributes=attributes)["QueueUrl"]


if __name__ == "__main__":
    main()
