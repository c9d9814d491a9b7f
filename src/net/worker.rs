//! Blocking work off the caller's and the event loop's threads: name
//! resolution (`getaddrinfo` blocks) and loading TLS contexts (CA bundles
//! are read from disk).
//!
//! A small pool of threads is started on demand; idle threads exit after a
//! while without work. Jobs report back through their own closures
//! (typically by posting to the connection's event loop).

use std::collections::VecDeque;
use std::net::{SocketAddr, ToSocketAddrs};
use std::sync::{Condvar, Mutex};
use std::time::Duration;

const MAX_WORKERS: usize = 4;
const IDLE_EXIT: Duration = Duration::from_secs(5);

type Job = Box<dyn FnOnce() + Send>;

struct Pool {
    queue: VecDeque<Job>,
    workers: usize,
    idle: usize,
}

static POOL: Mutex<Pool> = Mutex::new(Pool {
    queue: VecDeque::new(),
    workers: 0,
    idle: 0,
});
static WORK: Condvar = Condvar::new();

/// Runs `job` on a worker thread. If no thread can be started at all, the
/// job runs on the calling thread rather than never. Never inlined: a
/// worker's stack at exit then names this module wherever it was started
/// from (tests/valgrind.supp matches on it).
#[inline(never)]
pub fn run(job: impl FnOnce() + Send + 'static) {
    let mut pool = POOL.lock().unwrap_or_else(|e| e.into_inner());
    pool.queue.push_back(Box::new(job));
    if pool.idle > 0 {
        WORK.notify_one();
        return;
    }
    if pool.workers < MAX_WORKERS {
        pool.workers += 1;
        let spawned = std::thread::Builder::new()
            .name("pjwebsock-work".into())
            .stack_size(256 * 1024)
            .spawn(worker);
        if spawned.is_err() {
            pool.workers -= 1;
            if pool.workers == 0 {
                let jobs: Vec<Job> = pool.queue.drain(..).collect();
                drop(pool);
                for j in jobs {
                    j();
                }
            }
        }
    }
}

fn worker() {
    loop {
        let job = {
            let mut pool = POOL.lock().unwrap_or_else(|e| e.into_inner());
            loop {
                if let Some(j) = pool.queue.pop_front() {
                    break Some(j);
                }
                pool.idle += 1;
                let (p, res) = WORK
                    .wait_timeout(pool, IDLE_EXIT)
                    .unwrap_or_else(|e| e.into_inner());
                pool = p;
                pool.idle -= 1;
                if res.timed_out() && pool.queue.is_empty() {
                    pool.workers -= 1;
                    break None;
                }
            }
        };
        match job {
            // A panicking job must not take the worker down with it.
            Some(j) => {
                let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(j));
            }
            None => return,
        }
    }
}

/// Resolves `host` (blocking): every address, IPv6 and IPv4, in the order
/// the system prefers.
#[allow(clippy::result_unit_err)]
pub fn lookup(host: &str, port: u16) -> Result<Vec<SocketAddr>, ()> {
    match (host, port).to_socket_addrs() {
        Ok(it) => {
            let v: Vec<SocketAddr> = it.collect();
            if v.is_empty() {
                Err(())
            } else {
                Ok(v)
            }
        }
        Err(_) => Err(()),
    }
}
