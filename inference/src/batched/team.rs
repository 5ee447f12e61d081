//! A fixed team of threads that runs one forward step at a time, SPMD style: every member
//! runs the same closure with its own index, splits each matrix product by rows, and meets
//! the others at [`Member::sync`] between phases. The batched runtime's
//! [`Workspace`](super::llama::Workspace) owns one; [`Llama::step`](super::llama::Llama::step)
//! runs on it.
//!
//! Why not rayon: a decode step of a small model is ~200 matrix products of a few hundred
//! microseconds each. Handing each to a pool that has gone to sleep costs a futex wake per
//! product, which on two cores cost more than the products gained. A team is woken once per
//! step; inside it, members wait for each other by spinning for a short while, then yielding
//! the core (so an oversubscribed machine still progresses), and idle members park.
//!
//! The caller is member 0, so a team of `n` threads owns `n − 1` background threads. A panic
//! in any member poisons the step: the others stop waiting at their next `sync`, and
//! [`Team::run`] re-raises the panic on the caller once every member has left the closure.

use std::cell::UnsafeCell;
use std::panic::{catch_unwind, resume_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

/// Spins before a waiting member starts yielding its core.
const SPINS: u32 = 2_000;
/// How long an idle member keeps yielding before it parks until the next step.
const IDLE_YIELD: Duration = Duration::from_micros(500);

/// The closure of one step, its lifetime erased (see the safety argument in [`Team::run`]).
type Job = *const (dyn Fn(&Member<'_>) + Sync);

struct Shared {
    threads: usize,
    /// The current step's closure; written by the caller before `epoch` moves.
    job: UnsafeCell<Option<Job>>,
    /// Bumped once per step; members run the job when they see it move.
    epoch: AtomicU64,
    /// Background members done with the current step.
    finished: AtomicUsize,
    /// The phase barrier: arrivals and the generation they release.
    arrived: AtomicUsize,
    generation: AtomicUsize,
    poisoned: AtomicBool,
    panic: Mutex<Option<Box<dyn std::any::Any + Send>>>,
    stop: AtomicBool,
}

impl Shared {
    /// Marks the step failed (members stop waiting at `sync`) and keeps the first panic.
    fn poison(&self, panic: Box<dyn std::any::Any + Send>) {
        self.poisoned.store(true, Ordering::Release);
        self.panic
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get_or_insert(panic);
    }
}

// SAFETY: `job` is written only by the thread in `Team::run` while no member reads it (the
// previous step is over: every member incremented `finished`), and read by members only after
// an acquire load of `epoch` that follows the write.
unsafe impl Sync for Shared {}
unsafe impl Send for Shared {}

/// A team of threads; see the module docs.
pub struct Team {
    shared: Arc<Shared>,
    handles: Vec<JoinHandle<()>>,
    /// `run` is not reentrant: one step at a time.
    running: Mutex<()>,
}

impl std::fmt::Debug for Team {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Team")
            .field("threads", &self.shared.threads)
            .finish()
    }
}

/// One member's view of a step.
pub struct Member<'a> {
    index: usize,
    shared: &'a Shared,
}

impl Member<'_> {
    /// This member's index, `0..threads`; the caller of [`Team::run`] is 0.
    pub fn index(&self) -> usize {
        self.index
    }

    /// How many members run the step.
    pub fn threads(&self) -> usize {
        self.shared.threads
    }

    /// This member's share of `0..n`: contiguous, as even as can be, together covering
    /// `0..n` exactly once.
    pub fn share(&self, n: usize) -> std::ops::Range<usize> {
        share(n, self.index, self.shared.threads)
    }

    /// Waits until every member has reached this point (returns at once if the step is
    /// poisoned by a panic).
    pub fn sync(&self) {
        let s = self.shared;
        if s.threads == 1 {
            return;
        }
        let generation = s.generation.load(Ordering::Acquire);
        if s.arrived.fetch_add(1, Ordering::AcqRel) + 1 == s.threads {
            s.arrived.store(0, Ordering::Relaxed);
            s.generation.fetch_add(1, Ordering::AcqRel);
            return;
        }
        let mut spins = 0u32;
        while s.generation.load(Ordering::Acquire) == generation {
            if s.poisoned.load(Ordering::Relaxed) {
                return;
            }
            pause(&mut spins);
        }
    }
}

/// `0..n` cut into `parts` contiguous pieces as even as can be; piece `i`.
pub fn share(n: usize, i: usize, parts: usize) -> std::ops::Range<usize> {
    let base = n / parts;
    let extra = n % parts;
    let start = i * base + i.min(extra);
    start..start + base + usize::from(i < extra)
}

fn pause(spins: &mut u32) {
    if *spins < SPINS {
        *spins += 1;
        std::hint::spin_loop();
    } else {
        thread::yield_now();
    }
}

impl Team {
    /// A team of `threads` members (at least 1); spawns `threads − 1` threads.
    ///
    /// # Errors
    /// If a thread cannot be spawned.
    pub fn new(threads: usize) -> std::io::Result<Team> {
        let threads = threads.max(1);
        let shared = Arc::new(Shared {
            threads,
            job: UnsafeCell::new(None),
            epoch: AtomicU64::new(0),
            finished: AtomicUsize::new(0),
            arrived: AtomicUsize::new(0),
            generation: AtomicUsize::new(0),
            poisoned: AtomicBool::new(false),
            panic: Mutex::new(None),
            stop: AtomicBool::new(false),
        });
        let mut handles = Vec::with_capacity(threads - 1);
        for index in 1..threads {
            let mine = shared.clone();
            let handle = thread::Builder::new()
                .name(format!("cocoon-team-{index}"))
                .spawn(move || member_loop(&mine, index));
            match handle {
                Ok(h) => handles.push(h),
                Err(e) => {
                    // Stop the ones already started.
                    shared.stop.store(true, Ordering::Release);
                    for h in &handles {
                        h.thread().unpark();
                    }
                    for h in handles {
                        let _ = h.join();
                    }
                    return Err(e);
                }
            }
        }
        Ok(Team {
            shared,
            handles,
            running: Mutex::new(()),
        })
    }

