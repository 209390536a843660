//! Registries for the push tests: another registry instance (with htpasswd auth when
//! asked), and a loopback HTTP proxy in front of a registry that logs every request and
//! answers some of them with failures instead of passing them on.

use std::io::{BufRead, BufReader, Read, Write as _};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::podman::check;

/// A free loopback port (bound and released; good enough for a test).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port()
}

/// A `docker-registry` process of its own, on its own port and storage; killed on drop.
#[derive(Debug)]
pub struct RegistryServer {
    pub addr: String,
    dir: tempfile::TempDir,
    child: Child,
}

impl RegistryServer {
    /// Starts a registry; with `credentials`, it requires them (htpasswd, bcrypt).
    pub fn start(credentials: Option<(&str, &str)>) -> RegistryServer {
        let dir = tempfile::tempdir().expect("tempdir");
        let addr = format!("127.0.0.1:{}", free_port());
        let auth = match credentials {
            Some((user, password)) => {
                let out = check(Command::new("htpasswd").args(["-Bbn", user, password]));
                let file = dir.path().join("htpasswd");
                std::fs::write(&file, out.stdout).expect("htpasswd");
                format!(
                    "auth:\n  htpasswd: {{realm: stagecoach-test, path: {}}}\n",
                    file.display()
                )
            }
            None => String::new(),
        };
        let config = dir.path().join("config.yml");
        std::fs::write(
            &config,
            format!(
                "version: 0.1\nlog: {{level: info}}\nstorage:\n  filesystem: {{rootdirectory: {}}}\n  delete: {{enabled: true}}\nhttp:\n  addr: {addr}\n  secret: stagecoach-test\n{auth}",
                dir.path().join("data").display()
            ),
        )
        .expect("config");
        let child = spawn_registry(dir.path());
        let server = RegistryServer { addr, dir, child };
        server.wait_ready();
        server
    }

    /// Stops the registry process (its storage stays), as a registry that goes down.
    pub fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Starts it again on the same address and storage, after [`RegistryServer::stop`].
    pub fn start_again(&mut self) {
        self.child = spawn_registry(self.dir.path());
        self.wait_ready();
    }

    /// What the registry has logged so far (its requests among them).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("registry.log")).unwrap_or_default()
    }

    fn wait_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while http_status(&self.addr, "/v2/").is_none() {
            assert!(
                Instant::now() < deadline,
                "registry at {} did not start",
                self.addr
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Where the registry keeps a blob's bytes (for tests that corrupt one).
    pub fn blob_path(&self, digest: &str) -> std::path::PathBuf {
        let hex = digest.trim_start_matches("sha256:");
        self.dir
            .path()
            .join("data/docker/registry/v2/blobs/sha256")
            .join(&hex[..2])
            .join(hex)
            .join("data")
    }

    /// Repositories that hold anything at all (a blob, an upload, a manifest).
    pub fn repositories(&self) -> Vec<String> {
        let root = self.dir.path().join("data/docker/registry/v2/repositories");
        let mut found = Vec::new();
        collect_repositories(&root, &root, &mut found);
        found.sort();
        found
    }
}

/// `docker-registry serve` on the config in `dir`, logging to `dir/registry.log`.
fn spawn_registry(dir: &Path) -> Child {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join("registry.log"))
        .expect("log");
    Command::new("docker-registry")
        .arg("serve")
        .arg(dir.join("config.yml"))
        .env_remove("REGISTRY_ADDR")
        .stdin(Stdio::null())
        .stdout(log.try_clone().expect("log"))
        .stderr(log)
        .spawn()
        .expect("docker-registry")
}

fn collect_repositories(root: &Path, dir: &Path, found: &mut Vec<String>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.starts_with('_') {
            let repo = dir
                .strip_prefix(root)
                .expect("inside")
                .display()
                .to_string();
            if !found.contains(&repo) {
                found.push(repo);
            }
        } else if path.is_dir() {
            collect_repositories(root, &path, found);
        }
    }
}

impl Drop for RegistryServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The status of a GET on a plain-HTTP server, None when nothing answers.
fn http_status(addr: &str, path: &str) -> Option<u16> {
    let mut stream = TcpStream::connect(addr).ok()?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut line = String::new();
    BufReader::new(stream).read_line(&mut line).ok()?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// One request the proxy saw.
#[derive(Debug, Clone)]
pub struct Exchange {
    pub method: String,
    pub path: String,
    /// The status the client got.
    pub status: u16,
    /// Whether the registry saw it (false: the proxy answered with a failure).
    pub forwarded: bool,
    /// Order of arrival and of completion, on one clock for all requests.
    pub arrived: usize,
    pub completed: usize,
}

/// A failure the proxy answers with instead of passing a request on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// 503 Service Unavailable.
    Unavailable,
    /// 429 Too Many Requests with `Retry-After: 1`.
    TooManyRequests,
}

/// Decides, from a request's method and path, whether to fail it.
pub type FaultPlan = Box<dyn FnMut(&str, &str) -> Option<Fault> + Send>;

/// A loopback proxy in front of `upstream` that logs every request and fails those its
/// fault plan picks. One request per connection (`Connection: close`).
pub struct Proxy {
    pub addr: String,
    log: Arc<Mutex<Vec<Exchange>>>,
    stop: Arc<AtomicBool>,
}

