//! The fleet daemon (`worker --daemon`): long-polls the jobs queue, runs up to
//! `LMAAS_WORKER_CONCURRENCY` jobs at once, keeps each message invisible while its job runs
//! (heartbeats), and on SIGTERM/SIGINT stops taking work, lets running jobs stop at their next
//! chunk boundary, releases their messages, and exits. Prometheus `/metrics` on
//! `LMAAS_METRICS_ADDR`.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use aws_sdk_sqs::error::DisplayErrorContext;
use aws_sdk_sqs::types::{Message, MessageSystemAttributeName};
use lmaas_api::WorkerConfig;
use lmaas_core::metrics as metric;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::queue::{self, QueueSettings};
use crate::{Delivery, JobRunner, Outcome};

/// SQS's longest long poll.
const WAIT_SECONDS: i32 = 20;

pub struct Daemon {
    runner: Arc<JobRunner>,
    sqs: aws_sdk_sqs::Client,
    queue_url: String,
    settings: QueueSettings,
    config: WorkerConfig,
}

/// Runs the daemon until SIGTERM or SIGINT.
pub async fn run(config: WorkerConfig) -> Result<(), String> {
    let queue_url = config.queue_url.clone().ok_or("the daemon needs LMAAS_JOBS_QUEUE_URL")?;
    if let Some(addr) = config.metrics_addr {
        lmaas_api::telemetry::serve_prometheus(addr, "worker")?;
    }
    let (runner, sqs) = crate::runner_from_env(&config).await;
    let settings = queue::settings(&sqs, &queue_url).await?;
    metrics::gauge!(metric::JOBS_RUNNING).set(0.0);
    runner.preload(&config.preload).await;
    tracing::info!(queue_url, concurrency = config.concurrency, ?settings, "worker daemon polling");
    let shutdown = CancellationToken::new();
    tokio::spawn(stop_on_signal(shutdown.clone()));
    tokio::spawn(watch_dlq(sqs.clone(), queue_url.clone()));
    Arc::new(Daemon { runner, sqs, queue_url, settings, config }).poll(shutdown).await;
    tracing::info!("worker daemon stopped");
    Ok(())
}

async fn stop_on_signal(shutdown: CancellationToken) {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut term), Ok(mut int)) = (signal(SignalKind::terminate()), signal(SignalKind::interrupt())) else {
        tracing::error!("cannot listen for SIGTERM/SIGINT");
        return;
    };
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM: finishing current chunks, taking no new work"),
        _ = int.recv() => tracing::info!("SIGINT: finishing current chunks, taking no new work"),
    }
    shutdown.cancel();
}

/// Reports the DLQ's depth every minute (the queue's redrive target), when it has one.
async fn watch_dlq(sqs: aws_sdk_sqs::Client, queue_url: String) {
    let Some(dlq_url) = queue::dead_letter_queue(&sqs, &queue_url).await else { return };
    loop {
        match queue::depth(&sqs, &dlq_url).await {
            Ok(depth) => metrics::gauge!(metric::DLQ_DEPTH).set(depth as f64),
            Err(e) => tracing::warn!(error = %e, "reading the DLQ depth failed"),
        }
        tokio::time::sleep(Duration::from_secs(60)).await;
    }
}

