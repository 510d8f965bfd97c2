//! Layered configuration for Rakkr binaries.
//!
//! Layers, lowest precedence first:
//! 1. defaults (the `#[serde(default)]` values of the config type),
//! 2. the TOML file, if one is given,
//! 3. environment variables `{PREFIX}{KEY}` where nested keys are joined with
//!    `__`, e.g. `RAKKR_SERVER_HTTP__ADDR=127.0.0.1:9000` sets `http.addr`,
//! 4. command-line flags, applied by the binary on the parsed value.
//!
//! Environment values are read as TOML values when they parse as one
//! (`8080`, `true`, `["a"]`) and as strings otherwise. Config types use
//! `#[serde(deny_unknown_fields)]`, so a misspelt key in the file *or* in the
//! environment is an error that names the key, never silently ignored.
//!
//! This crate only parses. Each binary then validates the parsed value into typed
//! limits (its `Settings`), so semantic errors are reported in one place too.

use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("config file {path} is not valid TOML: {message}")]
    Syntax { path: PathBuf, message: String },
    #[error("environment variable {var}: {message}")]
    Env { var: String, message: String },
    #[error("config {origin}: `{key}`: {message}")]
    Value {
        origin: String,
        key: String,
        message: String,
    },
}

/// Load a config of type `T` from an optional file plus environment overrides.
///
/// `env` is passed in (normally `std::env::vars()`) so tests can supply their own.
pub fn load<T: DeserializeOwned>(
    file: Option<&Path>,
    env_prefix: &str,
    env: impl IntoIterator<Item = (String, String)>,
) -> Result<T, ConfigError> {
    let mut table = match file {
        Some(path) => {
            let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
                path: path.to_owned(),
                source,
            })?;
            text.parse::<toml::Table>()
                .map_err(|e| ConfigError::Syntax {
                    path: path.to_owned(),
                    message: e.to_string().trim_end().to_owned(),
                })?
        }
        None => toml::Table::new(),
    };

    let mut overridden = Vec::new();
    let mut vars: Vec<(String, String)> = env
        .into_iter()
        .filter(|(k, _)| k.starts_with(env_prefix))
        .collect();
    vars.sort();
    for (var, raw) in vars {
        let path: Vec<String> = var[env_prefix.len()..]
            .split("__")
            .map(str::to_ascii_lowercase)
            .collect();
        if path.iter().any(String::is_empty) {
            return Err(ConfigError::Env {
                var,
                message: "empty key segment".to_owned(),
            });
        }
        set_path(&mut table, &path, env_value(&raw)).map_err(|message| ConfigError::Env {
            var: var.clone(),
            message,
        })?;
        overridden.push(var);
    }

    let origin = match (file, overridden.is_empty()) {
        (Some(p), true) => format!("file {}", p.display()),
        (Some(p), false) => format!("file {} with {}", p.display(), overridden.join(", ")),
        (None, true) => "defaults".to_owned(),
        (None, false) => overridden.join(", "),
    };
    serde_path_to_error::deserialize(toml::Value::Table(table)).map_err(|e| {
        let key = e.path().to_string();
        ConfigError::Value {
            origin,
            key,
            message: e.into_inner().to_string(),
        }
    })
}

fn env_value(raw: &str) -> toml::Value {
    // Parse as a TOML value by wrapping it in a one-key document.
    match format!("v = {raw}").parse::<toml::Table>() {
        Ok(mut t) => t
            .remove("v")
            .unwrap_or_else(|| toml::Value::String(raw.to_owned())),
        Err(_) => toml::Value::String(raw.to_owned()),
    }
}

fn set_path(table: &mut toml::Table, path: &[String], value: toml::Value) -> Result<(), String> {
    let (last, parents) = path.split_last().expect("path is never empty");
    let mut cur = table;
    for key in parents {
        let entry = cur
            .entry(key.clone())
            .or_insert_with(|| toml::Value::Table(toml::Table::new()));
        cur = entry
            .as_table_mut()
            .ok_or_else(|| format!("`{key}` is not a table, so it has no sub-keys"))?;
    }
    cur.insert(last.clone(), value);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Debug, Deserialize, PartialEq)]
    #[serde(deny_unknown_fields)]
    struct Conf {
        #[serde(default)]
        name: String,
        #[serde(default)]
        http: Http,
    }

    #[derive(Debug, Deserialize, PartialEq)]
    #[serde(deny_unknown_fields)]
    struct Http {
        #[serde(default = "default_addr")]
        addr: std::net::SocketAddr,
        #[serde(default)]
        workers: u32,
    }

    impl Default for Http {
        fn default() -> Self {
            Http {
                addr: default_addr(),
                workers: 0,
            }
        }
    }

    fn default_addr() -> std::net::SocketAddr {
        "127.0.0.1:8080".parse().unwrap()
    }

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn file(text: &str) -> tempfile::NamedTempFile {
        let f = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(f.path(), text).unwrap();
        f
    }

    #[test]
    fn defaults_file_and_env_layer_in_order() {
        let c: Conf = load(None, "T_", env(&[])).unwrap();
        assert_eq!(c.http.addr, default_addr());

        let f = file("name = \"a\"\n[http]\naddr = \"127.0.0.1:1\"\nworkers = 2\n");
        let c: Conf = load(Some(f.path()), "T_", env(&[("T_HTTP__WORKERS", "7")])).unwrap();
        assert_eq!(c.name, "a");
        assert_eq!(c.http.addr.port(), 1);
        assert_eq!(c.http.workers, 7);
    }

    #[test]
    fn env_strings_need_no_quotes() {
        let c: Conf = load(None, "T_", env(&[("T_NAME", "plain text"), ("OTHER", "x")])).unwrap();
        assert_eq!(c.name, "plain text");
    }

    #[test]
    fn unknown_keys_are_named_whether_in_file_or_env() {
        let f = file("[http]\nadress = \"x\"\n");
        let e = load::<Conf>(Some(f.path()), "T_", env(&[]))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("http") && e.contains("unknown field `adress`"),
            "{e}"
        );

        let e = load::<Conf>(None, "T_", env(&[("T_HTTP__PORT", "1")]))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("unknown field `port`") && e.contains("T_HTTP__PORT"),
            "{e}"
        );
    }

    #[test]
    fn bad_values_name_their_key() {
        let f = file("[http]\naddr = \"not an address\"\n");
        let e = load::<Conf>(Some(f.path()), "T_", env(&[]))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("`http.addr`") && e.contains("invalid socket address"),
            "{e}"
        );
    }

    #[test]
    fn syntax_errors_and_missing_files_are_reported() {
        let f = file("[http\n");
        let e = load::<Conf>(Some(f.path()), "T_", env(&[])).unwrap_err();
        assert!(matches!(e, ConfigError::Syntax { .. }), "{e}");
        let e = load::<Conf>(Some(Path::new("/nonexistent/x.toml")), "T_", env(&[])).unwrap_err();
        assert!(e.to_string().contains("/nonexistent/x.toml"), "{e}");
    }

    #[test]
    fn env_cannot_descend_into_a_scalar() {
        let f = file("name = \"a\"\n");
        let e = load::<Conf>(Some(f.path()), "T_", env(&[("T_NAME__X", "1")])).unwrap_err();
        assert!(matches!(e, ConfigError::Env { .. }), "{e}");
        let e = load::<Conf>(None, "T_", env(&[("T_NAME__X", "1")]))
            .unwrap_err()
            .to_string();
        assert!(e.contains("T_NAME__X") && e.contains("`name`"), "{e}");
    }
}
