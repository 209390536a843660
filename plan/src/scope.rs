//! Variable scopes: which ARG and ENV values an instruction sees, BuildKit's rules.
//!
//! The planner walks stages with the variables the Dockerfile itself defines; the stage
//! pod walks the same stage again starting from the base image's environment. Both use
//! this one implementation, so the two can never disagree on scoping.

use std::cell::RefCell;
use std::collections::BTreeMap;

use crate::contract::Variable;
use crate::instruction::{ArgDecl, KeyValue};
use crate::limits::{SCOPE_BYTES, SCOPE_VARIABLES};
use crate::shell::{ExpandError, Lexer, Vars};

/// ARGs that never become part of the environment RUN sees (BuildKit's `nonEnvArgs`).
const NON_ENV_ARGS: [&str; 1] = ["SOURCE_DATE_EPOCH"];

/// The variables visible at one point of a stage. Serialisable so a stage pod can hand
/// a stage's scope to the pods of its child stages (they inherit its ARGs).
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Scope {
    /// Image environment, then ENV and ARG values in the order they were set.
    vars: Vec<(String, String)>,
    /// Names set by ENV (or the base image), in order, for the image config.
    env: Vec<(String, String)>,
    /// ARGs declared in this stage (or inherited from a parent stage), with values.
    args: Vec<(String, Option<String>)>,
}

/// An expanded word, the variables it looked up, and those of them that were not set.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Expansion {
    pub value: String,
    pub used: Vec<String>,
    pub unset: Vec<String>,
}

/// Looks names up in an ordered list (last wins) and remembers what it was asked.
struct Recording<'a> {
    vars: &'a [(String, String)],
    used: RefCell<Vec<String>>,
    unset: RefCell<Vec<String>>,
}

impl Vars for Recording<'_> {
    fn lookup(&self, name: &str) -> Option<&str> {
        let found = self
            .vars
            .iter()
            .rev()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str());
        let remember = |list: &RefCell<Vec<String>>| {
            let mut list = list.borrow_mut();
            if !list.iter().any(|m| m == name) {
                list.push(name.to_string());
            }
        };
        remember(&self.used);
        if found.is_none() {
            remember(&self.unset);
        }
        found
    }
}

/// Fails once the variables of one scope outgrow [`SCOPE_VARIABLES`] or [`SCOPE_BYTES`].
fn within_scope_limit(vars: &[(String, String)]) -> Result<(), ExpandError> {
    if vars.len() > SCOPE_VARIABLES {
        return Err(ExpandError::TooManyVariables);
    }
    if scope_bytes(vars) > SCOPE_BYTES {
        return Err(ExpandError::ScopeTooLarge);
    }
    Ok(())
}

fn scope_bytes(vars: &[(String, String)]) -> usize {
    vars.iter().map(|(n, v)| n.len() + v.len()).sum()
}

/// Expands one word against an ordered variable list.
pub fn expand(
    lexer: Lexer,
    word: &str,
    vars: &[(String, String)],
) -> Result<Expansion, ExpandError> {
    let recording = Recording {
        vars,
        used: RefCell::new(Vec::new()),
        unset: RefCell::new(Vec::new()),
    };
    let value = lexer.expand_word(word, &recording)?;
    Ok(Expansion {
        value,
        used: recording.used.into_inner(),
        unset: recording.unset.into_inner(),
    })
}

/// Resolves the global-scope ARGs (before the first FROM): a build arg wins over the
/// default, defaults see the ARGs above them and the automatic ones.
pub fn global_args(
    lexer: Lexer,
    automatic: Vec<Variable>,
    decls: &[ArgDecl],
    build_args: &BTreeMap<String, String>,
) -> Result<Vec<Variable>, ExpandError> {
    let mut vars: Vec<(String, String)> =
        automatic.into_iter().map(|v| (v.name, v.value)).collect();
    for decl in decls {
        let value = match (build_args.get(&decl.name), &decl.default) {
            (Some(given), _) => Some(given.clone()),
            (None, Some(default)) => Some(expand(lexer, default, &vars)?.value),
            (None, None) => None,
        };
        if let Some(value) = value {
            vars.retain(|(n, _)| *n != decl.name);
            vars.push((decl.name.clone(), value));
            within_scope_limit(&vars)?;
        }
    }
    Ok(vars
        .into_iter()
        .map(|(name, value)| Variable { name, value })
        .collect())
}

