//! The worker as a Lambda function behind an SQS event source mapping (with
//! `ReportBatchItemFailures`): each record's job runs until done or until the invocation's time is
//! nearly out; then it stops at a chunk boundary, and its message is reported as a failure so SQS
//! delivers it again and the next invocation resumes after the last finished chunk.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use lambda_runtime::{service_fn, LambdaEvent};
use lmaas_api::WorkerConfig;
use serde::Deserialize;
use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;

use crate::queue::{self, QueueSettings};
use crate::{Delivery, JobRunner, Outcome};

#[derive(Deserialize)]
struct SqsEvent {
    #[serde(rename = "Records", default)]
    records: Vec<SqsRecord>,
}

#[derive(Deserialize)]
struct SqsRecord {
    #[serde(rename = "messageId")]
    message_id: String,
    #[serde(rename = "receiptHandle", default)]
    receipt_handle: String,
    body: String,
    #[serde(default)]
    attributes: Value,
}

struct Handler {
    runner: Arc<JobRunner>,
    sqs: aws_sdk_sqs::Client,
    queue_url: Option<String>,
    settings: QueueSettings,
}

/// Serves SQS events until the runtime stops the function.
pub async fn run(config: WorkerConfig) -> Result<(), lambda_runtime::Error> {
    let (runner, sqs) = crate::runner_from_env(&config).await;
    let settings = match &config.queue_url {
        Some(url) => queue::settings(&sqs, url).await.unwrap_or_else(|e| {
            tracing::warn!(error = %e, "using default queue settings");
            QueueSettings::default()
        }),
        None => QueueSettings::default(),
    };
    let handler = Arc::new(Handler { runner, sqs, queue_url: config.queue_url, settings });
    lmaas_api::lambda::keep_serving(|| {
        let handler = handler.clone();
        lambda_runtime::run(service_fn(move |event: LambdaEvent<Value>| {
            let handler = handler.clone();
            async move {
                let deadline = UNIX_EPOCH + Duration::from_millis(event.context.deadline);
                lmaas_api::telemetry::count_cold_start();
                let answer = handler.handle(event.payload, deadline).await;
                lmaas_api::telemetry::flush_metrics();
                Ok::<Value, lambda_runtime::Error>(answer)
            }
        }))
    })
    .await
}

impl Handler {
    async fn handle(&self, payload: Value, deadline: SystemTime) -> Value {
        let event: SqsEvent = match serde_json::from_value(payload) {
            Ok(event) => event,
            Err(e) => {
                tracing::error!(error = %e, "the worker was invoked with something that is not an SQS event");
                return json!({ "batchItemFailures": [] });
            }
        };
        // Stop with a fifth of the time (at least 10 s) left, so the current chunk can finish.
        let remaining = deadline.duration_since(SystemTime::now()).unwrap_or_default();
        let stop = CancellationToken::new();
        let timer = tokio::spawn({
            let stop = stop.clone();
            async move {
                tokio::time::sleep(remaining.saturating_sub((remaining / 5).max(Duration::from_secs(10)))).await;
                stop.cancel();
            }
        });
        let mut failures = Vec::new();
        for record in &event.records {
            let receive_count =
                record.attributes["ApproximateReceiveCount"].as_str().and_then(|c| c.parse().ok()).unwrap_or(1);
            let outcome = if stop.is_cancelled() {
                Outcome::Released
            } else {
                match queue::job_id(&record.body) {
                    Ok(id) => {
                        let delivery = Delivery { receive_count, max_receive: self.settings.max_receive };
                        self.runner.run(&id, delivery, &stop).await
                    }
                    Err(e) => {
                        tracing::error!(message_id = record.message_id, error = %e, "poison message");
                        Outcome::Retry(e)
                    }
                }
            };
            if outcome == Outcome::Released {
                if let Some(url) = &self.queue_url {
                    let _ = queue::set_visibility(&self.sqs, url, &record.receipt_handle, Duration::ZERO).await;
                }
            }
            if !matches!(outcome, Outcome::Done(_)) {
                failures.push(json!({ "itemIdentifier": record.message_id }));
            }
        }
        timer.abort();
        json!({ "batchItemFailures": failures })
    }
}
