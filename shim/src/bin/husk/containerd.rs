//! Does containerd's config have a runtime of type `io.containerd.husk.v2`?
//!
//! containerd 1.6/1.7 (config `version = 2`) keep CRI runtimes under
//! `plugins."io.containerd.grpc.v1.cri".containerd.runtimes.<name>`;
//! containerd 2.x (`version = 3`) under
//! `plugins."io.containerd.cri.v1.runtime".containerd.runtimes.<name>`, and
//! it still reads version-2 files. Files named by `imports` count too.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

pub const RUNTIME_TYPE: &str = "io.containerd.husk.v2";
const CRI_V2: &str = "io.containerd.grpc.v1.cri";
const CRI_V3: &str = "io.containerd.cri.v1.runtime";

pub const SNIPPET_1_6: &str = include_str!("../../../../config/containerd-1.6.toml");
pub const SNIPPET_2: &str = include_str!("../../../../config/containerd-2.toml");

/// A husk runtime found in a config file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Runtime {
    pub name: String,
    pub file: PathBuf,
    /// The `ConfigPath` runtime option, if any.
    pub config_path: Option<String>,
    /// False when containerd ignores it (a version-3 key in a version-2
    /// file or the other way round).
    pub effective: bool,
}

/// What the config holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Report {
    /// The config's `version` (1 when absent).
    pub version: i64,
    pub runtimes: Vec<Runtime>,
}

impl Report {
    /// The snippet to add for this config version.
    pub fn snippet(&self) -> (&'static str, &'static str) {
        if self.version >= 3 {
            ("config/containerd-2.toml", SNIPPET_2)
        } else {
            ("config/containerd-1.6.toml", SNIPPET_1_6)
        }
    }
}

fn runtimes_in(table: &toml::Table, version: i64, file: &Path) -> Vec<Runtime> {
    let mut found = Vec::new();
    for (plugin, effective) in [(CRI_V2, version <= 2), (CRI_V3, version >= 3)] {
        let runtimes = table
            .get("plugins")
            .and_then(|p| p.get(plugin))
            .and_then(|p| p.get("containerd"))
            .and_then(|c| c.get("runtimes"))
            .and_then(|r| r.as_table());
        for (name, rt) in runtimes.into_iter().flatten() {
            if rt.get("runtime_type").and_then(|t| t.as_str()) != Some(RUNTIME_TYPE) {
                continue;
            }
            let config_path = rt
                .get("options")
                .and_then(|o| o.get("ConfigPath"))
                .and_then(|c| c.as_str())
                .map(str::to_string);
            found.push(Runtime {
                name: name.clone(),
                file: file.to_path_buf(),
                config_path,
                effective,
            });
        }
    }
    found
}

/// `*` and `?` in one path component.
fn wildcard(pattern: &str, name: &str) -> bool {
    fn m(p: &[u8], n: &[u8]) -> bool {
        match (p.first(), n.first()) {
            (None, None) => true,
            (Some(b'*'), _) => m(&p[1..], n) || (!n.is_empty() && m(p, &n[1..])),
            (Some(b'?'), Some(_)) => m(&p[1..], &n[1..]),
            (Some(a), Some(b)) if a == b => m(&p[1..], &n[1..]),
            _ => false,
        }
    }
    m(pattern.as_bytes(), name.as_bytes())
}

/// The files an `imports` entry names (glob in the file name only).
fn expand_import(base: &Path, entry: &str) -> Vec<PathBuf> {
    let path = base.join(entry);
    let (Some(dir), Some(pat)) = (path.parent(), path.file_name().and_then(|f| f.to_str())) else {
        return Vec::new();
    };
    if !pat.contains(['*', '?']) {
        return vec![path.clone()];
    }
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|d| {
            d.flatten()
                .filter(|e| wildcard(pat, &e.file_name().to_string_lossy()))
                .map(|e| e.path())
                .collect()
        })
        .unwrap_or_default();
    files.sort();
    files
}

