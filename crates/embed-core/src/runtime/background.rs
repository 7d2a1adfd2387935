//! The host-side work of bulk requests (tokenizing them, encoding their answers) on threads of
//! a lower OS priority than the compute threads.
//!
//! While bulk work is queued on a CPU server, the models' compute threads keep every core busy.
//! Tokenizing a 256-text request, or encoding its 256 vectors as JSON, takes several
//! milliseconds of one core. At the compute threads' priority such a burst takes a core from
//! whatever pass runs at that moment, and a libtorch pass whose second thread lost its core
//! waits at the barrier of every op: a query's 5 ms pass took 30 to 60 ms beside such bursts
//! (all-MiniLM-L6-v2 on 2 cores). On these threads the bursts get the time that compute and
//! interactive work leave (on Linux each runs [`BULK_NICE`] steps above the process's nice
//! level, so it weighs about a tenth of a compute thread when both want a core), and bulk
//! requests pay for them in their own latency. On an idle machine they run at full speed.
//!
//! [`run_bulk`] hands a closure to the pool (one thread per core, started on first use) and
//! awaits its result; a closure that panics yields its panic message. A caller that goes away
//! does not stop a closure that has started (as with `tokio::task::spawn_blocking`).

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::{Arc, Mutex, OnceLock};

use tokio::sync::oneshot;

/// How many nice steps the pool's threads run below the process (Linux; elsewhere they run at
/// the process's priority).
pub const BULK_NICE: i32 = 10;

type Task = Box<dyn FnOnce() + Send + 'static>;

struct Pool {
    tx: Mutex<Sender<Task>>,
    threads: usize,
}

static POOL: OnceLock<Pool> = OnceLock::new();
static TASKS: AtomicU64 = AtomicU64::new(0);
static LOWERED: AtomicU64 = AtomicU64::new(0);

/// What the bulk host pool has done, for metrics and tests.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize)]
#[non_exhaustive]
pub struct BulkHostStats {
    /// Threads started (0 until first use).
    pub threads: usize,
    /// Threads whose OS priority was lowered (fewer than `threads` where the OS refused).
    pub lowered: usize,
    /// Closures run to completion (or to a panic).
    pub tasks: u64,
}

/// The pool's figures so far.
pub fn bulk_host_stats() -> BulkHostStats {
    BulkHostStats {
        threads: POOL.get().map_or(0, |p| p.threads),
        lowered: LOWERED.load(Ordering::SeqCst) as usize,
        tasks: TASKS.load(Ordering::SeqCst),
    }
}

fn pool() -> &'static Pool {
    POOL.get_or_init(|| {
        let threads = std::thread::available_parallelism().map_or(1, usize::from);
        let (tx, rx) = mpsc::channel::<Task>();
        let rx = Arc::new(Mutex::new(rx));
        let mut started = 0;
        for i in 0..threads {
            let rx = rx.clone();
            let spawned = std::thread::Builder::new().name(format!("embed-bulk-{i}")).spawn(move || serve(&rx));
            match spawned {
                Ok(_) => started += 1,
                Err(e) => tracing::warn!("could not start a bulk host thread: {e}"),
            }
        }
        Pool { tx: Mutex::new(tx), threads: started }
    })
}

fn serve(rx: &Mutex<Receiver<Task>>) {
    if lower_priority() {
        LOWERED.fetch_add(1, Ordering::SeqCst);
    }
    loop {
        // The lock is held only while waiting for the next task, not while running it.
        let task = match rx.lock().unwrap_or_else(|p| p.into_inner()).recv() {
            Ok(t) => t,
            Err(_) => return,
        };
        task();
    }
}

/// Lowers the calling thread's priority by [`BULK_NICE`]; `false` where the OS refused.
#[cfg(target_os = "linux")]
fn lower_priority() -> bool {
    // On Linux nice is per thread: PRIO_PROCESS with a thread id names that thread alone.
    // SAFETY: plain system calls on the calling thread; no memory is passed.
    unsafe {
        let tid = libc::syscall(libc::SYS_gettid) as libc::id_t;
        *libc::__errno_location() = 0;
        let now = libc::getpriority(libc::PRIO_PROCESS, tid);
        if now == -1 && *libc::__errno_location() != 0 {
            tracing::warn!("bulk host thread: cannot read its priority; it runs at the process's");
            return false;
        }
        let ok = libc::setpriority(libc::PRIO_PROCESS, tid, (now + BULK_NICE).min(19)) == 0;
        if !ok {
            tracing::warn!("bulk host thread: the OS refused a lower priority; it runs at the process's");
        }
        ok
    }
}

#[cfg(not(target_os = "linux"))]
fn lower_priority() -> bool {
    false
}

/// Runs `f` on the bulk host pool and yields its result, or the message of its panic.
pub async fn run_bulk<T, F>(f: F) -> Result<T, String>
where
    T: Send + 'static,
    F: FnOnce() -> T + Send + 'static,
{
    let (tx, rx) = oneshot::channel();
    let task: Task = Box::new(move || {
        let r = catch_unwind(AssertUnwindSafe(f)).map_err(|p| crate::panic_message(p.as_ref()));
        TASKS.fetch_add(1, Ordering::SeqCst);
        let _ = tx.send(r);
    });
    let p = pool();
    if p.threads == 0 || p.tx.lock().unwrap_or_else(|e| e.into_inner()).send(task).is_err() {
        return Err("no bulk host thread could be started".into());
    }
    rx.await.unwrap_or_else(|_| Err("the bulk host thread went away".into()))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The calling thread's nice level (0 where threads have none of their own).
    fn my_nice() -> i32 {
        #[cfg(target_os = "linux")]
        // SAFETY: plain system calls on the calling thread.
        return unsafe { libc::getpriority(libc::PRIO_PROCESS, libc::syscall(libc::SYS_gettid) as libc::id_t) };
        #[cfg(not(target_os = "linux"))]
        0
    }

    #[tokio::test]
    async fn closures_run_on_lower_priority_threads_and_panics_come_back_as_messages() {
        let before = bulk_host_stats().tasks;
        let (name, nice) = run_bulk(|| (std::thread::current().name().map(str::to_string), my_nice())).await.expect("the closure ran");
        assert!(name.as_deref().is_some_and(|n| n.starts_with("embed-bulk-")), "ran on {name:?}");
        #[cfg(target_os = "linux")]
        {
            let base = my_nice();
            assert_eq!(nice, (base + BULK_NICE).min(19), "bulk host thread at nice {nice}, the test's thread at {base}");
        }
        let err = run_bulk(|| -> u8 { panic!("encoding failed") }).await.expect_err("a panic is an error");
        assert!(err.contains("encoding failed"), "{err}");
        // The pool survives a panicking closure.
        assert_eq!(run_bulk(|| 7).await, Ok(7));
        assert!(bulk_host_stats().tasks >= before + 3);
    }
}
