//! The gate's TOML configuration, committed with the project:
//!
//! ```toml
//! [budget]                 # outstanding at exit, summed over stacks no rule below covers
//! heap = 0                 # bytes (default 0)
//! sockets = 0              # open handles (default 0)
//! mmap = 1048576           # kinds without a budget are not checked
//!
//! [[stack]]                # a budget for the stacks matching a function-name glob
//! function = "cache_*"
//! kind = "heap"            # optional; default: every kind
//! max = 65536
//!
//! [[allow]]                # never fail on these
//! function = "init_tls_once"
//! reason = "one-time start-up allocation"
//!
//! [baseline]
//! noise_bytes = 0          # absolute noise band above a baseline stack
//! noise_percent = 0.0      # relative band; the larger of the two applies
//! ```

use std::path::Path;

use anyhow::{bail, Context, Result};
use globset::{Glob, GlobMatcher};
use serde::Deserialize;

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(default)]
    pub budget: Budgets,
    #[serde(default, rename = "stack")]
    pub stacks: Vec<StackRule>,
    #[serde(default, rename = "allow")]
    pub allow: Vec<AllowRule>,
    #[serde(default)]
    pub baseline: NoiseBand,
    /// Also gate allocations made entirely inside the C runtime and loader.
    #[serde(default)]
    pub include_runtime: bool,
}

/// Budgets per kind: bytes for memory kinds, open handles for `sockets`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Budgets {
    #[serde(default = "zero")]
    pub heap: Option<u64>,
    pub mmap: Option<u64>,
    #[serde(rename = "file-mmap")]
    pub file_mmap: Option<u64>,
    pub brk: Option<u64>,
    #[serde(default = "zero")]
    pub sockets: Option<u64>,
}

fn zero() -> Option<u64> {
    Some(0)
}

impl Default for Budgets {
    fn default() -> Self {
        Self { heap: Some(0), mmap: None, file_mmap: None, brk: None, sockets: Some(0) }
    }
}

impl Budgets {
    pub fn get(&self, kind: &str) -> Option<u64> {
        match kind {
            "heap" => self.heap,
            "mmap" => self.mmap,
            "file-mmap" => self.file_mmap,
            "brk" => self.brk,
            "sockets" => self.sockets,
            _ => None,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StackRule {
    #[serde(deserialize_with = "glob")]
    pub function: Pattern,
    pub kind: Option<String>,
    pub max: u64,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AllowRule {
    #[serde(deserialize_with = "glob")]
    pub function: Pattern,
    pub kind: Option<String>,
    #[serde(default)]
    pub reason: String,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NoiseBand {
    #[serde(default)]
    pub noise_bytes: u64,
    #[serde(default)]
    pub noise_percent: f64,
}

impl NoiseBand {
    /// How far above `base` a stack may go.
    pub fn allowance(&self, base: u64) -> u64 {
        self.noise_bytes.max((base as f64 * self.noise_percent / 100.0).ceil() as u64)
    }
}

/// A function-name glob (`*`, `?`, `[...]`).
#[derive(Debug)]
pub struct Pattern {
    pub text: String,
    matcher: GlobMatcher,
}

impl Pattern {
    pub fn new(text: &str) -> Result<Self> {
        let matcher =
            Glob::new(text).with_context(|| format!("bad function pattern {text:?}"))?.compile_matcher();
        Ok(Self { text: text.to_string(), matcher })
    }

    /// Whether any of the functions matches.
    pub fn matches_any<'a>(&self, mut functions: impl Iterator<Item = &'a str>) -> bool {
        functions.any(|f| self.matcher.is_match(f))
    }
}

fn glob<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Pattern, D::Error> {
    let text = String::deserialize(d)?;
    Pattern::new(&text).map_err(serde::de::Error::custom)
}

impl Config {
    pub fn parse(text: &str) -> Result<Self> {
        let config: Config = toml::from_str(text)?;
        for kind in config
            .stacks
            .iter()
            .filter_map(|s| s.kind.as_deref())
            .chain(config.allow.iter().filter_map(|a| a.kind.as_deref()))
        {
            if !["heap", "mmap", "file-mmap", "brk", "sockets"].contains(&kind) {
                bail!("unknown kind {kind:?} (expected heap, mmap, file-mmap, brk or sockets)");
            }
        }
        Ok(config)
    }

    pub fn load(path: &Path) -> Result<Self> {
        let bytes = crate::files::read_input(path)
            .with_context(|| format!("reading gate config {}", path.display()))?;
        let text = String::from_utf8(bytes)
            .with_context(|| format!("gate config {} is not UTF-8", path.display()))?;
        Self::parse(&text).with_context(|| format!("invalid gate config {}", path.display()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_gate_heap_and_sockets_at_zero() {
        let c = Config::parse("").unwrap();
        assert_eq!(c.budget.get("heap"), Some(0));
        assert_eq!(c.budget.get("sockets"), Some(0));
        assert_eq!(c.budget.get("mmap"), None);
    }

    #[test]
    fn parses_every_section() {
        let c = Config::parse(
            r#"
            include_runtime = true
            [budget]
            heap = 100
            mmap = 4096
            [[stack]]
            function = "cache_*"
            kind = "heap"
            max = 10
            [[allow]]
            function = "init_?"
            reason = "once"
            [baseline]
            noise_bytes = 8
            noise_percent = 5.0
            "#,
        )
        .unwrap();
        assert_eq!(c.budget.get("heap"), Some(100));
        assert_eq!(c.budget.get("sockets"), Some(0));
        assert!(c.stacks[0].function.matches_any(["main", "cache_fill"].into_iter()));
        assert!(c.allow[0].function.matches_any(["init_x"].into_iter()));
        assert!(!c.allow[0].function.matches_any(["init_xy"].into_iter()));
        assert_eq!(c.baseline.allowance(1000), 50);
        assert_eq!(c.baseline.allowance(10), 8);
        assert!(c.include_runtime);
    }

    #[test]
    fn rejects_typos_and_bad_kinds() {
        assert!(Config::parse("[budget]\nheep = 1").is_err());
        assert!(Config::parse("[[stack]]\nfunction = \"x\"\nkind = \"heapp\"\nmax = 1").is_err());
        assert!(Config::parse("[[stack]]\nfunction = \"[\"\nmax = 1").is_err());
    }
}
