//! Standing helper threads that share a divisible piece of work (writing a large tensor's JSON)
//! with the thread that needs it done.
//!
//! The work is numbered parts. The calling thread claims parts from the front, helpers from the
//! back, one at a time, so a helper that wakes late just takes fewer parts: the caller never waits
//! for a helper that has not started, only for parts a helper is already writing. At worst the
//! caller does everything, as it would alone. Helpers are spawned once and then wait on a channel:
//! a thread started per response cost more than it saved (its start, its fresh pages).

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::{channel, Sender};
use std::sync::{Arc, Mutex, OnceLock};
use std::thread::Thread;
use std::time::{Duration, Instant};

/// Work that can be written part by part, in any order, on any thread.
pub(crate) trait Parts: Send + Sync + 'static {
    fn count(&self) -> usize;
    /// Appends part `index`'s text to `out`.
    fn write(&self, index: usize, out: &mut Vec<u8>);
}

/// One piece of work while it is being shared.
pub(crate) struct Shared<P> {
    parts: P,
    /// The parts no one has claimed: `front` in the low 32 bits, `back` (exclusive) in the high.
    unclaimed: AtomicU64,
    /// Parts helpers have written, by index.
    written: Mutex<Vec<(usize, Vec<u8>)>>,
    written_count: AtomicUsize,
    caller: Thread,
}

/// How long the caller spins for a part a helper is writing before it parks: a part is a few
/// microseconds of work, shorter than a park and wake-up.
const SPIN: Duration = Duration::from_micros(50);

impl<P: Parts> Shared<P> {
    pub(crate) fn new(parts: P) -> Arc<Self> {
        let count = u32::try_from(parts.count()).expect("fewer than 2^32 parts");
        Arc::new(Shared {
            parts,
            unclaimed: AtomicU64::new(u64::from(count) << 32),
            written: Mutex::new(Vec::new()),
            written_count: AtomicUsize::new(0),
            caller: std::thread::current(),
        })
    }

    fn claim(&self, from_front: bool) -> Option<usize> {
        let mut current = self.unclaimed.load(Ordering::Acquire);
        loop {
            let (front, back) = (current & u64::from(u32::MAX), current >> 32);
            if front >= back {
                return None;
            }
            let (next, part) = if from_front { (current + 1, front) } else { (current - (1 << 32), back - 1) };
            match self.unclaimed.compare_exchange_weak(current, next, Ordering::AcqRel, Ordering::Acquire) {
                Ok(_) => return Some(part as usize),
                Err(actual) => current = actual,
            }
        }
    }

    /// Writes the last unclaimed part for the caller; false when none is left.
    fn help_once(&self) -> bool {
        let Some(index) = self.claim(false) else { return false };
        let mut text = Vec::new();
        self.parts.write(index, &mut text);
        self.written.lock().unwrap_or_else(|e| e.into_inner()).push((index, text));
        self.written_count.fetch_add(1, Ordering::Release);
        self.caller.unpark();
        true
    }

    /// The caller's share, written into `out` with `separator` between parts; then the helpers'
    /// parts are waited for and appended in order. Returns the number of parts helpers wrote.
    pub(crate) fn write_all(&self, out: &mut Vec<u8>, separator: u8) -> usize {
        let mut mine = 0;
        while let Some(index) = self.claim(true) {
            if index > 0 {
                out.push(separator);
            }
            self.parts.write(index, out);
            mine += 1;
        }
        let theirs = self.parts.count() - mine;
        let started = Instant::now();
        while self.written_count.load(Ordering::Acquire) < theirs {
            if started.elapsed() < SPIN {
                std::hint::spin_loop();
            } else {
                // A helper unparks the caller after every part; the timeout only bounds a missed wake-up.
                std::thread::park_timeout(Duration::from_millis(1));
            }
        }
        let mut written = std::mem::take(&mut *self.written.lock().unwrap_or_else(|e| e.into_inner()));
        written.sort_unstable_by_key(|(index, _)| *index);
        for (index, text) in written {
            if index > 0 {
                out.push(separator);
            }
            out.extend_from_slice(&text);
        }
        theirs
    }
}

