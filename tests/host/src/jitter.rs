//! A TCP proxy that holds every chunk it forwards for a random time (0 to a maximum), in
//! order, in both directions: a KV store across zones or under load, whose round trips vary
//! by a second and more. Plain threads, so it keeps forwarding while the async runtime's
//! workers are blocked in the host's synchronous Redis calls.

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use anyhow::Result;

/// Forwards `127.0.0.1:<port>` to `upstream`, delaying each chunk by up to `max_delay`.
/// Stops accepting when dropped (open connections end with their peers).
pub struct JitterProxy {
    pub addr: SocketAddr,
    stop: Arc<AtomicBool>,
}

impl JitterProxy {
    pub fn start(upstream: SocketAddr, max_delay: Duration, seed: u64) -> Result<JitterProxy> {
        let listener = TcpListener::bind("127.0.0.1:0")?;
        let addr = listener.local_addr()?;
        let stop = Arc::new(AtomicBool::new(false));
        let stopped = stop.clone();
        let rng = Arc::new(AtomicU64::new(seed | 1));
        thread::spawn(move || {
            for conn in listener.incoming() {
                if stopped.load(Ordering::Relaxed) {
                    return;
                }
                let Ok(client) = conn else { continue };
                let Ok(server) = TcpStream::connect(upstream) else {
                    continue;
                };
                for (from, to) in [(&client, &server), (&server, &client)] {
                    let (Ok(from), Ok(to)) = (from.try_clone(), to.try_clone()) else {
                        continue;
                    };
                    pipe(from, to, max_delay, rng.clone());
                }
            }
        });
        Ok(JitterProxy { addr, stop })
    }

    pub fn url(&self) -> String {
        format!("redis://{}", self.addr)
    }
}

impl Drop for JitterProxy {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        // Wake the accept loop so it sees the flag.
        let _ = TcpStream::connect(self.addr);
    }
}

/// xorshift64 on a shared state: each chunk draws its own delay.
fn draw(rng: &AtomicU64, max: Duration) -> Duration {
    let mut x = rng.load(Ordering::Relaxed);
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    rng.store(x, Ordering::Relaxed);
    max.mul_f64((x % 10_000) as f64 / 10_000.0)
}

/// Reads `from` on one thread and writes to `to` on another, each chunk released at its own
/// random time but never before the chunk ahead of it (a TCP stream keeps its order).
fn pipe(mut from: TcpStream, mut to: TcpStream, max_delay: Duration, rng: Arc<AtomicU64>) {
    let (tx, rx) = mpsc::channel::<(Instant, Vec<u8>)>();
    thread::spawn(move || {
        let mut buf = vec![0u8; 64 * 1024];
        let mut last = Instant::now();
        loop {
            match from.read(&mut buf) {
                Ok(0) | Err(_) => return,
                Ok(n) => {
                    let due = (Instant::now() + draw(&rng, max_delay)).max(last);
                    last = due;
                    if tx.send((due, buf[..n].to_vec())).is_err() {
                        return;
                    }
                }
            }
        }
    });
    thread::spawn(move || {
        for (due, chunk) in rx {
            let now = Instant::now();
            if due > now {
                thread::sleep(due - now);
            }
            if to.write_all(&chunk).is_err() {
                break;
            }
        }
        let _ = to.shutdown(Shutdown::Write);
    });
}
