//! The threads that answer large reviews: off the async workers (a large pod never delays other connections,
//! `/healthz` or `/readyz`), one per core (a burst of large pods queues instead of thrashing), and each hands
//! the memory a burst made it hold back to the system once the burst is over.
//!
//! Why not tokio's blocking pool: its threads come and go, and a thread-caching allocator keeps what each of
//! them freed until that thread allocates again. Here the threads stay and say when they are idle. Handing
//! memory back after every review instead halved the throughput of large pods (they fault it in again each
//! time); once per burst costs nothing measurable.

use std::collections::VecDeque;
use std::panic::AssertUnwindSafe;
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

type Job = Box<dyn FnOnce() + Send>;

pub struct ReviewPool {
    queue: Arc<Queue>,
}

#[derive(Default)]
struct Queue {
    state: Mutex<Pending>,
    ready: Condvar,
}

#[derive(Default)]
struct Pending {
    jobs: VecDeque<Job>,
    closed: bool,
}

impl Queue {
    fn lock(&self) -> MutexGuard<'_, Pending> {
        // Jobs run outside the lock, so it is never poisoned by one; if it were, the queue is still whole.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl ReviewPool {
    /// `threads` threads; each calls `release` once it has had nothing to do for `idle` after doing work.
    pub fn new(threads: usize, idle: Duration, release: fn()) -> std::io::Result<Self> {
        // The pool exists before its threads: if one cannot be started, dropping it closes the queue and
        // the threads already started end instead of waiting forever.
        let pool = ReviewPool { queue: Arc::new(Queue::default()) };
        for index in 0..threads.max(1) {
            let queue = pool.queue.clone();
            std::thread::Builder::new().name(format!("review-{index}")).spawn(move || serve(&queue, idle, release))?;
        }
        Ok(pool)
    }

    /// `f` run on one of the pool's threads; `None` if it panicked (the thread lives on).
    pub async fn run<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> Option<T> {
        let (answer, answered) = tokio::sync::oneshot::channel();
        self.queue.lock().jobs.push_back(Box::new(move || drop(answer.send(f()))));
        self.queue.ready.notify_one();
        answered.await.ok()
    }
}

impl Drop for ReviewPool {
    fn drop(&mut self) {
        self.queue.lock().closed = true;
        self.queue.ready.notify_all();
    }
}

fn serve(queue: &Queue, idle: Duration, release: fn()) {
    let mut worked = false;
    loop {
        let job = {
            let mut pending = queue.lock();
            loop {
                if let Some(job) = pending.jobs.pop_front() {
                    break Some(job);
                }
                if pending.closed {
                    return;
                }
                // The wait gives the lock up: every idle thread times out on its own.
                if worked {
                    let (again, waited) = queue.ready.wait_timeout(pending, idle).unwrap_or_else(PoisonError::into_inner);
                    pending = again;
                    if waited.timed_out() && pending.jobs.is_empty() {
                        break None;
                    }
                } else {
                    pending = queue.ready.wait(pending).unwrap_or_else(PoisonError::into_inner);
                }
            }
        };
        match job {
            Some(job) => {
                // A panic drops the job's answer (the caller sees None) and leaves the thread serving.
                let _ = std::panic::catch_unwind(AssertUnwindSafe(job));
                worked = true;
            }
            None => {
                release();
                worked = false;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    static RELEASED: AtomicUsize = AtomicUsize::new(0);

    fn count_release() {
        RELEASED.fetch_add(1, Ordering::SeqCst);
    }

    #[tokio::test]
    async fn runs_jobs_survives_panics_and_releases_once_per_burst() {
        let idle = Duration::from_millis(100);
        let pool = ReviewPool::new(2, idle, count_release).unwrap();
        assert_eq!(pool.run(|| -> u8 { panic!("a review that panics") }).await, None);
        assert_eq!(pool.run(|| "still serving").await, Some("still serving"));
        tokio::time::sleep(idle * 5).await;
        RELEASED.store(0, Ordering::SeqCst);

        // A burst: jobs one after another, then two at once (both threads work).
        for n in 0..8 {
            assert_eq!(pool.run(move || n * 2).await, Some(n * 2));
        }
        let barrier = Arc::new(std::sync::Barrier::new(2));
        let (a, b) = (barrier.clone(), barrier);
        let (first, second) = tokio::join!(pool.run(move || a.wait().is_leader()), pool.run(move || b.wait().is_leader()));
        assert_ne!(first, second, "the two jobs ran on two threads at once");

        // Idle after it: each thread releases once (one waiting does not hold the other up), then sleeps.
        tokio::time::sleep(idle * 5).await;
        assert_eq!(RELEASED.load(Ordering::SeqCst), 2, "each thread that worked releases once");
        tokio::time::sleep(idle * 5).await;
        assert_eq!(RELEASED.load(Ordering::SeqCst), 2, "an idle thread released again");
    }
}
