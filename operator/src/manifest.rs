//! Reading an ImageBuild manifest as strictly as the API server does.
//!
//! The API server rejects fields its schema does not know (strict field validation);
//! serde ignores them, so a misspelt `revison: main` would build the default branch. A
//! manifest is therefore read twice: once into a tree that keeps every key's line, which
//! is checked against the CRD's own OpenAPI schema (every unknown field is reported,
//! with the nearest valid name), and once into [`ImageBuild`] for the types.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::LazyLock;

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::{
    JSONSchemaProps, JSONSchemaPropsOrArray, JSONSchemaPropsOrBool,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::{CustomResourceExt as _, Resource as _};
use serde::de::{self, Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_saphyr::Spanned;

use crate::api::ImageBuild;

/// Unknown fields are listed with the valid ones when there are at most this many.
const LIST_AT_MOST: usize = 8;

/// Why a manifest is not a valid ImageBuild.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ManifestError {
    /// Fields the ImageBuild schema does not have, or a document that is not an
    /// ImageBuild (wrong `apiVersion` or `kind`): every problem found, in file order.
    Schema {
        file: PathBuf,
        problems: Vec<Problem>,
    },
    /// Not YAML, or a value of the wrong type: serde-saphyr's message, which says where.
    Invalid { file: PathBuf, message: String },
}

/// One thing wrong in a manifest, at a line (1-based).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub line: u64,
    pub message: String,
}

impl fmt::Display for ManifestError {
    /// `file:line: message`, one problem a line.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Schema { file, problems } => {
                for (i, problem) in problems.iter().enumerate() {
                    if i > 0 {
                        writeln!(f)?;
                    }
                    write!(
                        f,
                        "{}:{}: {}",
                        file.display(),
                        problem.line,
                        problem.message
                    )?;
                }
                Ok(())
            }
            Self::Invalid { file, message } => write!(f, "{}: {message}", file.display()),
        }
    }
}

impl std::error::Error for ManifestError {}

/// Reads one ImageBuild from the YAML `text` of `file` (named in messages only): unknown
/// fields anywhere, and an `apiVersion` or `kind` other than ImageBuild's, are errors, as
/// they are for the API server with strict field validation.
pub fn read_image_build(text: &str, file: &Path) -> Result<ImageBuild, ManifestError> {
    // Text that is not even a tree of string-keyed maps (bad YAML, a complex key) gets
    // serde-saphyr's message from the typed read below.
    if let Ok(documents) = serde_saphyr::from_multiple::<Node>(text) {
        let problems = match documents.as_slice() {
            [root] => check_document(root),
            [_, second, ..] => vec![Problem {
                line: second.referenced.line(),
                message: "a second YAML document; the file must hold one ImageBuild".into(),
            }],
            [] => vec![],
        };
        if !problems.is_empty() {
            return Err(ManifestError::Schema {
                file: file.to_path_buf(),
                problems,
            });
        }
    }
    let invalid = |message: String| ManifestError::Invalid {
        file: file.to_path_buf(),
        message,
    };
    // Every document, so that a trailing `---` (empty) is no second ImageBuild.
    let mut builds: Vec<ImageBuild> = serde_saphyr::from_multiple(text).map_err(|e| {
        let name = file.display().to_string();
        let rendered = e.render_with_options(serde_saphyr::render_options! {
            source_name: Some(&name),
        });
        // `error: ` is the caller's to add.
        invalid(
            rendered
                .strip_prefix("error: ")
                .unwrap_or(&rendered)
                .to_owned(),
        )
    })?;
    match (builds.pop(), builds.is_empty()) {
        (Some(build), true) => Ok(build),
        (Some(_), false) => Err(invalid(
            "more than one YAML document; the file must hold one ImageBuild".into(),
        )),
        (None, _) => Err(invalid("no YAML document; expected an ImageBuild".into())),
    }
}

/// A YAML node and where it is.
type Node = Spanned<Tree>;

/// What of a YAML document the schema check needs: its shape, string scalars (for
/// `apiVersion` and `kind`), and the line of every key and value.
#[derive(Debug)]
enum Tree {
    /// A scalar; the text of a string, `None` for numbers, booleans and null.
    Scalar(Option<String>),
    Seq(Vec<Node>),
    Map(Vec<(Spanned<String>, Node)>),
}

impl<'de> Deserialize<'de> for Tree {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(TreeVisitor)
    }
}

