//! Push of an image of about 1 GiB in several layers to the local registry, with the
//! assemble pod's registry code, beside `skopeo copy` of the same image from an OCI
//! layout, in one run. The layers are random bytes made afresh each run, so neither
//! push finds anything already in the registry (nor in skopeo's blob cache).
//!
//! `cargo bench -p stagecoach-builder --bench push`; `REGISTRY` (default
//! 127.0.0.1:5000, started by `scripts/registry.sh start`), `BENCH_MIB` (1024),
//! `BENCH_LAYERS` (5), `BENCH_JOBS` (3, uploads at once). Each run leaves its two
//! repositories (`bench/…`) and about 1 GiB of blobs in the registry until it is
//! garbage-collected.

use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use sha2::{Digest as _, Sha256};
use stagecoach_builder::layer::Hashing;
use stagecoach_builder::oci::{self, Blob, BlobSource, Registry, Settings};

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Random bytes (xorshift64*): incompressible, cheap, different every run.
struct Noise {
    state: u64,
    left: u64,
}

impl Read for Noise {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = buf.len().min(self.left as usize) & !7;
        let n = if n == 0 {
            buf.len().min(self.left as usize)
        } else {
            n
        };
        for chunk in buf[..n].chunks_mut(8) {
            self.state ^= self.state >> 12;
            self.state ^= self.state << 25;
            self.state ^= self.state >> 27;
            let word = self.state.wrapping_mul(0x2545_f491_4f6c_dd1d).to_le_bytes();
            chunk.copy_from_slice(&word[..chunk.len()]);
        }
        self.left -= n as u64;
        Ok(n)
    }
}

/// One gzip layer holding one file of random bytes; returns (digest, diff id, size).
fn write_layer(dir: &Path, seed: u64, bytes: u64) -> io::Result<(String, String, u64)> {
    let tmp = dir.join("layer.tmp");
    let file = io::BufWriter::new(std::fs::File::create(&tmp)?);
    let gzip = flate2::write::GzEncoder::new(Hashing::new(file), flate2::Compression::fast());
    let mut tar = tar::Builder::new(Hashing::new(gzip));
    let mut header = tar::Header::new_gnu();
    header.set_size(bytes);
    header.set_mode(0o644);
    header.set_uid(0);
    header.set_gid(0);
    header.set_mtime(0);
    header.set_entry_type(tar::EntryType::Regular);
    let noise = Noise {
        state: seed | 1,
        left: bytes,
    };
    tar.append_data(&mut header, format!("data/{seed:x}.bin"), noise)?;
    let (gzip, diff_id, _) = tar.into_inner()?.finish();
    let (file, blob, size) = gzip.finish()?.finish();
    file.into_inner().map_err(io::Error::other)?;
    std::fs::rename(&tmp, blob_path(dir, &blob))?;
    Ok((blob, diff_id, size))
}

fn blob_path(layout: &Path, digest: &str) -> PathBuf {
    layout
        .join("blobs/sha256")
        .join(digest.trim_start_matches("sha256:"))
}

fn write_blob(layout: &Path, bytes: &[u8]) -> io::Result<(String, u64)> {
    let digest = format!("sha256:{}", hex::encode(Sha256::digest(bytes)));
    std::fs::write(blob_path(layout, &digest), bytes)?;
    Ok((digest, bytes.len() as u64))
}

struct Image {
    blobs: Vec<Blob>,
    manifest: Bytes,
    bytes: u64,
}