/// Writes `parts` on this thread and every standing helper, in order, `separator` between parts.
/// Returns how many parts helpers wrote.
pub(crate) fn write_shared<P: Parts>(parts: P, out: &mut Vec<u8>, separator: u8) -> usize {
    let shared = Shared::new(parts);
    for helper in helpers() {
        let mine = shared.clone();
        // A helper that is gone leaves its parts to the caller.
        let _ = helper.send(Box::new(move || while mine.help_once() {}));
    }
    shared.write_all(out, separator)
}

/// Like [`write_shared`], with a helper that takes `helped` parts from the back before the caller
/// starts, so tests can place the split where they want it.
#[cfg(test)]
pub(crate) fn write_with_helper_first<P: Parts>(parts: P, helped: usize, out: &mut Vec<u8>) -> usize {
    let shared = Shared::new(parts);
    for _ in 0..helped {
        assert!(shared.help_once(), "a part left for the helper");
    }
    shared.write_all(out, b',')
}

/// What a helper thread runs: its share of one piece of work.
type Job = Box<dyn FnOnce() + Send>;

/// One helper per CPU besides the caller's, started on first use. A helper that cannot be
/// started is left out; with none, callers write everything themselves.
fn helpers() -> &'static [Sender<Job>] {
    static HELPERS: OnceLock<Vec<Sender<Job>>> = OnceLock::new();
    HELPERS.get_or_init(|| {
        (1..crate::cpus())
            .filter_map(|i| {
                let (sender, receiver) = channel::<Job>();
                let spawned = std::thread::Builder::new().name(format!("lmaas-helper-{i}")).spawn(move || {
                    for job in receiver {
                        job();
                    }
                });
                match spawned {
                    Ok(_) => Some(sender),
                    Err(e) => {
                        tracing::warn!(error = %e, "could not start a helper thread; large responses are written on one thread");
                        None
                    }
                }
            })
            .collect()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Part i is its number written `i + 1` times, so order and completeness both show.
    struct Numbers(usize);

    impl Parts for Numbers {
        fn count(&self) -> usize {
            self.0
        }
        fn write(&self, index: usize, out: &mut Vec<u8>) {
            for _ in 0..=index {
                out.extend_from_slice(index.to_string().as_bytes());
            }
        }
    }

    fn alone(count: usize) -> Vec<u8> {
        let mut out = Vec::new();
        Shared::new(Numbers(count)).write_all(&mut out, b',');
        out
    }

    #[test]
    fn the_caller_alone_writes_every_part_in_order() {
        assert_eq!(String::from_utf8(alone(4)).unwrap(), "0,11,222,3333");
        assert!(alone(0).is_empty());
    }

    #[test]
    fn parts_a_helper_wrote_are_put_back_in_order() {
        for helped in 0..=5 {
            let mut out = Vec::new();
            assert_eq!(write_with_helper_first(Numbers(5), helped, &mut out), helped);
            assert_eq!(out, alone(5), "{helped} parts written by the helper");
        }
    }

    #[test]
    fn a_helper_and_the_caller_never_claim_the_same_part() {
        let shared = Shared::new(Numbers(1000));
        let helper = shared.clone();
        let claimed = std::thread::spawn(move || std::iter::from_fn(|| helper.claim(false)).collect::<Vec<_>>());
        let mut all: Vec<usize> = std::iter::from_fn(|| shared.claim(true)).collect();
        all.extend(claimed.join().unwrap());
        all.sort_unstable();
        assert_eq!(all, (0..1000).collect::<Vec<_>>());
    }

    #[test]
    fn standing_helpers_give_the_same_text_as_the_caller_alone() {
        for _ in 0..50 {
            let mut out = Vec::new();
            write_shared(Numbers(64), &mut out, b',');
            assert_eq!(out, alone(64));
        }
    }
}
