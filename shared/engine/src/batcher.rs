//! Dynamic micro-batching of concurrent embedding requests on one model.
//!
//! A session runs one request at a time, so concurrent requests used to queue on its lock (and a
//! std mutex is not even fair). Instead, each request joins a queue; whoever finds the model idle
//! becomes the leader, takes every compatible request waiting (same kind of input, config and
//! dimensions; up to `MAX_ROWS` rows) and runs them as one batch, then hands out the results and
//! wakes the others, one of which leads the next batch. No extra thread: a lone request runs at
//! once; under load (the previous run was shared) the leader lingers `LINGER` so requests on
//! their way join, and batches form from whatever arrived meanwhile.
//! Requests are served in arrival order.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Condvar, Mutex};

use crate::{EmbeddingConfig, EmbeddingInput, Embeddings, EngineError, LoadedModel};

/// How long a leader waits for more requests when the previous run was shared: about a tenth
/// of a one-sentence MiniLM run, paid only under load.
const LINGER: std::time::Duration = std::time::Duration::from_micros(400);

/// Most rows (texts) one merged run carries; beyond it padding and memory outweigh the gain.
const MAX_ROWS: usize = 64;

#[derive(Default)]
pub(crate) struct EmbeddingBatcher {
    state: Mutex<State>,
    finished: Condvar,
    /// Session runs and requests served, to see how much batching happens.
    runs: AtomicU64,
    requests: AtomicU64,
}

#[derive(Default)]
struct State {
    queue: VecDeque<Pending>,
    running: bool,
    done: HashMap<u64, Result<Embeddings, EngineError>>,
    next_id: u64,
    /// Requests in the previous run: more than one means the model is busy.
    last_batch: usize,
}

struct Pending {
    id: u64,
    input: EmbeddingInput,
    config: EmbeddingConfig,
    dimensions: Option<usize>,
}

impl Pending {
    fn rows(&self) -> usize {
        match &self.input {
            EmbeddingInput::Texts(t) => t.len(),
            EmbeddingInput::Tokens(t) => t.len(),
        }
    }

    fn fits_with(&self, other: &Pending) -> bool {
        let same_kind = matches!(
            (&self.input, &other.input),
            (EmbeddingInput::Texts(_), EmbeddingInput::Texts(_))
                | (EmbeddingInput::Tokens(_), EmbeddingInput::Tokens(_))
        );
        same_kind && self.config == other.config && self.dimensions == other.dimensions
    }
}

impl LoadedModel {
    /// Embeds `input` like `embed`, sharing one run with other requests waiting on this model.
    /// For the API: a batch job already sends large batches and calls `embed` directly.
    pub fn embed_batched(
        &self,
        input: EmbeddingInput,
        config: &EmbeddingConfig,
        dimensions: Option<usize>,
    ) -> Result<Embeddings, EngineError> {
        let batcher = self.batcher();
        let poisoned = || EngineError::Internal("batcher lock poisoned".into());
        let mut state = batcher.state.lock().map_err(|_| poisoned())?;
        let id = state.next_id;
        state.next_id += 1;
        state.queue.push_back(Pending { id, input, config: config.clone(), dimensions });
        loop {
            if let Some(result) = state.done.remove(&id) {
                return result;
            }
            if !state.running {
                state.running = true;
                if state.last_batch > 1 {
                    // Under load: give requests already on their way a moment to join.
                    drop(state);
                    std::thread::sleep(LINGER);
                    state = batcher.state.lock().map_err(|_| poisoned())?;
                }
                let batch = take_batch(&mut state.queue);
                state.last_batch = batch.len();
                drop(state);
                let results = self.run_merged(batch);
                state = batcher.state.lock().map_err(|_| poisoned())?;
                state.running = false;
                state.done.extend(results);
                batcher.finished.notify_all();
                continue;
            }
            state = batcher.finished.wait(state).map_err(|_| poisoned())?;
        }
    }