struct TreeVisitor;

impl<'de> Visitor<'de> for TreeVisitor {
    type Value = Tree;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any YAML value")
    }

    fn visit_bool<E: de::Error>(self, _: bool) -> Result<Tree, E> {
        Ok(Tree::Scalar(None))
    }

    fn visit_i64<E: de::Error>(self, _: i64) -> Result<Tree, E> {
        Ok(Tree::Scalar(None))
    }

    fn visit_i128<E: de::Error>(self, _: i128) -> Result<Tree, E> {
        Ok(Tree::Scalar(None))
    }

    fn visit_u64<E: de::Error>(self, _: u64) -> Result<Tree, E> {
        Ok(Tree::Scalar(None))
    }

    fn visit_u128<E: de::Error>(self, _: u128) -> Result<Tree, E> {
        Ok(Tree::Scalar(None))
    }

    fn visit_f64<E: de::Error>(self, _: f64) -> Result<Tree, E> {
        Ok(Tree::Scalar(None))
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Tree, E> {
        Ok(Tree::Scalar(Some(v.to_owned())))
    }

    fn visit_string<E: de::Error>(self, v: String) -> Result<Tree, E> {
        Ok(Tree::Scalar(Some(v)))
    }

    fn visit_bytes<E: de::Error>(self, _: &[u8]) -> Result<Tree, E> {
        Ok(Tree::Scalar(None))
    }

    fn visit_unit<E: de::Error>(self) -> Result<Tree, E> {
        Ok(Tree::Scalar(None))
    }

    fn visit_none<E: de::Error>(self) -> Result<Tree, E> {
        Ok(Tree::Scalar(None))
    }

    fn visit_some<D: Deserializer<'de>>(self, deserializer: D) -> Result<Tree, D::Error> {
        Tree::deserialize(deserializer)
    }

    fn visit_newtype_struct<D: Deserializer<'de>>(self, deserializer: D) -> Result<Tree, D::Error> {
        Tree::deserialize(deserializer)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Tree, A::Error> {
        let mut items = Vec::new();
        while let Some(item) = seq.next_element()? {
            items.push(item);
        }
        Ok(Tree::Seq(items))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Tree, A::Error> {
        let mut entries = Vec::new();
        while let Some(entry) = map.next_entry()? {
            entries.push(entry);
        }
        Ok(Tree::Map(entries))
    }
}

/// The schema of a whole ImageBuild document: the CRD's (`spec`, `status`) with the
/// fields every object has, `metadata` being ObjectMeta's own schema.
static DOCUMENT_SCHEMA: LazyLock<JSONSchemaProps> = LazyLock::new(|| {
    let mut schema = ImageBuild::crd()
        .spec
        .versions
        .into_iter()
        .next()
        .and_then(|version| version.schema)
        .and_then(|validation| validation.open_api_v3_schema)
        .expect("the ImageBuild CRD has a schema");
    let string = JSONSchemaProps {
        type_: Some("string".into()),
        ..Default::default()
    };
    let properties = schema.properties.get_or_insert_with(BTreeMap::new);
    properties.insert("apiVersion".into(), string.clone());
    properties.insert("kind".into(), string);
    properties.insert("metadata".into(), object_meta_schema());
    schema
});

/// ObjectMeta's schema, generated as kube generates the CRD's (inline, structural).
fn object_meta_schema() -> JSONSchemaProps {
    let generator = schemars::generate::SchemaSettings::openapi3()
        .with(|s| {
            s.inline_subschemas = true;
            s.meta_schema = None;
        })
        .with_transform(kube::core::schema::StructuralSchemaRewriter)
        .into_generator();
    serde_json::to_value(generator.into_root_schema_for::<ObjectMeta>())
        .and_then(serde_json::from_value)
        .expect("ObjectMeta's schema is a JSONSchemaProps")
}

