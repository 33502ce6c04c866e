//! `spin.toml` (manifest version 2): the parts this host implements, and variable resolution
//! like `spin up`: `--variable name=value` (or `name=@file`) first, then `SPIN_VARIABLE_<NAME>`
//! from the environment, then the declared default. A required variable without a value is an
//! error that names it. Templates `{{ name }}` are expanded in `[component.*.variables]` and in
//! `allowed_outbound_hosts`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context, Result};
use serde::Deserialize;

use crate::allowed_hosts::AllowedHosts;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VariableDecl {
    pub default: Option<String>,
    #[serde(default)]
    pub required: bool,
    #[serde(default)]
    pub secret: bool,
    pub description: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct ComponentDecl {
    pub source: String,
    #[serde(default)]
    pub allowed_outbound_hosts: Vec<String>,
    #[serde(default)]
    pub key_value_stores: Vec<String>,
    #[serde(default)]
    pub variables: BTreeMap<String, String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpTrigger {
    pub route: String,
    pub component: String,
}

/// Exactly the keys trigger-cron 0.4.2 accepts.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CronTrigger {
    pub component: String,
    pub cron_expression: String,
}

#[derive(Debug, Clone, Default, Deserialize)]
pub struct Triggers {
    #[serde(default)]
    pub http: Vec<HttpTrigger>,
    #[serde(default)]
    pub cron: Vec<CronTrigger>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct Application {
    pub name: String,
}

#[derive(Debug, Clone, Deserialize)]
struct RawManifest {
    spin_manifest_version: u32,
    application: Application,
    #[serde(default)]
    variables: BTreeMap<String, VariableDecl>,
    #[serde(default)]
    trigger: Triggers,
    #[serde(default)]
    component: BTreeMap<String, ComponentDecl>,
}

/// A loaded manifest and the folder it lives in (sources resolve against it).
#[derive(Debug, Clone)]
pub struct Manifest {
    pub path: PathBuf,
    pub dir: PathBuf,
    pub application: Application,
    pub variables: BTreeMap<String, VariableDecl>,
    pub triggers: Triggers,
    pub components: BTreeMap<String, ComponentDecl>,
}

fn valid_variable_name(name: &str) -> bool {
    name.starts_with(|c: char| c.is_ascii_lowercase())
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
}

impl Manifest {
    pub fn load(path: &Path) -> Result<Manifest> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read the manifest {}", path.display()))?;
        let raw: RawManifest = toml::from_str(&text)
            .with_context(|| format!("{} is not a valid Spin manifest", path.display()))?;
        if raw.spin_manifest_version != 2 {
            bail!(
                "{}: only spin_manifest_version = 2 is supported",
                path.display()
            );
        }
        for (name, decl) in &raw.variables {
            if !valid_variable_name(name) {
                bail!("variable {name:?}: names are lower-case letters, digits and '_'");
            }
            if decl.required == decl.default.is_some() {
                bail!("variable {name:?} must have either a default or required = true, not both or neither");
            }
        }
        for t in &raw.trigger.http {
            if !raw.component.contains_key(&t.component) {
                bail!(
                    "[[trigger.http]] route {:?} names an unknown component {:?}",
                    t.route,
                    t.component
                );
            }
        }
        for t in &raw.trigger.cron {
            if !raw.component.contains_key(&t.component) {
                bail!(
                    "[[trigger.cron]] names an unknown component {:?}",
                    t.component
                );
            }
            let fields = t.cron_expression.split_whitespace().count();
            if !t.cron_expression.starts_with('@') && fields != 6 {
                bail!(
                    "[[trigger.cron]] cron_expression {:?} has {fields} fields; trigger-cron wants exactly six: sec min hour day-of-month month day-of-week (UTC)",
                    t.cron_expression
                );
            }
        }
        let dir = path
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_else(|| PathBuf::from("."));
        Ok(Manifest {
            path: path.to_path_buf(),
            dir,
            application: raw.application,
            variables: raw.variables,
            triggers: raw.trigger,
            components: raw.component,
        })
    }

    /// The component a cron run invokes: the one `[[trigger.cron]]` names, else the only one.
    pub fn cron_component(&self) -> Result<&str> {
        if let Some(t) = self.triggers.cron.first() {
            return Ok(&t.component);
        }
        match self.components.keys().collect::<Vec<_>>().as_slice() {
            [only] => Ok(only),
            _ => bail!(
                "{}: no [[trigger.cron]] and more than one component; cannot tell which to run",
                self.path.display()
            ),
        }
    }

    /// The component the HTTP trigger serves (one route per app in this host).
    pub fn http_component(&self) -> Result<&str> {
        match self.triggers.http.as_slice() {
            [one] => Ok(&one.component),
            [] => bail!("{}: no [[trigger.http]] to serve", self.path.display()),
            _ => bail!(
                "{}: this host serves a single [[trigger.http]]",
                self.path.display()
            ),
        }
    }
}

/// Values given to the host, before defaults.
#[derive(Debug, Clone, Default)]
pub struct ProvidedVariables {
    /// From `--variable`, highest priority.
    pub cli: Vec<(String, String)>,
    /// From `SPIN_VARIABLE_*`, name already lower-cased.
    pub env: Vec<(String, String)>,
}

impl ProvidedVariables {
    /// Parses `--variable` arguments: `name=value` or `name=@file` (the file's contents).
    pub fn parse_cli(args: &[String]) -> Result<Vec<(String, String)>> {
        args.iter()
            .map(|arg| {
                let (name, value) = arg.split_once('=').ok_or_else(|| {
                    anyhow!("--variable {arg:?}: write it as NAME=VALUE or NAME=@FILE")
                })?;
                let value = match value.strip_prefix('@') {
                    Some(file) => std::fs::read_to_string(file).with_context(|| {
                        format!("--variable {name}=@{file}: cannot read the file")
                    })?,
                    None => value.to_string(),
                };
                Ok((name.to_string(), value))
            })
            .collect()
    }

    /// Collects `SPIN_VARIABLE_<NAME>` from an environment.
    pub fn from_env(vars: impl IntoIterator<Item = (String, String)>) -> Vec<(String, String)> {
        vars.into_iter()
            .filter_map(|(k, v)| {
                k.strip_prefix("SPIN_VARIABLE_")
                    .map(|n| (n.to_ascii_lowercase(), v))
            })
            .collect()
    }
}

/// Application variables with their final values.
pub fn resolve_app_variables(
    manifest: &Manifest,
    provided: &ProvidedVariables,
) -> Result<BTreeMap<String, String>> {
    for (name, _) in &provided.cli {
        if !manifest.variables.contains_key(name) {
            bail!(
                "--variable {name}: no such variable in [variables] of {}",
                manifest.path.display()
            );
        }
    }
    let mut values = BTreeMap::new();
    let mut missing = Vec::new();
    for (name, decl) in &manifest.variables {
        let from_cli = provided.cli.iter().rev().find(|(n, _)| n == name);
        let from_env = provided.env.iter().rev().find(|(n, _)| n == name);
        match from_cli
            .or(from_env)
            .map(|(_, v)| v.clone())
            .or_else(|| decl.default.clone())
        {
            Some(v) => {
                values.insert(name.clone(), v);
            }
            None => missing.push(name.as_str()),
        }
    }
    if !missing.is_empty() {
        bail!(
            "required variable{} not set: {} (pass --variable NAME=VALUE or set SPIN_VARIABLE_{})",
            if missing.len() == 1 { "" } else { "s" },
            missing.join(", "),
            missing[0].to_ascii_uppercase()
        );
    }
    Ok(values)
}

/// Expands `{{ name }}` references to application variables.
pub fn expand_template(template: &str, values: &BTreeMap<String, String>) -> Result<String> {
    let mut out = String::new();
    let mut rest = template;
    while let Some(start) = rest.find("{{") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let end = after
            .find("}}")
            .ok_or_else(|| anyhow!("unterminated {{{{ in template {template:?}"))?;
        let name = after[..end].trim();
        let value = values.get(name).ok_or_else(|| {
            anyhow!("template {template:?} refers to {name:?}, which is not in [variables]")
        })?;
        out.push_str(value);
        rest = &after[end + 2..];
    }
    out.push_str(rest);
    Ok(out)
}