impl Daemon {
    async fn poll(self: Arc<Self>, shutdown: CancellationToken) {
        let mut running = JoinSet::new();
        'poll: while !shutdown.is_cancelled() {
            while running.len() >= self.config.concurrency {
                tokio::select! {
                    _ = running.join_next() => {}
                    _ = shutdown.cancelled() => break 'poll,
                }
            }
            let free = (self.config.concurrency - running.len()).min(10) as i32;
            let received = tokio::select! {
                received = self.receive(free) => received,
                _ = shutdown.cancelled() => break,
            };
            match received {
                Ok(messages) => {
                    for message in messages {
                        running.spawn(self.clone().handle(message, shutdown.clone()));
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, "receiving from the jobs queue failed; retrying in 5 s");
                    tokio::select! {
                        _ = tokio::time::sleep(Duration::from_secs(5)) => {}
                        _ = shutdown.cancelled() => break,
                    }
                }
            }
        }
        if !running.is_empty() {
            tracing::info!(jobs = running.len(), "waiting for running jobs to reach a chunk boundary");
        }
        while running.join_next().await.is_some() {}
    }

    async fn receive(&self, max: i32) -> Result<Vec<Message>, String> {
        let output = self
            .sqs
            .receive_message()
            .queue_url(&self.queue_url)
            .max_number_of_messages(max)
            .wait_time_seconds(WAIT_SECONDS)
            .message_system_attribute_names(MessageSystemAttributeName::ApproximateReceiveCount)
            .message_system_attribute_names(MessageSystemAttributeName::SentTimestamp)
            .send()
            .await
            .map_err(|e| DisplayErrorContext(&e).to_string())?;
        Ok(output.messages.unwrap_or_default())
    }

    async fn handle(self: Arc<Self>, message: Message, stop: CancellationToken) {
        let Some(receipt) = message.receipt_handle() else { return };
        let attribute = |name| message.attributes().and_then(|a| a.get(&name)).and_then(|v| v.parse::<u64>().ok());
        let receive_count = attribute(MessageSystemAttributeName::ApproximateReceiveCount).unwrap_or(1) as u32;
        if let Some(sent_ms) = attribute(MessageSystemAttributeName::SentTimestamp) {
            let now_ms = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64);
            metrics::gauge!(metric::QUEUE_LAG).set(now_ms.saturating_sub(sent_ms) as f64 / 1000.0);
        }
        let retry_delay = queue::backoff(receive_count, self.config.retry_base, self.config.retry_max);
        let id = match queue::job_id(message.body().unwrap_or_default()) {
            Ok(id) => id,
            Err(e) => {
                // Left for the DLQ, where an operator can read it; never silently deleted.
                tracing::error!(message_id = message.message_id(), receive_count, error = %e, "poison message");
                let outcome = Outcome::Retry(e);
                queue::settle(&self.sqs, &self.queue_url, receipt, &outcome, retry_delay).await;
                return;
            }
        };
        let heartbeat = tokio::spawn(heartbeat(
            self.sqs.clone(),
            self.queue_url.clone(),
            receipt.to_string(),
            self.settings.visibility,
        ));
        let delivery = Delivery { receive_count, max_receive: self.settings.max_receive };
        metrics::gauge!(metric::JOBS_RUNNING).increment(1.0);
        let outcome = self.runner.run(&id, delivery, &stop).await;
        metrics::gauge!(metric::JOBS_RUNNING).decrement(1.0);
        heartbeat.abort();
        queue::settle(&self.sqs, &self.queue_url, receipt, &outcome, retry_delay).await;
    }
}

/// Keeps a message invisible while its job runs: every third of the visibility timeout, extend it
/// by a whole one. If this worker dies, the message is back within one timeout.
async fn heartbeat(sqs: aws_sdk_sqs::Client, queue_url: String, receipt: String, visibility: Duration) {
    let period = (visibility / 3).max(Duration::from_secs(1));
    loop {
        tokio::time::sleep(period).await;
        if let Err(e) = queue::set_visibility(&sqs, &queue_url, &receipt, visibility).await {
            tracing::warn!(error = %e, "visibility heartbeat failed");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_sdk_read_timeout_outlasts_the_long_poll() {
        // The read timeout runs from the request to the answer's first byte; an empty long poll
        // answers only after WAIT_SECONDS, so a shorter timeout would fail every idle receive.
        let read = lmaas_aws::config::timeouts().read_timeout().expect("a read timeout");
        assert!(read > Duration::from_secs(WAIT_SECONDS as u64 + 5), "{read:?}");
    }
}