/// Everything wrong with a document's fields, in file order.
fn check_document(root: &Node) -> Vec<Problem> {
    let Tree::Map(entries) = &root.value else {
        // Not a mapping: the typed read says what is wrong.
        return vec![];
    };
    let mut problems = vec![];
    for (field, expected) in [
        ("apiVersion", ImageBuild::api_version(&())),
        ("kind", ImageBuild::kind(&())),
    ] {
        let found = entries.iter().find(|(key, _)| key.value == field);
        let (line, message) = match found.map(|(_, value)| (&value.value, value)) {
            Some((Tree::Scalar(Some(value)), _)) if *value == expected => continue,
            Some((Tree::Scalar(Some(value)), node)) => (
                node.referenced.line(),
                format!("{field} is `{value}`; an ImageBuild has `{field}: {expected}`"),
            ),
            Some((_, node)) => (
                node.referenced.line(),
                format!("{field} is not a string; an ImageBuild has `{field}: {expected}`"),
            ),
            None => (
                root.referenced.line(),
                format!("no {field}; an ImageBuild has `{field}: {expected}`"),
            ),
        };
        problems.push(Problem { line, message });
    }
    if !problems.is_empty() {
        // Another kind of object: its fields would only add noise.
        return problems;
    }
    check(root, &DOCUMENT_SCHEMA, "", &mut problems);
    problems
}

/// Checks `node` (at `path`) against `schema`, as the API server's unknown-field
/// detection does: an object with `properties` has no other fields, a map
/// (`additionalProperties`) any, whose values are checked; a list's items are checked;
/// `x-kubernetes-preserve-unknown-fields` keeps what the schema does not name.
fn check(node: &Node, schema: &JSONSchemaProps, path: &str, problems: &mut Vec<Problem>) {
    match &node.value {
        Tree::Scalar(_) => {}
        Tree::Seq(items) => match &schema.items {
            Some(JSONSchemaPropsOrArray::Schema(item)) => {
                for (i, value) in items.iter().enumerate() {
                    check(value, item, &format!("{path}[{i}]"), problems);
                }
            }
            Some(JSONSchemaPropsOrArray::Schemas(schemas)) => {
                for (i, (value, item)) in items.iter().zip(schemas).enumerate() {
                    check(value, item, &format!("{path}[{i}]"), problems);
                }
            }
            None => {}
        },
        Tree::Map(entries) => {
            let preserve = schema.x_kubernetes_preserve_unknown_fields == Some(true);
            for (key, value) in entries {
                let child = child_path(path, &key.value);
                let known = schema.properties.as_ref().and_then(|p| p.get(&key.value));
                match (known, &schema.additional_properties) {
                    (Some(field), _) => check(value, field, &child, problems),
                    (None, Some(JSONSchemaPropsOrBool::Schema(values))) => {
                        check(value, values, &child, problems);
                    }
                    (None, Some(JSONSchemaPropsOrBool::Bool(true))) => {}
                    (None, _) if preserve => {}
                    (None, _) => {
                        // Without `properties` the schema says nothing of the fields (a
                        // free-form object): only named fields are checked.
                        if let Some(properties) = &schema.properties {
                            problems.push(Problem {
                                line: key.referenced.line(),
                                message: unknown_field(&key.value, path, properties),
                            });
                        }
                    }
                }
            }
        }
    }
}

/// `spec.source`, `spec.resources.stages.build`, `metadata.labels["app.kubernetes.io/name"]`.
fn child_path(path: &str, key: &str) -> String {
    let plain = !key.is_empty()
        && key
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
    match (path.is_empty(), plain) {
        (true, true) => key.to_owned(),
        (false, true) => format!("{path}.{key}"),
        (_, false) => format!("{path}[{key:?}]"),
    }
}

/// The message for an unknown `key` of the object at `path`: the nearest valid name if
/// one is close, else the valid names if they are few.
fn unknown_field(key: &str, path: &str, properties: &BTreeMap<String, JSONSchemaProps>) -> String {
    let place = if path.is_empty() {
        "at the top level".to_owned()
    } else {
        format!("in {path}")
    };
    let mut message = format!("unknown field `{key}` {place}");
    if let Some(near) = nearest(key, properties.keys().map(String::as_str)) {
        message.push_str(&format!("; did you mean `{near}`?"));
    } else if properties.len() <= LIST_AT_MOST {
        let names: Vec<String> = properties.keys().map(|name| format!("`{name}`")).collect();
        message.push_str(&format!("; expected one of {}", names.join(", ")));
    }
    message
}

/// The valid name `key` was most likely meant to be: the planner's rule for "did you
/// mean" (a few edits at most), or the same name in another case (`Revision`), which that
/// rule leaves alone as no typo but the API server's field names do not match.
fn nearest<'c>(key: &str, names: impl Iterator<Item = &'c str> + Clone) -> Option<&'c str> {
    names
        .clone()
        .find(|name| name.eq_ignore_ascii_case(key))
        .or_else(|| stagecoach_plan::suggest::nearest(key, names))
}