/// One component, ready to instantiate.
#[derive(Debug, Clone)]
pub struct ResolvedComponent {
    pub name: String,
    pub source: PathBuf,
    pub allowed_hosts: AllowedHosts,
    pub key_value_stores: Vec<String>,
    /// Component variables with templates expanded.
    pub variables: BTreeMap<String, String>,
}

pub fn resolve_component(
    manifest: &Manifest,
    name: &str,
    provided: &ProvidedVariables,
) -> Result<ResolvedComponent> {
    let decl = manifest
        .components
        .get(name)
        .ok_or_else(|| anyhow!("no component {name:?} in {}", manifest.path.display()))?;
    let app_values = resolve_app_variables(manifest, provided)?;
    let mut variables = BTreeMap::new();
    for (var, template) in &decl.variables {
        if !valid_variable_name(var) {
            bail!("component variable {var:?}: names are lower-case letters, digits and '_'");
        }
        let value = expand_template(template, &app_values)
            .with_context(|| format!("[component.{name}.variables] {var}"))?;
        variables.insert(var.clone(), value);
    }
    let hosts = decl
        .allowed_outbound_hosts
        .iter()
        .map(|h| expand_template(h, &app_values))
        .collect::<Result<Vec<_>>>()
        .with_context(|| format!("[component.{name}] allowed_outbound_hosts"))?;
    let allowed_hosts = AllowedHosts::parse(&hosts)
        .with_context(|| format!("[component.{name}] allowed_outbound_hosts"))?;
    Ok(ResolvedComponent {
        name: name.to_string(),
        source: manifest.dir.join(&decl.source),
        allowed_hosts,
        key_value_stores: decl.key_value_stores.clone(),
        variables,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const MANIFEST: &str = r#"
spin_manifest_version = 2
[application]
name = "t"
[variables]
base = { default = "https://sentry.io" }
token = { required = true, secret = true }
[[trigger.http]]
route = "/..."
component = "c"
[component.c]
source = "c.wasm"
allowed_outbound_hosts = ["{{ base }}", "https://{{host}}"]
key_value_stores = ["default"]
[component.c.variables]
base = "{{ base }}"
token = "Bearer {{ token }}"
"#;

    fn manifest(text: &str) -> Result<Manifest> {
        let dir =
            std::env::temp_dir().join(format!("collector-host-manifest-{}", std::process::id()));
        std::fs::create_dir_all(&dir)?;
        let path = dir.join(format!("spin-{}.toml", text.len()));
        std::fs::write(&path, text)?;
        Manifest::load(&path)
    }

    fn provided(cli: &[(&str, &str)], env: &[(&str, &str)]) -> ProvidedVariables {
        ProvidedVariables {
            cli: cli
                .iter()
                .map(|(a, b)| (a.to_string(), b.to_string()))
                .collect(),
            env: env
                .iter()
                .map(|(a, b)| (a.to_string(), b.to_string()))
                .collect(),
        }
    }

    #[test]
    fn cli_beats_env_beats_default_and_templates_expand() {
        let m = manifest(&MANIFEST.replace(", \"https://{{host}}\"", "")).unwrap();
        let c = resolve_component(
            &m,
            "c",
            &provided(
                &[("token", "from-cli")],
                &[("token", "from-env"), ("base", "http://127.0.0.1:9")],
            ),
        )
        .unwrap();
        assert_eq!(c.variables["token"], "Bearer from-cli");
        assert_eq!(c.variables["base"], "http://127.0.0.1:9");
        assert!(c
            .allowed_hosts
            .allows(&"http://127.0.0.1:9/x".parse().unwrap()));
        assert!(!c
            .allowed_hosts
            .allows(&"https://sentry.io/x".parse().unwrap()));
    }

    #[test]
    fn missing_required_variable_is_named() {
        let m = manifest(&MANIFEST.replace(", \"https://{{host}}\"", "")).unwrap();
        let err = resolve_component(&m, "c", &provided(&[], &[]))
            .unwrap_err()
            .to_string();
        assert!(err.contains("required variable not set: token"), "{err}");
        assert!(err.contains("SPIN_VARIABLE_TOKEN"), "{err}");
    }

    #[test]
    fn template_naming_an_undeclared_variable_is_refused() {
        let m = manifest(MANIFEST).unwrap();
        let err = format!(
            "{:#}",
            resolve_component(&m, "c", &provided(&[("token", "t")], &[])).unwrap_err()
        );
        assert!(err.contains("\"host\""), "{err}");
    }

    #[test]
    fn undeclared_cli_variable_is_refused() {
        let m = manifest(&MANIFEST.replace(", \"https://{{host}}\"", "")).unwrap();
        let err = resolve_component(&m, "c", &provided(&[("tokn", "x"), ("token", "t")], &[]))
            .unwrap_err()
            .to_string();
        assert!(err.contains("--variable tokn"), "{err}");
    }

    #[test]
    fn env_names_are_upper_case_with_prefix() {
        let env = ProvidedVariables::from_env([
            ("SPIN_VARIABLE_SENTRY_ORG".to_string(), "acme".to_string()),
            ("PATH".to_string(), "/bin".to_string()),
        ]);
        assert_eq!(env, vec![("sentry_org".to_string(), "acme".to_string())]);
    }

    #[test]
    fn cron_expressions_must_have_six_fields() {
        let text = format!(
            "{MANIFEST}\n[[trigger.cron]]\ncomponent = \"c\"\ncron_expression = \"0 * * * *\"\n"
        );
        let err = manifest(&text).unwrap_err().to_string();
        assert!(err.contains("exactly six"), "{err}");
    }
}