    /// Requests served by `embed_batched` so far, and the session runs they took.
    pub fn batching_counts(&self) -> (u64, u64) {
        (self.batcher().requests.load(Ordering::Relaxed), self.batcher().runs.load(Ordering::Relaxed))
    }

    /// Runs `batch` as one session run and splits the result per request. If the merged run fails
    /// (one request's bad token ids, say), each request runs alone so only its own error is its.
    fn run_merged(&self, batch: Vec<Pending>) -> Vec<(u64, Result<Embeddings, EngineError>)> {
        self.batcher().runs.fetch_add(1, Ordering::Relaxed);
        self.batcher().requests.fetch_add(batch.len() as u64, Ordering::Relaxed);
        if batch.len() == 1 {
            let p = &batch[0];
            return vec![(p.id, self.embed(&p.input, &p.config, p.dimensions))];
        }
        let first = &batch[0];
        let merged = match &first.input {
            EmbeddingInput::Texts(_) => EmbeddingInput::Texts(rows_of(&batch, |input| match input {
                EmbeddingInput::Texts(texts) => texts,
                EmbeddingInput::Tokens(_) => unreachable!("take_batch groups by kind"),
            })),
            EmbeddingInput::Tokens(_) => EmbeddingInput::Tokens(rows_of(&batch, |input| match input {
                EmbeddingInput::Tokens(tokens) => tokens,
                EmbeddingInput::Texts(_) => unreachable!("take_batch groups by kind"),
            })),
        };
        match self.embed_rows(&merged, &first.config, first.dimensions) {
            Ok((vectors, tokens)) => {
                let mut vectors = vectors.into_iter();
                let mut tokens = tokens.into_iter();
                batch
                    .iter()
                    .map(|p| {
                        let rows = p.rows();
                        let embeddings = Embeddings {
                            vectors: vectors.by_ref().take(rows).collect(),
                            prompt_tokens: tokens.by_ref().take(rows).sum(),
                        };
                        (p.id, Ok(embeddings))
                    })
                    .collect()
            }
            Err(_) => batch.iter().map(|p| (p.id, self.embed(&p.input, &p.config, p.dimensions))).collect(),
        }
    }
}

/// Every request's rows, in order, as one list (`rows` picks them out of a request's input).
fn rows_of<T: Clone>(batch: &[Pending], rows: impl Fn(&EmbeddingInput) -> &Vec<T>) -> Vec<T> {
    batch.iter().flat_map(|p| rows(&p.input).iter().cloned()).collect()
}

/// The oldest request and every later compatible one that fits, in arrival order; the rest
/// keep their places.
fn take_batch(queue: &mut VecDeque<Pending>) -> Vec<Pending> {
    let first = queue.pop_front().expect("the caller's own request is queued");
    let mut rows = first.rows();
    let mut batch = vec![first];
    let mut rest = VecDeque::with_capacity(queue.len());
    while let Some(next) = queue.pop_front() {
        if next.fits_with(&batch[0]) && rows + next.rows() <= MAX_ROWS {
            rows += next.rows();
            batch.push(next);
        } else {
            rest.push_back(next);
        }
    }
    *queue = rest;
    batch
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pending(id: u64, texts: usize, dimensions: Option<usize>) -> Pending {
        Pending {
            id,
            input: EmbeddingInput::Texts(vec!["x".into(); texts]),
            config: EmbeddingConfig::default(),
            dimensions,
        }
    }

    #[test]
    fn batches_take_compatible_requests_in_order_up_to_the_row_limit() {
        let mut queue: VecDeque<Pending> = [
            pending(1, 10, None),
            pending(2, 5, Some(64)),
            pending(3, 50, None),
            pending(4, 4, None),
            pending(5, 1, None),
        ]
        .into_iter()
        .collect();
        let batch: Vec<u64> = take_batch(&mut queue).iter().map(|p| p.id).collect();
        assert_eq!(batch, vec![1, 3, 4], "64 rows at most; other dimensions wait");
        assert_eq!(queue.iter().map(|p| p.id).collect::<Vec<_>>(), vec![2, 5]);
    }
}
