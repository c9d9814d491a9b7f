//! Name resolution off the caller's thread.
//!
//! `getaddrinfo` blocks, so lookups run on a small pool of worker threads
//! that are started on demand and exit after a while without work. The
//! result is handed to a completion closure (which typically posts it back
//! to the connection's event loop).

use std::collections::VecDeque;
use std::net::{SocketAddr, ToSocketAddrs};
use std::sync::{Condvar, Mutex};
use std::time::Duration;

const MAX_WORKERS: usize = 4;
const IDLE_EXIT: Duration = Duration::from_secs(5);

type Done = Box<dyn FnOnce(Result<Vec<SocketAddr>, ()>) + Send>;

struct Job {
    host: String,
    port: u16,
    done: Done,
}

struct Pool {
    queue: VecDeque<Job>,
    workers: usize,
    idle: usize,
}

static POOL: Mutex<Pool> = Mutex::new(Pool { queue: VecDeque::new(), workers: 0, idle: 0 });
static WORK: Condvar = Condvar::new();

/// Resolves `host` (a name, not an IP literal) and calls `done` with every
/// address found, IPv6 and IPv4 in the order the system prefers.
pub fn resolve(host: String, port: u16, done: impl FnOnce(Result<Vec<SocketAddr>, ()>) + Send + 'static) {
    let mut pool = POOL.lock().unwrap_or_else(|e| e.into_inner());
    pool.queue.push_back(Job { host, port, done: Box::new(done) });
    if pool.idle > 0 {
        WORK.notify_one();
        return;
    }
    if pool.workers < MAX_WORKERS {
        pool.workers += 1;
        let spawned = std::thread::Builder::new()
            .name("pjwebsock-dns".into())
            .stack_size(128 * 1024)
            .spawn(worker);
        if spawned.is_err() {
            pool.workers -= 1;
            if pool.workers == 0 {
                // No thread at all: fail the lookups rather than hang them.
                let jobs: Vec<Job> = pool.queue.drain(..).collect();
                drop(pool);
                for j in jobs {
                    (j.done)(Err(()));
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
                let (p, res) = WORK.wait_timeout(pool, IDLE_EXIT).unwrap_or_else(|e| e.into_inner());
                pool = p;
                pool.idle -= 1;
                if res.timed_out() && pool.queue.is_empty() {
                    pool.workers -= 1;
                    break None;
                }
            }
        };
        let Some(job) = job else { return };
        let res = match (job.host.as_str(), job.port).to_socket_addrs() {
            Ok(it) => {
                let v: Vec<SocketAddr> = it.collect();
                if v.is_empty() {
                    Err(())
                } else {
                    Ok(v)
                }
            }
            Err(_) => Err(()),
        };
        (job.done)(res);
    }
}
