//! ADD of a URL: download to the pod's scratch space (never into the stage's root, never
//! holding the file in memory), verify `--checksum`, and keep the server's Last-Modified
//! time, as Docker does; the file then goes through the normal COPY rules.

use std::fs::File;
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

use sha2::{Digest as _, Sha256};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot download {url}: {source}")]
    Request {
        url: String,
        #[source]
        source: reqwest::Error,
    },
    #[error("cannot download {url}: HTTP {status}")]
    Status { url: String, status: u16 },
    #[error("checksum mismatch for {url}: expected {expected}, got {actual}")]
    Checksum {
        url: String,
        expected: String,
        actual: String,
    },
    #[error("unsupported --checksum {0:?} (sha256:<hex> is)")]
    ChecksumFormat(String),
    #[error("cannot write {path}")]
    Write {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// Downloads `url` into `dir` under the name the URL's path ends with; returns the file.
/// `ca_bundle` is the PEM bundle to trust: a stage runs on its own base image, which may
/// have none, so the builder brings the one of the builder image.
pub fn download(
    url: &str,
    dir: &Path,
    checksum: Option<&str>,
    ca_bundle: Option<&Path>,
) -> Result<PathBuf, Error> {
    let expected = checksum
        .map(|c| {
            c.strip_prefix("sha256:")
                .filter(|h| h.len() == 64 && h.chars().all(|c| c.is_ascii_hexdigit()))
                .map(str::to_ascii_lowercase)
                .ok_or_else(|| Error::ChecksumFormat(c.to_string()))
        })
        .transpose()?;
    let request = |source| Error::Request {
        url: url.to_string(),
        source,
    };
    // Only the given roots: the platform verifier fails in a root without certificates.
    let roots = match ca_bundle.and_then(|p| std::fs::read(p).ok()) {
        Some(pem) => reqwest::Certificate::from_pem_bundle(&pem).map_err(request)?,
        None => Vec::new(),
    };
    let client = reqwest::blocking::Client::builder().tls_certs_only(roots);
    let mut response = client
        .build()
        .map_err(request)?
        .get(url)
        .send()
        .map_err(request)?;
    if !response.status().is_success() {
        return Err(Error::Status {
            url: url.to_string(),
            status: response.status().as_u16(),
        });
    }
    let modified = response
        .headers()
        .get(reqwest::header::LAST_MODIFIED)
        .and_then(|v| v.to_str().ok())
        .and_then(httpdate_seconds);
    let name = file_name(url);
    let path = dir.join(&name);
    let write = |source| Error::Write {
        path: path.clone(),
        source,
    };
    std::fs::create_dir_all(dir).map_err(write)?;
    let mut file = File::create(&path).map_err(write)?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = response.read(&mut buf).map_err(write)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        file.write_all(&buf[..n]).map_err(write)?;
    }
    drop(file);
    let actual = hex::encode(hasher.finalize());
    if let Some(expected) = expected
        && expected != actual
    {
        let _ = std::fs::remove_file(&path);
        return Err(Error::Checksum {
            url: url.to_string(),
            expected: format!("sha256:{expected}"),
            actual: format!("sha256:{actual}"),
        });
    }
    // Docker: a downloaded file is 0600, with the server's modification time if given.
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).map_err(write)?;
    if let Some(secs) = modified {
        let t = filetime::FileTime::from_unix_time(secs, 0);
        filetime::set_file_mtime(&path, t).map_err(write)?;
    }
    Ok(path)
}

/// The last segment of the URL's path, or `download` when it has none.
fn file_name(url: &str) -> String {
    let path = url.split(['?', '#']).next().unwrap_or(url);
    let after_host = path.splitn(4, '/').nth(3).unwrap_or("");
    after_host
        .rsplit('/')
        .next()
        .filter(|n| !n.is_empty())
        .unwrap_or("download")
        .to_string()
}

/// Parses an HTTP date (`Sun, 06 Nov 1994 08:49:37 GMT`, RFC 2822's form) into Unix
/// seconds.
fn httpdate_seconds(s: &str) -> Option<i64> {
    jiff::fmt::rfc2822::DateTimeParser::new()
        .parse_timestamp(s)
        .ok()
        .map(|t| t.as_second())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{BufRead as _, BufReader};
    use std::net::TcpListener;

    /// A one-shot HTTP server on loopback serving `body`.
    fn serve(body: &'static [u8]) -> String {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().expect("addr");
        std::thread::spawn(move || {
            for stream in listener.incoming().take(4) {
                let mut stream = stream.expect("conn");
                let mut reader = BufReader::new(stream.try_clone().expect("clone"));
                let mut line = String::new();
                while reader.read_line(&mut line).is_ok_and(|n| n > 2) {
                    line.clear();
                }
                let head = format!(
                    "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nLast-Modified: Sun, 06 Nov 1994 08:49:37 GMT\r\nConnection: close\r\n\r\n",
                    body.len()
                );
                let _ = stream
                    .write_all(head.as_bytes())
                    .and_then(|()| stream.write_all(body));
            }
        });
        format!("http://{addr}/files/tool.sh?x=1")
    }

    #[test]
    fn downloads_verifies_and_keeps_the_time() {
        let url = serve(b"#!/bin/sh\necho hi\n");
        let dir = tempfile::tempdir().expect("tempdir");
        let sum = format!(
            "sha256:{}",
            hex::encode(Sha256::digest(b"#!/bin/sh\necho hi\n"))
        );
        let path = download(&url, dir.path(), Some(&sum), None).expect("download");
        assert_eq!(path.file_name().and_then(|n| n.to_str()), Some("tool.sh"));
        use std::os::unix::fs::MetadataExt as _;
        let meta = std::fs::metadata(&path).expect("meta");
        assert_eq!((meta.mode() & 0o777, meta.mtime()), (0o600, 784_111_777));
        let bad = format!("sha256:{}", "0".repeat(64));
        let err = download(&url, dir.path(), Some(&bad), None).expect_err("mismatch");
        assert!(
            err.to_string().starts_with("checksum mismatch for http://"),
            "{err}"
        );
        assert!(matches!(
            download(&url, dir.path(), Some("md5:1"), None),
            Err(Error::ChecksumFormat(_))
        ));
    }

    #[test]
    fn names_and_dates() {
        assert_eq!(file_name("https://h/a/b.tar.gz"), "b.tar.gz");
        assert_eq!(file_name("https://h/"), "download");
        assert_eq!(httpdate_seconds("Thu, 01 Jan 1970 00:00:00 GMT"), Some(0));
        assert_eq!(
            httpdate_seconds("Sun, 06 Nov 1994 08:49:37 GMT"),
            Some(784_111_777)
        );
        assert_eq!(httpdate_seconds("garbage"), None);
    }
}