/// An OCI layout (tag `bench`) with `layers` layers of `mib` MiB in all.
fn make_layout(layout: &Path, mib: u64, layers: u64) -> io::Result<Image> {
    std::fs::create_dir_all(layout.join("blobs/sha256"))?;
    std::fs::write(
        layout.join("oci-layout"),
        r#"{"imageLayoutVersion":"1.0.0"}"#,
    )?;
    let run = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(1, |d| d.as_nanos() as u64);
    let mut blobs = Vec::new();
    let mut descriptors = Vec::new();
    let mut diff_ids = Vec::new();
    let mut total = 0;
    for n in 0..layers {
        let (digest, diff_id, size) =
            write_layer(layout, run ^ (n + 1) << 48, (mib << 20) / layers)?;
        descriptors.push(serde_json::json!({
            "mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
            "digest": digest, "size": size,
        }));
        diff_ids.push(diff_id);
        total += size;
        blobs.push(Blob {
            size,
            source: BlobSource::File(blob_path(layout, &digest)),
            digest,
        });
    }
    let config = serde_json::json!({
        "architecture": "amd64", "os": "linux",
        "config": {"Cmd": ["/bin/true"]},
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
    });
    let config = serde_json::to_vec(&config).map_err(io::Error::other)?;
    let (config_digest, config_size) = write_blob(layout, &config)?;
    blobs.push(Blob {
        digest: config_digest.clone(),
        size: config_size,
        source: BlobSource::Bytes(Bytes::from(config)),
    });
    let manifest = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": config_digest, "size": config_size},
        "layers": descriptors,
    }))
    .map_err(io::Error::other)?;
    let (manifest_digest, manifest_size) = write_blob(layout, &manifest)?;
    let index = serde_json::json!({
        "schemaVersion": 2,
        "manifests": [{
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": manifest_digest, "size": manifest_size,
            "annotations": {"org.opencontainers.image.ref.name": "bench"},
        }],
    });
    std::fs::write(layout.join("index.json"), index.to_string())?;
    Ok(Image {
        blobs,
        manifest: Bytes::from(manifest),
        bytes: total + config_size,
    })
}

fn rate(bytes: u64, seconds: f64) -> f64 {
    bytes as f64 / f64::from(1 << 20) / seconds
}

fn main() {
    let registry_addr = std::env::var("REGISTRY").unwrap_or_else(|_| "127.0.0.1:5000".into());
    let mib: u64 = env_or("BENCH_MIB", 1024);
    let layers: u64 = env_or("BENCH_LAYERS", 5).max(1);
    let jobs: usize = env_or("BENCH_JOBS", 3);
    let dir = tempfile::tempdir().expect("tempdir");
    let layout = dir.path().join("layout");

    let started = Instant::now();
    let image = make_layout(&layout, mib, layers).expect("OCI layout");
    println!(
        "image: {} layers + config, {:.1} MiB compressed (made in {:.1} s)",
        layers,
        image.bytes as f64 / f64::from(1 << 20),
        started.elapsed().as_secs_f64()
    );
    let id = format!(
        "{:x}",
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos())
    );

    let settings = Settings {
        insecure: vec![registry_addr.clone()],
        ..Settings::default()
    };
    let target = oci::parse_reference(&format!("{registry_addr}/bench/stagecoach-{id}:1"))
        .expect("reference");
    let runtime = oci::runtime().expect("runtime");
    let started = Instant::now();
    let pushed = runtime
        .block_on(async {
            let client = Registry::new(&settings)?;
            client
                .push(
                    &target,
                    &image.blobs,
                    &image.manifest,
                    "application/vnd.oci.image.manifest.v1+json",
                    &[],
                    jobs,
                )
                .await
        })
        .expect("push");
    let ours = started.elapsed().as_secs_f64();
    assert_eq!(
        pushed.blobs.pushed,
        image.blobs.len(),
        "everything is uploaded"
    );

    let containers = Path::new(env!("CARGO_MANIFEST_DIR")).join("../containers");
    let started = Instant::now();
    let out = Command::new("skopeo")
        .env("CONTAINERS_CONF", containers.join("containers.conf"))
        .env(
            "CONTAINERS_REGISTRIES_CONF",
            containers.join("registries.conf"),
        )
        .args(["copy", "--quiet", "--dest-tls-verify=false"])
        .arg(format!("oci:{}:bench", layout.display()))
        .arg(format!("docker://{registry_addr}/bench/skopeo-{id}:1"))
        .output()
        .expect("skopeo");
    let skopeo = started.elapsed().as_secs_f64();
    assert!(
        out.status.success(),
        "skopeo copy failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );

    println!("push to {registry_addr}, one run:");
    println!(
        "  stagecoach-builder push ({jobs} at once): {ours:6.2} s  {:6.1} MiB/s",
        rate(image.bytes, ours)
    );
    println!(
        "  skopeo copy oci: -> docker://:          {skopeo:6.2} s  {:6.1} MiB/s",
        rate(image.bytes, skopeo)
    );
}