/// Reads `path` (and its imports) and lists the husk runtimes.
pub fn inspect(path: &Path) -> Result<Report> {
    let text = std::fs::read_to_string(path).with_context(|| format!("read {}", path.display()))?;
    let table: toml::Table =
        toml::from_str(&text).with_context(|| format!("parse {}", path.display()))?;
    let version = table
        .get("version")
        .and_then(|v| v.as_integer())
        .unwrap_or(1);
    let mut runtimes = runtimes_in(&table, version, path);
    let base = path.parent().unwrap_or(Path::new("/"));
    let imports = table.get("imports").and_then(|i| i.as_array());
    for entry in imports.into_iter().flatten().filter_map(|e| e.as_str()) {
        for file in expand_import(base, entry) {
            let Ok(text) = std::fs::read_to_string(&file) else {
                continue;
            };
            let sub: toml::Table =
                toml::from_str(&text).with_context(|| format!("parse {}", file.display()))?;
            // Imported files take the main file's version when they lack one.
            let v = sub
                .get("version")
                .and_then(|v| v.as_integer())
                .unwrap_or(version);
            runtimes.extend(runtimes_in(&sub, v, &file));
        }
    }
    Ok(Report { version, runtimes })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
        let p = dir.join(name);
        std::fs::write(&p, text).unwrap();
        p
    }

    #[test]
    fn shipped_snippets_are_found_in_their_versions() {
        let t = tempfile::tempdir().unwrap();
        let v2 = write(t.path(), "v2.toml", &format!("version = 2\n{SNIPPET_1_6}"));
        let r = inspect(&v2).unwrap();
        assert_eq!(r.version, 2);
        let names: Vec<&str> = r.runtimes.iter().map(|r| r.name.as_str()).collect();
        assert_eq!(names, vec!["husk", "husk-runc"]);
        assert!(r.runtimes.iter().all(|r| r.effective));
        assert_eq!(
            r.runtimes[0].config_path.as_deref(),
            Some("/etc/husk/husk.toml")
        );
        assert_eq!(r.snippet().0, "config/containerd-1.6.toml");

        let v3 = write(t.path(), "v3.toml", &format!("version = 3\n{SNIPPET_2}"));
        let r = inspect(&v3).unwrap();
        assert_eq!(r.runtimes.len(), 2);
        assert!(r.runtimes.iter().all(|r| r.effective));
        assert_eq!(r.snippet().0, "config/containerd-2.toml");
    }

    #[test]
    fn wrong_version_and_other_runtimes() {
        let t = tempfile::tempdir().unwrap();
        let p = write(
            t.path(),
            "c.toml",
            &format!(
                "version = 2\n[plugins.\"io.containerd.grpc.v1.cri\".containerd.runtimes.runc]\nruntime_type = \"io.containerd.runc.v2\"\n{SNIPPET_2}"
            ),
        );
        let r = inspect(&p).unwrap();
        assert_eq!(r.runtimes.len(), 2);
        assert!(
            r.runtimes.iter().all(|r| !r.effective),
            "v3 keys in a v2 file"
        );
        let p = write(t.path(), "empty.toml", "version = 2\n");
        assert!(inspect(&p).unwrap().runtimes.is_empty());
        let p = write(t.path(), "bad.toml", "[[[");
        assert!(format!("{:#}", inspect(&p).unwrap_err()).contains("bad.toml"));
    }

    #[test]
    fn imports_are_followed() {
        let t = tempfile::tempdir().unwrap();
        std::fs::create_dir(t.path().join("conf.d")).unwrap();
        write(&t.path().join("conf.d"), "husk.toml", SNIPPET_1_6);
        write(&t.path().join("conf.d"), "other.txt", SNIPPET_1_6);
        let main = write(
            t.path(),
            "config.toml",
            "version = 2\nimports = [\"conf.d/*.toml\"]\n",
        );
        let r = inspect(&main).unwrap();
        assert_eq!(r.runtimes.len(), 2);
        assert!(r.runtimes[0].file.ends_with("conf.d/husk.toml"));
    }

    #[test]
    fn wildcards() {
        assert!(wildcard("*.toml", "a.toml"));
        assert!(wildcard("h?sk*", "husk.toml"));
        assert!(!wildcard("*.toml", "a.txt"));
        assert!(wildcard("*", ""));
    }
}
