//! Short blocking work on the request path (a session run, tokenization), off the async executor.

use tokio::runtime::{Handle, RuntimeFlavor};

/// Runs `work` where it cannot stall other requests. The future that `block_on` drives (a Lambda
/// invocation, one at a time, on `main`; an in-process caller) runs it on its own thread: ONNX
/// Runtime's caller stays that warm thread instead of whichever blocking-pool thread wakes, which
/// cost up to 0.2 ms per int8 MiniLM run and 25 µs per tiny request on a 2-vCPU machine (README,
/// Performance). A spawned task (HTTP mode, concurrent Lambda) sends it to the blocking pool:
/// there `block_in_place` would hand the worker's other connections to another thread on every
/// request, and HTTP mode measured no gain from it. A current-thread runtime (unit tests) cannot
/// block in place. `what` names the work in errors.
pub(crate) async fn run_blocking<T: Send + 'static>(
    what: &str,
    work: impl FnOnce() -> T + Send + 'static,
) -> Result<T, lmaas_core::Error> {
    let failed = |e: &dyn std::fmt::Display| lmaas_core::Error::Internal(format!("{what} task failed: {e}"));
    let flavor = Handle::try_current().map(|h| h.runtime_flavor());
    if matches!(flavor, Ok(RuntimeFlavor::MultiThread)) && tokio::task::try_id().is_none() {
        // A panic answers 500 here too, as it does from the blocking pool.
        let work = std::panic::AssertUnwindSafe(|| tokio::task::block_in_place(work));
        return std::panic::catch_unwind(work).map_err(|_| failed(&"panicked"));
    }
    tokio::task::spawn_blocking(work).await.map_err(|e| failed(&e))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::thread::{current, ThreadId};

    fn multi_thread() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_multi_thread().worker_threads(2).build().unwrap()
    }

    #[test]
    fn the_future_block_on_drives_runs_the_work_on_its_own_thread() {
        let ran_on = multi_thread().block_on(run_blocking("test", || current().id())).unwrap();
        assert_eq!(ran_on, current().id());
    }

    #[test]
    fn a_spawned_task_sends_the_work_to_the_blocking_pool() {
        let runtime = multi_thread();
        let (task_thread, ran_on): (ThreadId, ThreadId) = runtime
            .block_on(runtime.spawn(async { (current().id(), run_blocking("test", || current().id()).await.unwrap()) }))
            .unwrap();
        assert_ne!(ran_on, task_thread);
    }

    #[tokio::test]
    async fn a_current_thread_runtime_uses_the_blocking_pool() {
        let ran_on = run_blocking("test", || current().id()).await.unwrap();
        assert_ne!(ran_on, current().id());
    }

    #[test]
    fn a_panic_in_the_work_is_an_internal_error_naming_it_on_either_path() {
        let panics = || run_blocking("inference", || -> () { panic!("boom") });
        let inline = multi_thread().block_on(panics()).unwrap_err();
        let pooled = tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(panics()).unwrap_err();
        for error in [inline, pooled] {
            assert!(
                matches!(&error, lmaas_core::Error::Internal(m) if m.starts_with("inference task failed")),
                "{error}"
            );
        }
    }
}