impl Scope {
    /// A stage starting from an image whose config has this environment.
    pub fn from_image_env(env: &[(String, String)]) -> Scope {
        Scope {
            vars: env.to_vec(),
            env: env.to_vec(),
            args: Vec::new(),
        }
    }

    /// Expands a word with everything in scope.
    pub fn expand(&self, lexer: Lexer, word: &str) -> Result<Expansion, ExpandError> {
        expand(lexer, word, &self.vars)
    }

    /// `ARG name[=default]`: a build arg wins, then the default (expanded), then the
    /// global ARG of the same name; an ARG with none of those is declared but unset.
    pub fn declare_arg(
        &mut self,
        lexer: Lexer,
        decl: &ArgDecl,
        global: &[Variable],
        build_args: &BTreeMap<String, String>,
    ) -> Result<Option<Expansion>, ExpandError> {
        let mut expansion = None;
        let value = if let Some(given) = build_args.get(&decl.name) {
            Some(given.clone())
        } else if let Some(default) = &decl.default {
            let e = self.expand(lexer, default)?;
            let value = e.value.clone();
            expansion = Some(e);
            Some(value)
        } else {
            global
                .iter()
                .rev()
                .find(|v| v.name == decl.name)
                .map(|v| v.value.clone())
        };
        self.args.retain(|(n, _)| *n != decl.name);
        self.args.push((decl.name.clone(), value.clone()));
        if let Some(value) = value
            && !NON_ENV_ARGS.contains(&decl.name.as_str())
        {
            self.set_var(&decl.name, value)?;
        }
        Ok(expansion)
    }

    /// `ENV k=v ...`: every value is expanded with the scope as it was before the
    /// instruction (`ENV a=1 b=$a` sees the old `a`). Returns each key's expansion.
    pub fn set_env(
        &mut self,
        lexer: Lexer,
        pairs: &[KeyValue],
    ) -> Result<Vec<(String, Expansion)>, ExpandError> {
        let expansions = pairs
            .iter()
            .map(|kv| Ok((kv.key.clone(), self.expand(lexer, &kv.value)?)))
            .collect::<Result<Vec<_>, ExpandError>>()?;
        for (key, e) in &expansions {
            self.env.retain(|(n, _)| n != key);
            self.env.push((key.clone(), e.value.clone()));
            self.set_var(key, e.value.clone())?;
        }
        Ok(expansions)
    }

    fn set_var(&mut self, name: &str, value: String) -> Result<(), ExpandError> {
        self.vars.retain(|(n, _)| n != name);
        self.vars.push((name.to_string(), value));
        within_scope_limit(&self.vars)
    }

    /// The bytes this scope holds, names and values, as [`SCOPE_BYTES`] counts them.
    pub fn bytes(&self) -> usize {
        scope_bytes(&self.vars)
    }

    /// The environment stored in the image config (base env plus ENV; never ARGs).
    pub fn image_env(&self) -> &[(String, String)] {
        &self.env
    }

    /// The environment a RUN step sees: image env, ENV, and ARG values.
    pub fn run_env(&self) -> &[(String, String)] {
        &self.vars
    }

    /// ARGs declared so far, for a child stage (`FROM <this stage>`) to inherit.
    pub fn args(&self) -> &[(String, Option<String>)] {
        &self.args
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decl(name: &str, default: Option<&str>) -> ArgDecl {
        ArgDecl {
            name: name.into(),
            default: default.map(str::to_string),
        }
    }

    fn kv(key: &str, value: &str) -> KeyValue {
        KeyValue {
            key: key.into(),
            value: value.into(),
        }
    }

    fn get<'a>(vars: &'a [(String, String)], name: &str) -> Option<&'a str> {
        vars.iter()
            .rev()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    const LEX: Lexer = Lexer::new('\\');