#[cfg(test)]
mod tests {
    use super::*;

    const FILE: &str = "build.yaml";

    /// A valid manifest; the tests change one line of it.
    const VALID: &str = "\
apiVersion: stagecoach.dev/v1alpha1
kind: ImageBuild
metadata:
  name: hello
  labels:
    app.kubernetes.io/name: hello
    anything-at-all: 'yes'
spec:
  source:
    git:
      url: https://example.com/app.git
      revision: main
  buildArgs:
    - name: VERSION
      value: '1.0'
  output:
    image: registry.example.com/app:1
    labels:
      org.opencontainers.image.source: https://example.com/app
  resources:
    stages:
      build:
        limits: {memory: 1Gi}
";

    fn read(text: &str) -> Result<ImageBuild, ManifestError> {
        read_image_build(text, Path::new(FILE))
    }

    fn error(text: &str) -> String {
        match read(text) {
            Ok(build) => panic!("read {build:?} from:\n{text}"),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn every_example_reads() {
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../examples");
        let mut read_any = false;
        for entry in std::fs::read_dir(dir).expect("examples/") {
            let path = entry.expect("an entry").path();
            if !path.to_string_lossy().ends_with(".imagebuild.yaml") {
                continue;
            }
            let text = std::fs::read_to_string(&path).expect("readable");
            // A file may hold several ImageBuilds for `kubectl apply`; each is read alone.
            for document in text.split("\n---\n") {
                if let Err(e) = read_image_build(document, &path) {
                    panic!("{e}");
                }
                read_any = true;
            }
        }
        assert!(read_any, "no examples in {dir}");
    }

    #[test]
    fn a_valid_manifest_reads() {
        let build = read(VALID).expect("valid");
        assert_eq!(
            build
                .spec
                .source
                .git
                .as_ref()
                .and_then(|g| g.revision.as_deref()),
            Some("main")
        );
        assert_eq!(build.metadata.labels.expect("labels").len(), 2);
    }

    #[test]
    fn unknown_fields_are_reported() {
        let cases: &[(&str, &str, &str, &str)] = &[
            (
                "a typo names the nearest field",
                "      revision: main",
                "      revison: main",
                "build.yaml:12: unknown field `revison` in spec.source.git; did you mean `revision`?",
            ),
            (
                "case and separators are forgiven",
                "  buildArgs:",
                "  build_args:",
                "build.yaml:13: unknown field `build_args` in spec; did you mean `buildArgs`?",
            ),
            (
                "no close name among many: no list",
                "  buildArgs:",
                "  turbo: true\n  buildArgs:",
                "build.yaml:13: unknown field `turbo` in spec",
            ),
            (
                "no close name among few: the list",
                "      revision: main",
                "      branch: main",
                "build.yaml:12: unknown field `branch` in spec.source.git; expected one of `revision`, `secretRef`, `url`",
            ),
            (
                "inside a list item",
                "      value: '1.0'",
                "      vaule: '1.0'",
                "build.yaml:15: unknown field `vaule` in spec.buildArgs[0]; did you mean `value`?",
            ),
            (
                "inside a map's value",
                "        limits: {memory: 1Gi}",
                "        limit: {memory: 1Gi}",
                "build.yaml:23: unknown field `limit` in spec.resources.stages.build; did you mean `limits`?",
            ),
            (
                "in metadata",
                "  name: hello",
                "  nmae: hello",
                "build.yaml:4: unknown field `nmae` in metadata; did you mean `name`?",
            ),
            (
                "in a list of metadata",
                "  name: hello",
                "  name: hello\n  ownerReferences:\n    - {apiVersion: v1, kind: Pod, name: p, uid: u, controler: true}",
                "build.yaml:6: unknown field `controler` in metadata.ownerReferences[0]; did you mean `controller`?",
            ),
            (
                "at the top level",
                "spec:",
                "spce:",
                "build.yaml:8: unknown field `spce` at the top level; did you mean `spec`?",
            ),
        ];
        for (what, line, replacement, expected) in cases {
            assert!(VALID.contains(line), "{what}: {line:?} is not in VALID");
            let text = VALID.replacen(line, replacement, 1);
            assert_eq!(error(&text), *expected, "{what}");
        }
    }

    #[test]
    fn every_unknown_field_is_reported() {
        let text = VALID
            .replacen("      revision: main", "      revison: main", 1)
            .replacen("    image:", "    imag:", 1);
        let expected = "build.yaml:12: unknown field `revison` in spec.source.git; did you mean `revision`?\n\
                        build.yaml:17: unknown field `imag` in spec.output; did you mean `image`?";
        assert_eq!(error(&text), expected);
        let Err(ManifestError::Schema { problems, .. }) = read(&text) else {
            panic!("not a schema error");
        };
        assert_eq!(problems.len(), 2);
    }

    #[test]
    fn maps_take_any_key() {
        let text = VALID.replacen(
            "    anything-at-all: 'yes'",
            "    anything-at-all: 'yes'\n    revison: typo-but-a-label",
            1,
        );
        let build = read(&text).expect("labels are a map");
        assert!(
            build
                .metadata
                .labels
                .expect("labels")
                .contains_key("revison")
        );
    }

    #[test]
    fn other_kinds_of_object_are_refused() {
        let cases: &[(&str, &str, &str)] = &[
            (
                "apiVersion: stagecoach.dev/v1alpha1",
                "apiVersion: stagecoach.dev/v1",
                "build.yaml:1: apiVersion is `stagecoach.dev/v1`; an ImageBuild has `apiVersion: stagecoach.dev/v1alpha1`",
            ),
            (
                "kind: ImageBuild",
                "kind: Pod",
                "build.yaml:2: kind is `Pod`; an ImageBuild has `kind: ImageBuild`",
            ),
            (
                "kind: ImageBuild\n",
                "",
                "build.yaml:1: no kind; an ImageBuild has `kind: ImageBuild`",
            ),
            (
                "kind: ImageBuild",
                "kind: [ImageBuild]",
                "build.yaml:2: kind is not a string; an ImageBuild has `kind: ImageBuild`",
            ),
        ];
        for (line, replacement, expected) in cases {
            let text = VALID.replacen(line, replacement, 1);
            assert_eq!(error(&text), *expected, "{replacement:?}");
        }
    }

    #[test]
    fn type_errors_keep_serde_saphyrs_location() {
        let text = VALID.replacen("  buildArgs:", "  retries: many\n  buildArgs:", 1);
        let message = error(&text);
        assert!(
            message.starts_with("build.yaml: line 13 column 12: "),
            "{message}"
        );
        // The snippet names the file too.
        assert!(message.contains("--> build.yaml:13:12"), "{message}");
        assert!(matches!(read(&text), Err(ManifestError::Invalid { .. })));
    }

    #[test]
    fn one_document_a_file() {
        assert!(read(&format!("{VALID}---\n")).is_ok(), "a trailing ---");
        assert_eq!(
            error(&format!("{VALID}---\n{VALID}")),
            "build.yaml:25: a second YAML document; the file must hold one ImageBuild"
        );
        assert_eq!(
            error("# nothing\n"),
            "build.yaml: no YAML document; expected an ImageBuild"
        );
    }

    #[test]
    fn bad_yaml_is_serde_saphyrs_message() {
        let message = error("spec: [unclosed\n");
        assert!(message.starts_with("build.yaml: "), "{message}");
    }

    #[test]
    fn metadata_has_objectmetas_fields() {
        let Some(metadata) = DOCUMENT_SCHEMA
            .properties
            .as_ref()
            .and_then(|p| p.get("metadata"))
        else {
            panic!("no metadata in the schema");
        };
        let fields = metadata.properties.as_ref().expect("ObjectMeta's fields");
        for name in [
            "name",
            "namespace",
            "labels",
            "annotations",
            "generateName",
            "finalizers",
            "ownerReferences",
            "uid",
        ] {
            assert!(fields.contains_key(name), "metadata lacks {name}");
        }
    }

    #[test]
    fn nearest_names_only_close_ones() {
        let names = ["revision", "secretRef", "url"];
        for (key, expected) in [
            ("revison", Some("revision")),
            ("revsiion", Some("revision")),
            ("Revision", Some("revision")),
            ("secret_ref", Some("secretRef")),
            ("uri", Some("url")),
            ("branch", None),
            ("ref", None),
        ] {
            assert_eq!(nearest(key, names.into_iter()), expected, "{key}");
        }
    }
}
