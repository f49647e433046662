//! The worker: runs jobs from the jobs queue. In Lambda (an SQS event source mapping) by
//! default; `worker --daemon` is the long-running fleet process (GPU or CPU hosts).

use lmaas_api::WorkerConfig;

#[tokio::main]
async fn main() -> Result<(), lambda_runtime::Error> {
    lmaas_api::telemetry::init("worker");
    let config = WorkerConfig::from_env()?;
    if std::env::args().skip(1).any(|arg| arg == "--daemon") {
        lmaas_worker::daemon::run(config).await?;
        Ok(())
    } else {
        lmaas_worker::lambda::run(config).await
    }
}
