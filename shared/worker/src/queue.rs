//! The jobs queue as a worker sees it: message bodies, receive counts, the queue's own settings,
//! and what each outcome does to the message.

use std::time::Duration;

use aws_sdk_sqs::error::DisplayErrorContext;
use aws_sdk_sqs::types::QueueAttributeName;
use lmaas_core::jobs::JobId;
use serde::Deserialize;

use crate::Outcome;

/// The settings a worker needs from the queue (read once at start).
#[derive(Debug, Clone, Copy)]
pub struct QueueSettings {
    pub visibility: Duration,
    /// Receives before SQS moves a message to the DLQ (DESIGN.md: 5).
    pub max_receive: u32,
}

impl Default for QueueSettings {
    fn default() -> Self {
        QueueSettings { visibility: Duration::from_secs(60), max_receive: 5 }
    }
}

/// Reads the visibility timeout and the redrive policy's maxReceiveCount from SQS.
pub async fn settings(sqs: &aws_sdk_sqs::Client, queue_url: &str) -> Result<QueueSettings, String> {
    let attributes = sqs
        .get_queue_attributes()
        .queue_url(queue_url)
        .attribute_names(QueueAttributeName::VisibilityTimeout)
        .attribute_names(QueueAttributeName::RedrivePolicy)
        .send()
        .await
        .map_err(|e| format!("reading {queue_url}'s attributes: {}", DisplayErrorContext(&e)))?;
    let attributes = attributes.attributes().cloned().unwrap_or_default();
    let mut settings = QueueSettings::default();
    if let Some(seconds) = attributes.get(&QueueAttributeName::VisibilityTimeout).and_then(|v| v.parse().ok()) {
        settings.visibility = Duration::from_secs(seconds);
    }
    let policy: Option<serde_json::Value> =
        attributes.get(&QueueAttributeName::RedrivePolicy).and_then(|p| serde_json::from_str(p).ok());
    match policy.as_ref().map(|p| &p["maxReceiveCount"]) {
        Some(serde_json::Value::Number(n)) => settings.max_receive = n.as_u64().unwrap_or(5) as u32,
        Some(serde_json::Value::String(s)) => settings.max_receive = s.parse().unwrap_or(5),
        _ => tracing::warn!(queue_url, "the jobs queue has no redrive policy: failing jobs retry forever"),
    }
    Ok(settings)
}

/// The URL of the queue's dead-letter queue (from its redrive policy), if it has one.
pub async fn dead_letter_queue(sqs: &aws_sdk_sqs::Client, queue_url: &str) -> Option<String> {
    let attributes = sqs
        .get_queue_attributes()
        .queue_url(queue_url)
        .attribute_names(QueueAttributeName::RedrivePolicy)
        .send()
        .await
        .ok()?;
    let policy: serde_json::Value =
        serde_json::from_str(attributes.attributes()?.get(&QueueAttributeName::RedrivePolicy)?).ok()?;
    let name = policy["deadLetterTargetArn"].as_str()?.rsplit(':').next()?.to_string();
    sqs.get_queue_url().queue_name(name).send().await.ok()?.queue_url().map(str::to_string)
}

/// Approximate number of visible messages in a queue.
pub async fn depth(sqs: &aws_sdk_sqs::Client, queue_url: &str) -> Result<u64, String> {
    let attributes = sqs
        .get_queue_attributes()
        .queue_url(queue_url)
        .attribute_names(QueueAttributeName::ApproximateNumberOfMessages)
        .send()
        .await
        .map_err(|e| DisplayErrorContext(&e).to_string())?;
    Ok(attributes
        .attributes()
        .and_then(|a| a.get(&QueueAttributeName::ApproximateNumberOfMessages))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Body {
    job_id: JobId,
}

/// The job a message names (`{"job_id"}` and nothing else).
pub fn job_id(body: &str) -> Result<JobId, String> {
    serde_json::from_str::<Body>(body).map(|b| b.job_id).map_err(|e| format!("not a jobs message: {e}"))
}

/// Delay before the next attempt after `receive_count` failures: doubling, capped.
pub fn backoff(receive_count: u32, base: Duration, max: Duration) -> Duration {
    base.saturating_mul(1 << receive_count.saturating_sub(1).min(16)).min(max)
}

/// Deletes, delays or releases a message according to its outcome.
pub async fn settle(
    sqs: &aws_sdk_sqs::Client,
    queue_url: &str,
    receipt: &str,
    outcome: &Outcome,
    retry_delay: Duration,
) {
    let result = match outcome {
        Outcome::Done(_) => sqs
            .delete_message()
            .queue_url(queue_url)
            .receipt_handle(receipt)
            .send()
            .await
            .map(|_| ())
            .map_err(|e| format!("deleting: {}", DisplayErrorContext(&e))),
        Outcome::Retry(_) | Outcome::Released => {
            let delay = if *outcome == Outcome::Released { Duration::ZERO } else { retry_delay };
            set_visibility(sqs, queue_url, receipt, delay).await
        }
    };
    if let Err(e) = result {
        // The message comes back after its visibility timeout; the job record decides what then.
        tracing::warn!(error = %e, "settling the message failed");
    }
}

pub async fn set_visibility(
    sqs: &aws_sdk_sqs::Client,
    queue_url: &str,
    receipt: &str,
    visibility: Duration,
) -> Result<(), String> {
    let seconds = i32::try_from(visibility.as_secs().min(43_200)).unwrap_or(43_200);
    sqs.change_message_visibility()
        .queue_url(queue_url)
        .receipt_handle(receipt)
        .visibility_timeout(seconds)
        .send()
        .await
        .map(|_| ())
        .map_err(|e| format!("changing visibility: {}", DisplayErrorContext(&e)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_carry_exactly_a_job_id() {
        let id = job_id(r#"{"job_id":"job_0123456789abcdef01234567"}"#).unwrap();
        assert_eq!(id.as_str(), "job_0123456789abcdef01234567");
        assert!(job_id(r#"{"job_id":"../x"}"#).is_err());
        assert!(job_id(r#"{"job_id":"job_0123456789abcdef01234567","x":1}"#).is_err());
        assert!(job_id("poison").is_err());
    }

    #[test]
    fn retries_back_off_doubling_up_to_the_cap() {
        let (base, max) = (Duration::from_secs(5), Duration::from_secs(60));
        let delays: Vec<u64> = (1..=6).map(|n| backoff(n, base, max).as_secs()).collect();
        assert_eq!(delays, vec![5, 10, 20, 40, 60, 60]);
    }
}
