//! Registry credentials from a Docker `config.json` (the `.dockerconfigjson` of a
//! Kubernetes Secret), keyed by registry host so that Docker Hub's several names find
//! the same entry. [`Registry`](super::Registry) turns them into an `Authorization`.

use std::collections::BTreeMap;
use std::path::Path;

use base64::Engine as _;
use oci_client::secrets::RegistryAuth;
use serde::Deserialize;

use super::{Error, Result};

/// Registry credentials by registry host, from a Docker `config.json`.
#[derive(Debug, Clone, Default)]
pub struct Credentials {
    by_host: BTreeMap<String, Entry>,
}

#[derive(Debug, Clone)]
enum Entry {
    Auth(RegistryAuth),
    /// An OAuth refresh token (`identitytoken`): Docker trades it at the token endpoint,
    /// which oci-client's token flow does not do.
    IdentityToken,
}

#[derive(Deserialize)]
struct DockerConfig {
    #[serde(default)]
    auths: BTreeMap<String, DockerAuth>,
}

#[derive(Deserialize)]
struct DockerAuth {
    auth: Option<String>,
    username: Option<String>,
    password: Option<String>,
    identitytoken: Option<String>,
    registrytoken: Option<String>,
}

impl Credentials {
    /// Reads a Docker `config.json`.
    pub fn load(path: &Path) -> Result<Credentials> {
        let text = std::fs::read_to_string(path).map_err(|source| Error::CredentialsFile {
            path: path.to_path_buf(),
            source,
        })?;
        Credentials::parse(&text).map_err(|message| Error::CredentialsInvalid {
            path: path.to_path_buf(),
            message,
        })
    }

    /// The `auths` of a Docker `config.json`: `auth` (base64 `user:password`),
    /// `username`/`password`, or `registrytoken` (a bearer token) per registry.
    pub fn parse(json: &str) -> Result<Credentials, String> {
        let config: DockerConfig = serde_json::from_str(json).map_err(|e| e.to_string())?;
        let mut by_host = BTreeMap::new();
        for (key, entry) in config.auths {
            let parsed = if let Some(token) = entry.registrytoken.filter(|t| !t.is_empty()) {
                Entry::Auth(RegistryAuth::Bearer(token))
            } else if let Some(auth) = entry.auth.filter(|a| !a.is_empty()) {
                let decoded = base64::engine::general_purpose::STANDARD
                    .decode(auth.trim())
                    .map_err(|e| format!("{key}: auth is not base64: {e}"))?;
                let text =
                    String::from_utf8(decoded).map_err(|_| format!("{key}: auth is not text"))?;
                let (user, password) = text
                    .split_once(':')
                    .ok_or_else(|| format!("{key}: auth is not user:password"))?;
                Entry::Auth(RegistryAuth::Basic(user.to_string(), password.to_string()))
            } else if let (Some(user), Some(password)) = (entry.username, entry.password) {
                Entry::Auth(RegistryAuth::Basic(user, password))
            } else if entry.identitytoken.is_some() {
                Entry::IdentityToken
            } else {
                continue;
            };
            by_host.insert(host_key(&key), parsed);
        }
        Ok(Credentials { by_host })
    }

    /// The credentials for a registry (`docker.io`, `index.docker.io` and Docker's
    /// `https://index.docker.io/v1/` are one), anonymous when there are none.
    pub fn get(&self, registry: &str) -> Result<RegistryAuth, String> {
        match self.by_host.get(&host_key(registry)) {
            None => Ok(RegistryAuth::Anonymous),
            Some(Entry::Auth(auth)) => Ok(auth.clone()),
            Some(Entry::IdentityToken) => Err(format!(
                "the credentials for {registry} are an identity token, which is not supported: use a username and password or a registry token"
            )),
        }
    }
}

/// A registry's key in a `config.json`: the host without scheme or path, Docker Hub's
/// names as one.
fn host_key(name: &str) -> String {
    let name = name.trim();
    let name = name
        .strip_prefix("https://")
        .or_else(|| name.strip_prefix("http://"))
        .unwrap_or(name);
    let host = name.split('/').next().unwrap_or(name).to_ascii_lowercase();
    match host.as_str() {
        "index.docker.io" | "registry-1.docker.io" | "registry.hub.docker.com" => {
            "docker.io".to_string()
        }
        _ => host,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn docker_config_credentials_with_hub_aliases() {
        let json = r#"{"auths": {
            "https://index.docker.io/v1/": {"auth": "aHViOnNlY3JldA=="},
            "127.0.0.1:5001": {"username": "u", "password": "p:w"},
            "http://registry.example:8443/some/path": {"auth": "YTpiOmM="},
            "ghcr.io": {"registrytoken": "tok"},
            "quay.io": {"identitytoken": "refresh"},
            "empty.example": {}
        }}"#;
        let c = Credentials::parse(json).expect("parses");
        let hub = RegistryAuth::Basic("hub".into(), "secret".into());
        for name in [
            "docker.io",
            "index.docker.io",
            "https://index.docker.io/v1/",
            "registry-1.docker.io",
        ] {
            assert_eq!(c.get(name).expect("hub"), hub, "{name}");
        }
        assert_eq!(
            c.get("127.0.0.1:5001").expect("u"),
            RegistryAuth::Basic("u".into(), "p:w".into())
        );
        assert_eq!(
            c.get("registry.example:8443").expect("a"),
            RegistryAuth::Basic("a".into(), "b:c".into()),
            "the password is everything after the first colon"
        );
        assert_eq!(
            c.get("ghcr.io").expect("token"),
            RegistryAuth::Bearer("tok".into())
        );
        assert_eq!(
            c.get("elsewhere.example").expect("none"),
            RegistryAuth::Anonymous
        );
        assert_eq!(
            c.get("empty.example").expect("none"),
            RegistryAuth::Anonymous
        );
        assert!(
            c.get("quay.io")
                .expect_err("unsupported")
                .contains("identity token")
        );
        assert!(Credentials::parse(r#"{"auths": {"x": {"auth": "!!"}}}"#).is_err());
        assert!(Credentials::parse("not json").is_err());
    }
}
