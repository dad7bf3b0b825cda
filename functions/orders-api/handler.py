"""Orders API: return the summary of one order stored in the payments ledger bucket.

API Gateway (proxy integration) calls the function with the order ID as path parameter
``order_id``. Orders are JSON objects under ``orders/<order_id>.json`` in the bucket named
by the ``LEDGER_BUCKET`` environment variable.
"""

import json
import logging
import os
import re

import boto3

logger = logging.getLogger()
logger.setLevel(os.environ.get("LOG_LEVEL", "info").upper())

ORDER_ID_PATTERN = re.compile(r"^[A-Za-z0-9-]{1,64}$")
SUMMARY_FIELDS = ("order_id", "status", "currency", "total", "created_at")

s3 = boto3.client("s3")


def handler(event, context):
    """Look up the order named in the path and return its summary as an API Gateway proxy response.

    The status code is 400 for an invalid order ID and 404 when no such order is stored.
    """
    order_id = (event.get("pathParameters") or {}).get("order_id", "")
    if not ORDER_ID_PATTERN.match(order_id):
        return response(400, {"error": "order_id must be 1 to 64 letters, digits or hyphens"})

    key = f"orders/{order_id}.json"
    try:
        stored = s3.get_object(Bucket=os.environ["LEDGER_BUCKET"], Key=key)
    except s3.exceptions.NoSuchKey:
        logger.info("order not found: %s", order_id)
        return response(404, {"error": f"order {order_id} not found"})

    order = json.loads(stored["Body"].read())
    summary = {field: order.get(field) for field in SUMMARY_FIELDS}
    logger.debug("returning order %s with status %s", order_id, summary["status"])
    return response(200, summary)


def response(status_code, body):
    """Build an API Gateway proxy integration response with a JSON body."""
    return {
        "statusCode": status_code,
        "headers": {"Content-Type": "application/json"},
        "body": json.dumps(body),
    }