    #[test]
    fn global_args_build_arg_wins_and_defaults_chain() {
        let build_args = BTreeMap::from([("tag".to_string(), "latest".to_string())]);
        let globals = global_args(
            LEX,
            vec![Variable {
                name: "TARGETARCH".into(),
                value: "amd64".into(),
            }],
            &[
                decl("tag", Some("nosuchtag")),
                decl("a2", Some("box")),
                decl("a3", Some("\"$a2-foo\"")),
                decl("arch", Some("$TARGETARCH")),
                decl("unset", None),
            ],
            &build_args,
        )
        .expect("globals");
        let find = |n: &str| {
            globals
                .iter()
                .find(|v| v.name == n)
                .map(|v| v.value.as_str())
        };
        assert_eq!(find("tag"), Some("latest"));
        assert_eq!(find("a3"), Some("box-foo"));
        assert_eq!(find("arch"), Some("amd64"));
        assert_eq!(find("unset"), None, "an ARG without value is not set");
    }

    #[test]
    fn required_global_arg_fails_only_without_a_build_arg() {
        let decls = [decl("FOO", Some("${FOO:?\"custom error\"}"))];
        let err = global_args(LEX, vec![], &decls, &BTreeMap::new()).expect_err("required");
        assert!(err.to_string().contains("FOO: custom error"), "{err}");
        let given = BTreeMap::from([("FOO".to_string(), "bar".to_string())]);
        assert!(global_args(LEX, vec![], &decls, &given).is_ok());
    }

    #[test]
    fn stage_args_see_globals_only_when_redeclared() {
        let globals = vec![Variable {
            name: "V".into(),
            value: "global".into(),
        }];
        let none = BTreeMap::new();
        let mut scope = Scope::default();
        assert_eq!(scope.expand(LEX, "[$V]").expect("expand").value, "[]");
        scope
            .declare_arg(LEX, &decl("V", None), &globals, &none)
            .expect("arg");
        assert_eq!(scope.expand(LEX, "[$V]").expect("expand").value, "[global]");
        scope
            .declare_arg(LEX, &decl("W", Some("${V}-w")), &globals, &none)
            .expect("arg");
        assert_eq!(get(scope.run_env(), "W"), Some("global-w"));
        assert!(
            scope.image_env().is_empty(),
            "ARGs never reach the image config"
        );
    }

    #[test]
    fn build_args_override_stage_defaults() {
        let given = BTreeMap::from([("V".to_string(), "given".to_string())]);
        let mut scope = Scope::default();
        scope
            .declare_arg(LEX, &decl("V", Some("default")), &[], &given)
            .expect("arg");
        assert_eq!(get(scope.run_env(), "V"), Some("given"));
    }

    #[test]
    fn env_uses_values_from_before_the_instruction() {
        let mut scope = Scope::from_image_env(&[("PATH".into(), "/bin".into())]);
        scope.set_env(LEX, &[kv("abc", "hello")]).expect("env");
        scope
            .set_env(LEX, &[kv("abc", "bye"), kv("def", "$abc")])
            .expect("env");
        scope
            .set_env(LEX, &[kv("ghi", "$abc"), kv("PATH", "/app:$PATH")])
            .expect("env");
        let env = scope.image_env();
        assert_eq!(get(env, "def"), Some("hello"));
        assert_eq!(get(env, "ghi"), Some("bye"));
        assert_eq!(get(env, "PATH"), Some("/app:/bin"));
    }

    #[test]
    fn env_wins_over_an_earlier_arg_of_the_same_name() {
        let none = BTreeMap::new();
        let mut scope = Scope::default();
        scope
            .declare_arg(LEX, &decl("X", Some("arg")), &[], &none)
            .expect("arg");
        scope.set_env(LEX, &[kv("X", "env")]).expect("env");
        assert_eq!(scope.expand(LEX, "$X").expect("expand").value, "env");
    }

    #[test]
    fn misses_are_reported() {
        let scope = Scope::default();
        let e = scope.expand(LEX, "/app/${NAME:-x}/$HOME").expect("expand");
        assert_eq!(e.value, "/app/x/");
        assert_eq!(e.unset, ["NAME", "HOME"]);
    }

    #[test]
    fn source_date_epoch_is_not_in_run_env() {
        let given = BTreeMap::from([("SOURCE_DATE_EPOCH".to_string(), "1".to_string())]);
        let mut scope = Scope::default();
        scope
            .declare_arg(LEX, &decl("SOURCE_DATE_EPOCH", None), &[], &given)
            .expect("arg");
        assert!(scope.run_env().is_empty());
        assert_eq!(scope.args().len(), 1);
    }
}
