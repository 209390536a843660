//! `stagecoach-builder ssh-agent`: the agent behind `RUN --mount=type=ssh`. It runs in a
//! container of its own beside the stage container and is the only container of the pod
//! that mounts the ssh key Secrets, so RUN steps can use a key (through the socket on a
//! volume both containers share) but never read it. One socket per id; the stage pod
//! lends a socket to the RUN that mounts its id and writes [`DONE`] when it ends, which
//! stops the agent.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use signature::Signer as _;
use ssh_agent_lib::agent::{Session, listen};
use ssh_agent_lib::error::AgentError;
use ssh_agent_lib::proto::{Identity, SignRequest, signature::RSA_SHA2_512};
use ssh_key::{Algorithm, PrivateKey, Signature};

/// The file the stage container writes beside the sockets when it is done.
pub const DONE: &str = "done";

/// The largest key file read: an RSA key of 16384 bits is under 13 KiB.
const KEY_BYTES: u64 = 64 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot read the ssh key of id {id:?} ({path})")]
    Read {
        id: String,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "the ssh key of id {id:?} is not an OpenSSH private key without a passphrase: {message}"
    )]
    Key { id: String, message: String },
    #[error("cannot serve the agent socket {path}")]
    Socket {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// The socket of the `n`th key in the shared directory (an index: no id in a path).
pub fn socket_path(dir: &Path, n: usize) -> PathBuf {
    dir.join(format!("agent-{n}.sock"))
}

/// Reads an OpenSSH private key (bounded); encrypted keys are refused (no one could
/// type the passphrase).
pub fn read_key(id: &str, path: &Path) -> Result<PrivateKey, Error> {
    use std::io::Read as _;
    let mut text = Vec::new();
    std::fs::File::open(path)
        .and_then(|f| f.take(KEY_BYTES).read_to_end(&mut text))
        .map_err(|source| Error::Read {
            id: id.into(),
            path: path.into(),
            source,
        })?;
    let key_error = |message: String| Error::Key {
        id: id.into(),
        message,
    };
    let key = PrivateKey::from_openssh(&text).map_err(|e| key_error(e.to_string()))?;
    if key.is_encrypted() {
        return Err(key_error("it is encrypted".into()));
    }
    Ok(key)
}

/// One key's agent: lists the key and signs with it.
#[derive(Debug, Clone)]
struct KeyAgent {
    key: Arc<PrivateKey>,
    comment: String,
}

#[ssh_agent_lib::async_trait]
impl Session for KeyAgent {
    async fn request_identities(&mut self) -> Result<Vec<Identity>, AgentError> {
        Ok(vec![Identity {
            credential: self.key.public_key().key_data().clone().into(),
            comment: self.comment.clone(),
        }])
    }

    async fn sign(&mut self, request: SignRequest) -> Result<Signature, AgentError> {
        if request.credential.key_data() != self.key.public_key().key_data() {
            return Err(std::io::Error::other("no such key in this agent").into());
        }
        // ssh-key signs RSA with SHA-512 only, which OpenSSH asks for first.
        if matches!(self.key.algorithm(), Algorithm::Rsa { .. })
            && request.flags & RSA_SHA2_512 == 0
        {
            return Err(std::io::Error::other("RSA signatures are rsa-sha2-512 only").into());
        }
        self.key
            .try_sign(&request.data)
            .map_err(|e| std::io::Error::other(e.to_string()).into())
    }
}

/// Serves each key on its socket in `dir` until the stage container writes [`DONE`].
pub fn serve(keys: &[(String, PathBuf)], dir: &Path) -> Result<(), Error> {
    let mut agents = Vec::new();
    for (id, path) in keys {
        agents.push(KeyAgent {
            key: Arc::new(read_key(id, path)?),
            comment: format!("stagecoach build ssh id {id}"),
        });
    }
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|source| Error::Socket {
            path: dir.into(),
            source,
        })?;
    runtime.block_on(async {
        for (n, agent) in agents.into_iter().enumerate() {
            let path = socket_path(dir, n);
            let _ = std::fs::remove_file(&path);
            let listener =
                tokio::net::UnixListener::bind(&path).map_err(|source| Error::Socket {
                    path: path.clone(),
                    source,
                })?;
            // Root's only until a RUN mounts it with its uid, gid and mode.
            std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o600))
                .map_err(|source| Error::Socket {
                    path: path.clone(),
                    source,
                })?;
            tokio::spawn(listen(listener, agent));
        }
        while !dir.join(DONE).exists() {
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        Ok(())
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use ssh_agent_lib::client::Client;

    /// The agent lists the key and signs with it, over its socket; a signature checks
    /// out against the public key. It stops when told it is done.
    #[test]
    fn the_agent_lists_and_signs_with_its_key_and_stops_when_done() {
        let dir = tempfile::tempdir().expect("dir");
        let key_file = dir.path().join("key");
        let out = std::process::Command::new("ssh-keygen")
            .args(["-q", "-t", "ed25519", "-N", "", "-f"])
            .arg(&key_file)
            .output()
            .expect("ssh-keygen");
        assert!(out.status.success(), "{out:?}");
        let sockets = dir.path().join("sockets");
        std::fs::create_dir(&sockets).expect("mkdir");
        let keys = vec![("default".to_string(), key_file.clone())];
        let serving = {
            let sockets = sockets.clone();
            std::thread::spawn(move || serve(&keys, &sockets))
        };
        let socket = socket_path(&sockets, 0);
        for _ in 0..100 {
            if socket.exists() {
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let key = read_key("default", &key_file).expect("key");
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        runtime.block_on(async {
            let stream = tokio::net::UnixStream::connect(&socket)
                .await
                .expect("connect");
            let mut client = Client::new(stream);
            let ids = client.request_identities().await.expect("identities");
            assert_eq!(ids.len(), 1);
            assert_eq!(ids[0].credential.key_data(), key.public_key().key_data());
            let signature = client
                .sign(SignRequest {
                    credential: ids[0].credential.clone(),
                    data: b"session data".to_vec(),
                    flags: 0,
                })
                .await
                .expect("sign");
            use signature::Verifier as _;
            key.public_key()
                .key_data()
                .verify(b"session data", &signature)
                .expect("a valid signature");
        });
        std::fs::write(sockets.join(DONE), "").expect("done");
        serving.join().expect("thread").expect("served");

        std::fs::write(&key_file, "not a key").expect("write");
        assert!(matches!(read_key("x", &key_file), Err(Error::Key { .. })));
    }
}
