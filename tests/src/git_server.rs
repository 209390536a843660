//! Git servers on loopback for the source-pod tests: `git daemon` for `git://`, and
//! `git http-backend` behind a small HTTPS server of the test's own (Python's standard
//! library, a CA and certificate made with openssl) that demands basic auth.

use std::io::{BufRead as _, BufReader};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Runs git in `dir`, panicking on failure; returns its trimmed output.
pub fn git(dir: &Path, args: &[&str]) -> String {
    let out = Command::new("git")
        .arg("-C")
        .arg(dir)
        .args(["-c", "user.name=e2e", "-c", "user.email=e2e@stagecoach.dev"])
        .args(["-c", "protocol.file.allow=always"])
        .args(args)
        .output()
        .expect("git runs");
    assert!(
        out.status.success(),
        "git {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// Writes the files into the work tree and commits them all.
pub fn commit(work: &Path, files: &[(&str, &str)], message: &str) -> String {
    for (path, content) in files {
        let file = work.join(path);
        std::fs::create_dir_all(file.parent().expect("parent")).expect("mkdir");
        std::fs::write(&file, content).expect("write");
    }
    git(work, &["add", "-A"]);
    git(work, &["commit", "--quiet", "--allow-empty", "-m", message]);
    git(work, &["rev-parse", "HEAD"])
}

/// A port nobody listens on right now.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

fn wait_for(port: u16, child: &mut Child) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        if let Ok(Some(status)) = child.try_wait() {
            panic!("server on port {port} exited: {status}");
        }
        assert!(Instant::now() < deadline, "nothing listens on port {port}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// `git daemon` serving every repository below a directory; stopped on drop.
#[derive(Debug)]
pub struct GitDaemon {
    child: Child,
    pub port: u16,
}

impl GitDaemon {
    pub fn start(base: &Path) -> GitDaemon {
        let port = free_port();
        let mut child = Command::new("git")
            .arg("daemon")
            .arg("--export-all")
            .arg(format!("--base-path={}", base.display()))
            .args(["--listen=127.0.0.1", "--reuseaddr", "--informative-errors"])
            .arg(format!("--port={port}"))
            .arg(base)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("git daemon starts");
        wait_for(port, &mut child);
        GitDaemon { child, port }
    }

    /// The `git://` URL of a repository below the base directory.
    pub fn url(&self, repo: &str) -> String {
        format!("git://127.0.0.1:{}/{repo}", self.port)
    }
}

impl Drop for GitDaemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// An HTTPS git server with basic auth; stopped on drop.
#[derive(Debug)]
pub struct HttpsGit {
    child: Child,
    pub port: u16,
    /// The CA that signed the server's certificate (give it to clients as SSL_CERT_FILE).
    pub ca: PathBuf,
}

const SERVER: &str = r#"
import base64, http.server, os, ssl, subprocess, sys
root, user, password, cert, key = sys.argv[1:6]
want = "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()

class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def reply(self, status, headers, body):
        self.send_response(status)
        for k, v in headers:
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def serve(self):
        if self.headers.get("Authorization") != want:
            self.reply(401, [("WWW-Authenticate", 'Basic realm="git"')], b"unauthorized\n")
            return
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            data = b""
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip(), 16)
                if size == 0:
                    self.rfile.readline()
                    break
                data += self.rfile.read(size)
                self.rfile.readline()
        else:
            data = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        path, _, query = self.path.partition("?")
        env = dict(os.environ, GIT_PROJECT_ROOT=root, GIT_HTTP_EXPORT_ALL="1",
                   PATH_INFO=path, QUERY_STRING=query, REQUEST_METHOD=self.command,
                   CONTENT_TYPE=self.headers.get("Content-Type", ""),
                   CONTENT_LENGTH=str(len(data)), REMOTE_USER=user,
                   GIT_PROTOCOL=self.headers.get("Git-Protocol", ""),
                   HTTP_CONTENT_ENCODING=self.headers.get("Content-Encoding", ""))
        out = subprocess.run(["git", "http-backend"], input=data, env=env,
                             capture_output=True).stdout
        head, _, body = out.partition(b"\r\n\r\n")
        status, headers = 200, []
        for line in head.decode().split("\r\n"):
            name, _, value = line.partition(":")
            if name.lower() == "status":
                status = int(value.split()[0])
            elif name:
                headers.append((name, value.strip()))
        self.reply(status, headers, body)

    do_GET = serve
    do_POST = serve

    def log_message(self, *args):
        pass

server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
context.load_cert_chain(cert, key)
server.socket = context.wrap_socket(server.socket, server_side=True)
print(server.server_address[1], flush=True)
server.serve_forever()
"#;

impl HttpsGit {
    /// Serves the repositories below `base`; certificates and the script go to `dir`.
    pub fn start(base: &Path, dir: &Path, user: &str, password: &str) -> HttpsGit {
        std::fs::create_dir_all(dir).expect("mkdir");
        let openssl = |args: &[&str]| {
            let out = Command::new("openssl")
                .current_dir(dir)
                .args(args)
                .output()
                .expect("openssl runs");
            assert!(
                out.status.success(),
                "openssl {args:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        };
        openssl(&[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            "ca.key",
            "-out",
            "ca.pem",
            "-days",
            "2",
            "-subj",
            "/CN=stagecoach-e2e-ca",
            "-addext",
            "basicConstraints=critical,CA:TRUE",
            "-addext",
            "keyUsage=critical,keyCertSign",
        ]);
        openssl(&[
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            "server.key",
            "-out",
            "server.csr",
            "-subj",
            "/CN=127.0.0.1",
        ]);
        std::fs::write(
            dir.join("server.ext"),
            "subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth\nbasicConstraints=CA:FALSE\n",
        )
        .expect("write");
        openssl(&[
            "x509",
            "-req",
            "-in",
            "server.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            "server.pem",
            "-days",
            "2",
            "-extfile",
            "server.ext",
        ]);
        let script = dir.join("https_git.py");
        std::fs::write(&script, SERVER).expect("write");
        let mut child = Command::new("python3")
            .arg(&script)
            .arg(base)
            .args([user, password])
            .arg(dir.join("server.pem"))
            .arg(dir.join("server.key"))
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("python3 starts");
        let mut line = String::new();
        BufReader::new(child.stdout.take().expect("stdout"))
            .read_line(&mut line)
            .expect("the server prints its port");
        let port = line.trim().parse().expect("a port");
        wait_for(port, &mut child);
        HttpsGit {
            child,
            port,
            ca: dir.join("ca.pem"),
        }
    }

    pub fn url(&self, repo: &str) -> String {
        format!("https://127.0.0.1:{}/{repo}", self.port)
    }
}

impl Drop for HttpsGit {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `sshd` on loopback letting root in with a fresh key: `secret` is laid out like a
/// mounted `kubernetes.io/ssh-auth` Secret (`ssh-privatekey`, `known_hosts`), group- and
/// world-readable as a Secret volume may be. Needs root and openssh-server.
#[derive(Debug)]
pub struct SshServer {
    child: Child,
    pub port: u16,
    pub secret: PathBuf,
}

impl SshServer {
    pub fn start(dir: &Path) -> SshServer {
        assert!(
            Path::new("/usr/sbin/sshd").exists(),
            "the ssh tests need sshd: apt-get install openssh-server"
        );
        let secret = dir.join("secret");
        std::fs::create_dir_all(&secret).expect("mkdir");
        std::fs::create_dir_all("/run/sshd").expect("sshd's privilege separation directory");
        let keygen = |file: &str| {
            let out = Command::new("ssh-keygen")
                .args(["-q", "-t", "ed25519", "-N", "", "-f"])
                .arg(dir.join(file))
                .output()
                .expect("ssh-keygen runs");
            assert!(out.status.success(), "ssh-keygen: {out:?}");
        };
        keygen("host_key");
        keygen("client_key");
        std::fs::copy(dir.join("client_key.pub"), dir.join("authorized_keys")).expect("copy");
        std::fs::copy(dir.join("client_key"), secret.join("ssh-privatekey")).expect("copy");
        {
            use std::os::unix::fs::PermissionsExt as _;
            std::fs::set_permissions(
                secret.join("ssh-privatekey"),
                std::fs::Permissions::from_mode(0o644),
            )
            .expect("chmod");
        }
        let port = free_port();
        let host_key = std::fs::read_to_string(dir.join("host_key.pub")).expect("host key");
        std::fs::write(
            secret.join("known_hosts"),
            format!("[127.0.0.1]:{port} {host_key}"),
        )
        .expect("write");
        let config = dir.join("sshd_config");
        std::fs::write(
            &config,
            format!(
                "Port {port}\nListenAddress 127.0.0.1\nHostKey {host}\nAuthorizedKeysFile {keys}\n\
                 PasswordAuthentication no\nKbdInteractiveAuthentication no\n\
                 PermitRootLogin prohibit-password\nUsePAM no\nStrictModes no\nPidFile {pid}\n",
                host = dir.join("host_key").display(),
                keys = dir.join("authorized_keys").display(),
                pid = dir.join("sshd.pid").display(),
            ),
        )
        .expect("write");
        let mut child = Command::new("/usr/sbin/sshd")
            .args(["-D", "-e", "-f"])
            .arg(&config)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("sshd starts");
        wait_for(port, &mut child);
        SshServer {
            child,
            port,
            secret,
        }
    }

    /// The `ssh://` URL of a repository at an absolute path.
    pub fn url(&self, path: &Path) -> String {
        format!("ssh://root@127.0.0.1:{}{}", self.port, path.display())
    }
}

impl Drop for SshServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
