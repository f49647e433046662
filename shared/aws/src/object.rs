//! JSON records in S3: one reader and one writer for every adapter, with the conditional writes
//! (If-None-Match, If-Match on the ETag) that make state changes safe between concurrent writers.

use aws_sdk_s3::error::{DisplayErrorContext, SdkError};
use aws_sdk_s3::operation::get_object::GetObjectError;
use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::Client;
use lmaas_core::StoreError;
use serde::de::DeserializeOwned;
use serde::Serialize;

/// When a write may happen.
pub(crate) enum Write<'a> {
    Always,
    /// Only if no object exists at the key.
    IfAbsent,
    /// Only if the object is still at this ETag.
    IfUnchanged(&'a str),
}

/// Reads and parses a JSON object with its ETag; `None` if there is no such key.
pub(crate) async fn get_json<T: DeserializeOwned>(
    client: &Client,
    bucket: &str,
    key: &str,
) -> Result<Option<(T, String)>, StoreError> {
    match client.get_object().bucket(bucket).key(key).send().await {
        Ok(object) => {
            let etag = object.e_tag().unwrap_or_default().to_string();
            let body =
                object.body.collect().await.map_err(|e| StoreError(format!("reading s3://{bucket}/{key}: {e}")))?;
            let value = serde_json::from_slice(&body.into_bytes())
                .map_err(|e| StoreError(format!("s3://{bucket}/{key} is not a valid record: {e}")))?;
            Ok(Some((value, etag)))
        }
        Err(SdkError::ServiceError(e)) if matches!(e.err(), GetObjectError::NoSuchKey(_)) => Ok(None),
        Err(e) => Err(StoreError(format!("getting s3://{bucket}/{key}: {}", DisplayErrorContext(&e)))),
    }
}

/// Writes a JSON object; `false` when the condition did not hold (412).
pub(crate) async fn put_json<T: Serialize>(
    client: &Client,
    bucket: &str,
    key: &str,
    value: &T,
    write: Write<'_>,
) -> Result<bool, StoreError> {
    let body = serde_json::to_vec_pretty(value).map_err(|e| StoreError(e.to_string()))?;
    let request =
        client.put_object().bucket(bucket).key(key).content_type("application/json").body(ByteStream::from(body));
    let request = match write {
        Write::Always => request,
        Write::IfAbsent => request.if_none_match("*"),
        Write::IfUnchanged(etag) => request.if_match(etag),
    };
    match request.send().await {
        Ok(_) => Ok(true),
        Err(SdkError::ServiceError(e)) if e.raw().status().as_u16() == 412 => Ok(false),
        Err(e) => Err(StoreError(format!("writing s3://{bucket}/{key}: {}", DisplayErrorContext(&e)))),
    }
}