impl std::fmt::Debug for Proxy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Proxy")
            .field("addr", &self.addr)
            .finish_non_exhaustive()
    }
}

impl Proxy {
    pub fn start(upstream: &str, faults: FaultPlan) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().expect("addr").to_string();
        let log = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let clock = Arc::new(AtomicUsize::new(0));
        let faults = Arc::new(Mutex::new(faults));
        let upstream = upstream.to_string();
        let (log2, stop2) = (Arc::clone(&log), Arc::clone(&stop));
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                if stop2.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(conn) = conn else { continue };
                let (log, clock, faults, upstream) = (
                    Arc::clone(&log2),
                    Arc::clone(&clock),
                    Arc::clone(&faults),
                    upstream.clone(),
                );
                std::thread::spawn(move || {
                    let _ = serve(conn, &upstream, &log, &clock, &faults);
                });
            }
        });
        Proxy { addr, log, stop }
    }

    /// Everything seen so far, in order of arrival.
    pub fn log(&self) -> Vec<Exchange> {
        let mut log = self.log.lock().expect("log").clone();
        log.sort_by_key(|e| e.arrived);
        log
    }

    pub fn clear(&self) {
        self.log.lock().expect("log").clear();
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect(&self.addr);
    }
}

fn serve(
    mut client: TcpStream,
    upstream: &str,
    log: &Mutex<Vec<Exchange>>,
    clock: &AtomicUsize,
    faults: &Mutex<FaultPlan>,
) -> std::io::Result<()> {
    let mut reader = BufReader::new(client.try_clone()?);
    let mut request_line = String::new();
    reader.read_line(&mut request_line)?;
    let mut parts = request_line.split_whitespace();
    let method = parts.next().unwrap_or_default().to_string();
    let path = parts.next().unwrap_or_default().to_string();
    let mut headers: Vec<(String, String)> = Vec::new();
    loop {
        let mut line = String::new();
        reader.read_line(&mut line)?;
        let line = line.trim_end();
        if line.is_empty() {
            break;
        }
        if let Some((k, v)) = line.split_once(':') {
            headers.push((k.trim().to_string(), v.trim().to_string()));
        }
    }
    let header = |name: &str| {
        headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.clone())
    };
    let body = if header("transfer-encoding").is_some_and(|v| v.contains("chunked")) {
        read_chunked(&mut reader)?
    } else {
        let length: usize = header("content-length")
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        let mut body = vec![0; length];
        reader.read_exact(&mut body)?;
        body
    };
    let arrived = clock.fetch_add(1, Ordering::SeqCst);
    let fault = (faults.lock().expect("faults"))(&method, &path);
    let (status, response, forwarded) = match fault {
        Some(Fault::Unavailable) => (
            503,
            b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\nConnection: close\r\n\r\n".to_vec(),
            false,
        ),
        Some(Fault::TooManyRequests) => (
            429,
            b"HTTP/1.1 429 Too Many Requests\r\nRetry-After: 1\r\nContent-Length: 0\r\nConnection: close\r\n\r\n".to_vec(),
            false,
        ),
        None => {
            let mut up = TcpStream::connect(upstream)?;
            let mut head = format!("{method} {path} HTTP/1.1\r\n");
            for (k, v) in &headers {
                let skip = ["connection", "transfer-encoding", "content-length"];
                if !skip.iter().any(|s| k.eq_ignore_ascii_case(s)) {
                    head.push_str(&format!("{k}: {v}\r\n"));
                }
            }
            if !body.is_empty() || matches!(method.as_str(), "POST" | "PUT" | "PATCH") {
                head.push_str(&format!("Content-Length: {}\r\n", body.len()));
            }
            head.push_str("Connection: close\r\n\r\n");
            up.write_all(head.as_bytes())?;
            up.write_all(&body)?;
            let mut response = Vec::new();
            up.read_to_end(&mut response)?;
            let status = String::from_utf8_lossy(&response[..response.len().min(16)])
                .split_whitespace()
                .nth(1)
                .and_then(|s| s.parse().ok())
                .unwrap_or(0);
            (status, response, true)
        }
    };
    client.write_all(&response)?;
    client.flush()?;
    log.lock().expect("log").push(Exchange {
        method,
        path,
        status,
        forwarded,
        arrived,
        completed: clock.fetch_add(1, Ordering::SeqCst),
    });
    Ok(())
}

fn read_chunked(reader: &mut impl BufRead) -> std::io::Result<Vec<u8>> {
    let mut body = Vec::new();
    loop {
        let mut size = String::new();
        reader.read_line(&mut size)?;
        let size = usize::from_str_radix(size.trim().split(';').next().unwrap_or("0"), 16)
            .map_err(std::io::Error::other)?;
        let mut chunk = vec![0; size + 2];
        reader.read_exact(&mut chunk)?;
        if size == 0 {
            return Ok(body);
        }
        body.extend_from_slice(&chunk[..size]);
    }
}

/// A Docker config.json with a username and password for `registry`, in `dir`.
pub fn auth_file(dir: &Path, registry: &str, user: &str, password: &str) -> PathBuf {
    let path = dir.join("config.json");
    let json = serde_json::json!({"auths": {registry: {"username": user, "password": password}}});
    std::fs::write(&path, json.to_string()).expect("auth file");
    path
}
