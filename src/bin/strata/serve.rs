//! `strata load --metrics-addr`: a minimal HTTP endpoint on a thread, answering `GET /metrics`
//! with the Prometheus text exposition (format 0.0.4) and anything else with 404. One
//! connection at a time, each request read with a bound and a timeout, then closed: enough
//! for a scraper or `curl` beside a load, no HTTP crate.

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

/// The largest request head read; the rest of a longer one is ignored.
const MAX_REQUEST: usize = 8 << 10;
/// How long a connection may take to send its request, or to take the answer.
const IO_TIMEOUT: Duration = Duration::from_secs(2);
/// How often the accepting thread looks at its stop flag.
const POLL: Duration = Duration::from_millis(20);

/// Binds `addr`, refusing one that is not loopback unless `public` (the metrics describe the
/// store's partitions, projections and traffic: not for the network by default).
pub fn bind(addr: SocketAddr, public: bool) -> Result<TcpListener, Box<dyn std::error::Error>> {
    if !addr.ip().is_loopback() && !public {
        return Err(format!(
            "--metrics-addr {addr} is not a loopback address: the metrics would be served to the network; \
             add --metrics-public if that is meant"
        )
        .into());
    }
    let listener = TcpListener::bind(addr).map_err(|e| format!("--metrics-addr {addr}: {e}"))?;
    listener.set_nonblocking(true)?;
    Ok(listener)
}

/// A running endpoint; [`Server::stop`] (or dropping it) ends its thread, and with it what
/// `render` holds.
pub struct Server {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

/// Serves `render()` on `GET /metrics` from `listener` (from [`bind`]) until stopped.
pub fn serve(listener: TcpListener, render: impl Fn() -> String + Send + 'static) -> Server {
    let stop = Arc::new(AtomicBool::new(false));
    let flag = stop.clone();
    let thread = std::thread::spawn(move || {
        while !flag.load(Ordering::Relaxed) {
            match listener.accept() {
                // A client that misbehaves only loses its own answer.
                Ok((conn, _)) => drop(answer(conn, &render)),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => std::thread::sleep(POLL),
                // Out of descriptors, a connection reset before accept: wait and go on.
                Err(_) => std::thread::sleep(POLL),
            }
        }
    });
    Server { stop, thread: Some(thread) }
}

impl Server {
    pub fn stop(mut self) {
        self.end();
    }

    fn end(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.end();
    }
}

/// Reads one request's head and answers it.
fn answer(mut conn: TcpStream, render: &impl Fn() -> String) -> io::Result<()> {
    conn.set_nonblocking(false)?;
    conn.set_read_timeout(Some(IO_TIMEOUT))?;
    conn.set_write_timeout(Some(IO_TIMEOUT))?;
    let mut head = Vec::new();
    let mut buf = [0u8; 1024];
    while head.len() < MAX_REQUEST && !head.windows(4).any(|w| w == b"\r\n\r\n") && !head.ends_with(b"\n\n") {
        let n = conn.read(&mut buf)?;
        if n == 0 {
            break;
        }
        head.extend_from_slice(&buf[..n]);
    }
    let line = head.split(|&b| b == b'\n').next().unwrap_or_default();
    let mut words = line.split(|&b| b == b' ' || b == b'\r').filter(|w| !w.is_empty());
    let (method, target) = (words.next(), words.next());
    let path = target.map(|t| t.split(|&b| b == b'?').next().unwrap_or_default());
    let (status, kind, body) = if method == Some(b"GET") && path == Some(b"/metrics") {
        ("200 OK", "text/plain; version=0.0.4; charset=utf-8", render())
    } else {
        ("404 Not Found", "text/plain; charset=utf-8", "not found: try GET /metrics\n".to_owned())
    };
    let head = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {kind}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    conn.write_all(head.as_bytes())?;
    conn.write_all(body.as_bytes())?;
    conn.flush()
}