    /// Members, the caller included.
    pub fn threads(&self) -> usize {
        self.shared.threads
    }

    /// Runs `f` on every member (the caller as member 0) and returns when all are done.
    ///
    /// # Panics
    /// Re-raises the first panic of any member.
    pub fn run<F: Fn(&Member<'_>) + Sync>(&self, f: F) {
        let _one_at_a_time = self.running.lock().unwrap_or_else(|p| p.into_inner());
        let s = &*self.shared;
        let job: &(dyn Fn(&Member<'_>) + Sync) = &f;
        // SAFETY: the pointer is used only until every member has incremented `finished`
        // for this step, which this function waits for before returning (also when `f`
        // panics on this thread), so it never outlives `f`.
        let job: Job = unsafe { std::mem::transmute(job) };
        // SAFETY: no member reads `job` now: the previous step ended with all of them done.
        unsafe { *s.job.get() = Some(job) };
        s.finished.store(0, Ordering::Relaxed);
        s.epoch.fetch_add(1, Ordering::AcqRel);
        for h in &self.handles {
            h.thread().unpark();
        }
        let mine = catch_unwind(AssertUnwindSafe(|| {
            f(&Member {
                index: 0,
                shared: s,
            })
        }));
        if let Err(p) = mine {
            s.poison(p);
        }
        let mut spins = 0;
        while s.finished.load(Ordering::Acquire) < s.threads - 1 {
            pause(&mut spins);
        }
        if s.poisoned.swap(false, Ordering::AcqRel) {
            s.arrived.store(0, Ordering::Relaxed);
            let panic = s.panic.lock().unwrap_or_else(|p| p.into_inner()).take();
            resume_unwind(panic.unwrap_or_else(|| Box::new("a team member panicked")));
        }
    }
}

fn member_loop(s: &Shared, index: usize) {
    let mut seen = 0u64;
    loop {
        // Wait for the next step: spin, yield, then park.
        let idle = Instant::now();
        let mut spins = 0;
        loop {
            if s.stop.load(Ordering::Acquire) {
                return;
            }
            let epoch = s.epoch.load(Ordering::Acquire);
            if epoch != seen {
                seen = epoch;
                break;
            }
            if spins < SPINS {
                spins += 1;
                std::hint::spin_loop();
            } else if idle.elapsed() < IDLE_YIELD {
                thread::yield_now();
            } else {
                thread::park_timeout(Duration::from_millis(50));
            }
        }
        // SAFETY: written before the epoch moved (acquire above); valid until we report
        // `finished`.
        let job = unsafe { (*s.job.get()).expect("a job with the epoch") };
        let result = catch_unwind(AssertUnwindSafe(|| {
            // SAFETY: see `Team::run`: the closure outlives this call.
            let f = unsafe { &*job };
            f(&Member { index, shared: s });
        }));
        if let Err(p) = result {
            s.poison(p);
        }
        s.finished.fetch_add(1, Ordering::AcqRel);
    }
}

impl Drop for Team {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::Release);
        for h in &self.handles {
            h.thread().unpark();
        }
        for h in self.handles.drain(..) {
            let _ = h.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn shares_cover_the_range_once(n in 0usize..10_000, parts in 1usize..17) {
            let mut next = 0;
            for i in 0..parts {
                let r = share(n, i, parts);
                prop_assert_eq!(r.start, next);
                prop_assert!(r.len() <= n / parts + 1);
                next = r.end;
            }
            prop_assert_eq!(next, n);
        }
    }

    #[test]
    fn every_member_runs_and_syncs_order_the_phases() {
        for threads in [1, 2, 3, 5] {
            let team = Team::new(threads).unwrap();
            for step in 0..50usize {
                let n = 1000 + step;
                let a: Vec<AtomicUsize> = (0..n).map(|_| AtomicUsize::new(0)).collect();
                let total = AtomicUsize::new(0);
                team.run(|m| {
                    for i in m.share(n) {
                        a[i].store(i + step, Ordering::Relaxed);
                    }
                    m.sync();
                    // Phase two reads what others wrote in phase one.
                    let other = m.share(n).start.wrapping_add(n / 2) % n;
                    let v = a[other].load(Ordering::Relaxed);
                    assert_eq!(v, other + step);
                    total.fetch_add(m.share(n).len(), Ordering::Relaxed);
                    m.sync();
                });
                assert_eq!(total.load(Ordering::Relaxed), n);
            }
        }
    }

    #[test]
    fn a_member_panic_reaches_the_caller_and_the_team_keeps_working() {
        let team = Team::new(3).unwrap();
        let caught = catch_unwind(AssertUnwindSafe(|| {
            team.run(|m| {
                if m.index() == 2 {
                    panic!("boom");
                }
                m.sync();
            })
        }));
        assert!(caught.is_err());
        let count = AtomicUsize::new(0);
        team.run(|m| {
            m.sync();
            count.fetch_add(1, Ordering::Relaxed);
        });
        assert_eq!(count.load(Ordering::Relaxed), 3);
    }
}
