//! Any bytes a registry could send as a manifest, an index or an image config are read
//! the way a pull reads them: an error or a value, never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use stagecoach_builder::image_config::{ImageConfig, StageConfig};
use stagecoach_builder::oci::{self, Reference};
use stagecoach_plan::Platform;
use stagecoach_plan::scope::Scope;
use stagecoach_plan::shell::Lexer;

fuzz_target!(|data: &[u8]| {
    let reference: Reference = "registry.test/app:1".parse().expect("reference");
    let platform = Platform::default();
    // The first byte picks the Content-Type the registry claims, as a pull sees it.
    let (header, body) = match data.split_first() {
        Some((0, rest)) => (None, rest),
        Some((1, rest)) => (Some("application/vnd.oci.image.index.v1+json".to_string()), rest),
        Some((2, rest)) => (
            Some("application/vnd.docker.distribution.manifest.v2+json".to_string()),
            rest,
        ),
        _ => (None, data),
    };
    if let Ok(media_type) = oci::manifest_media_type(&reference, body, header) {
        let _ = oci::read_manifest(&reference, body, &media_type, &platform);
    }
    if let Ok(mut config) = serde_json::from_slice::<ImageConfig>(body) {
        config.ensure_path();
        let env = config.env_pairs();
        let _ = (config.shell(), config.working_dir());
        let stage = StageConfig::new(config, Scope::from_image_env(&env), Lexer::new('\\'));
        let _ = stage.expand("ENV", "$PATH:${HOME:-/root}");
        let json = serde_json::to_vec(&stage.config).expect("a config writes back");
        let _: ImageConfig = serde_json::from_slice(&json).expect("and reads back");
    }
});
