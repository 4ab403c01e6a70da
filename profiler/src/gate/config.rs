//! The gate's TOML configuration, committed with the project:
//!
//! ```toml
//! [budget]                 # outstanding at exit, summed over stacks no rule below covers
//! heap = 0                 # bytes (default 0)
//! sockets = 0              # open handles; files, pipes, events likewise (default 0)
//! mmap = 1048576           # other memory kinds (mmap, file-mmap, brk, resident) only when given
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
//! drop_frames = ["my_pool_*"] # shown collapsed at a stack's leaf, like the
//!                          # C/C++/Rust runtime and standard library frames
//!
//! [baseline]
//! noise_bytes = 0          # absolute noise band above a baseline stack
//! noise_percent = 0.0      # relative band; the larger of the two applies
//! ```

use std::{collections::BTreeMap, path::Path};

use anyhow::{Context, Result};
use globset::{Glob, GlobMatcher};
use serde::Deserialize;

use crate::kind::Kind;

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
    /// Functions shown collapsed at the allocating end of a stack (pprof's
    /// `drop_frames`), besides the runtime and standard libraries.
    #[serde(default, deserialize_with = "globs")]
    pub drop_frames: Vec<Pattern>,
}

/// Budgets per kind: bytes for memory kinds, open handles for handle kinds.
/// Without configuration `heap` and every handle kind are budgeted at 0;
/// other memory kinds are checked only when given.
#[derive(Debug)]
pub struct Budgets(BTreeMap<Kind, u64>);

impl Default for Budgets {
    fn default() -> Self {
        Self(Kind::ALL.into_iter().filter(|k| *k == Kind::Heap || !k.is_memory()).map(|k| (k, 0)).collect())
    }
}

impl<'de> Deserialize<'de> for Budgets {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let mut budgets = Budgets::default();
        budgets.0.extend(BTreeMap::<Kind, u64>::deserialize(d)?);
        Ok(budgets)
    }
}

impl Budgets {
    pub fn get(&self, kind: Kind) -> Option<u64> {
        self.0.get(&kind).copied()
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StackRule {
    #[serde(deserialize_with = "glob")]
    pub function: Pattern,
    pub kind: Option<Kind>,
    pub max: u64,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AllowRule {
    #[serde(deserialize_with = "glob")]
    pub function: Pattern,
    pub kind: Option<Kind>,
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

fn globs<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<Pattern>, D::Error> {
    Vec::<String>::deserialize(d)?
        .iter()
        .map(|text| Pattern::new(text).map_err(serde::de::Error::custom))
        .collect()
}

impl Config {
    pub fn parse(text: &str) -> Result<Self> {
        Ok(toml::from_str(text)?)
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
    fn defaults_gate_heap_and_every_handle_kind_at_zero() {
        let c = Config::parse("").unwrap();
        for kind in [Kind::Heap, Kind::Sockets, Kind::Files, Kind::Pipes, Kind::Events] {
            assert_eq!(c.budget.get(kind), Some(0), "{kind:?}");
        }
        assert_eq!(c.budget.get(Kind::Mmap), None);
        let c = Config::parse("[budget]\nfiles = 2\npipes = 0\nevents = 1\nresident = 4096").unwrap();
        assert_eq!((c.budget.get(Kind::Files), c.budget.get(Kind::Events)), (Some(2), Some(1)));
        assert_eq!((c.budget.get(Kind::Heap), c.budget.get(Kind::Resident)), (Some(0), Some(4096)));
    }

    #[test]
    fn parses_every_section() {
        let c = Config::parse(
            r#"
            include_runtime = true
            drop_frames = ["pool_*"]
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
        assert_eq!(c.budget.get(Kind::Heap), Some(100));
        assert_eq!(c.budget.get(Kind::Sockets), Some(0));
        assert!(c.stacks[0].function.matches_any(["main", "cache_fill"].into_iter()));
        assert!(c.allow[0].function.matches_any(["init_x"].into_iter()));
        assert!(!c.allow[0].function.matches_any(["init_xy"].into_iter()));
        assert_eq!(c.baseline.allowance(1000), 50);
        assert_eq!(c.baseline.allowance(10), 8);
        assert!(c.include_runtime);
        assert!(c.drop_frames[0].matches_any(["pool_get"].into_iter()));
    }

    #[test]
    fn rejects_typos_and_bad_kinds() {
        assert!(Config::parse("[budget]\nheep = 1").is_err());
        assert!(Config::parse("[[stack]]\nfunction = \"x\"\nkind = \"heapp\"\nmax = 1").is_err());
        assert!(Config::parse("[[stack]]\nfunction = \"[\"\nmax = 1").is_err());
    }
}
