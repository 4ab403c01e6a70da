//! The gate's decision: given what was outstanding at the end of the run
//! (per stack), the configuration and optionally a baseline, which checks
//! pass and which stacks are to blame. Pure logic; no I/O.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::config::Config;
use crate::kind::Kind;

/// One stack as the gate sees it (identical names merged).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Observed {
    pub kind: Kind,
    /// The stack's identity across builds ([`StackEntry::identity`](crate::report::model::StackEntry::identity)).
    pub stack: String,
    /// Bytes (memory kinds) or open handles; the minimum over repeated runs.
    pub value: u64,
    /// Spread over repeated runs (max - min); 0 for a single run.
    pub noise: u64,
    /// All frames lie in the C runtime or the dynamic loader.
    pub runtime: bool,
    /// For people: innermost first, `function (file:line)`.
    pub frames: Vec<String>,
    /// How many of `frames`, from the innermost, are in the runtime or a
    /// standard library (shown collapsed, so the program's frame shows).
    #[serde(default)]
    pub library_frames: usize,
}

impl Observed {
    pub fn functions(&self) -> impl Iterator<Item = &str> {
        self.stack.split(';')
    }

    /// The innermost frame, the function that allocated.
    pub fn leaf(&self) -> &str {
        self.stack.rsplit(';').next().unwrap_or("")
    }
}

/// A committed reference of per-stack outstanding values.
/// Version of `leakgate-baseline.json`; bump on incompatible change.
pub const BASELINE_SCHEMA_VERSION: u32 = 1;

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Baseline {
    pub schema_version: u32,
    pub stacks: Vec<BaselineStack>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct BaselineStack {
    pub kind: Kind,
    pub stack: String,
    pub value: u64,
    /// Spread measured when the baseline was taken (`--runs`).
    #[serde(default)]
    pub noise: u64,
}

impl Baseline {
    /// Reads a committed baseline; refuses other schema versions.
    pub fn from_json(bytes: &[u8]) -> anyhow::Result<Self> {
        let baseline: Baseline = serde_json::from_slice(bytes)?;
        if baseline.schema_version != BASELINE_SCHEMA_VERSION {
            anyhow::bail!(
                "schema version {}; this gate reads version {BASELINE_SCHEMA_VERSION} (take a new one with --update-baseline)",
                baseline.schema_version
            );
        }
        Ok(baseline)
    }

    pub fn from_observed(observed: &[Observed]) -> Self {
        let stacks = observed
            .iter()
            .filter(|o| !o.runtime)
            .map(|o| BaselineStack {
                kind: o.kind,
                stack: o.stack.clone(),
                value: o.value + o.noise,
                noise: o.noise,
            })
            .collect();
        Self { schema_version: BASELINE_SCHEMA_VERSION, stacks }
    }
}

#[derive(Clone, Debug, Serialize)]
pub struct Offender {
    pub kind: Kind,
    pub stack: String,
    pub value: u64,
    /// What this stack alone was allowed (baseline + band), when that applies.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub allowed: Option<u64>,
    pub frames: Vec<String>,
    /// Leading frames in the runtime or a standard library.
    pub library_frames: usize,
}

/// One budget, judged.
#[derive(Clone, Debug, Serialize)]
pub struct Check {
    pub name: String,
    pub limit: u64,
    pub actual: u64,
    pub passed: bool,
    /// Bytes, or handles.
    pub unit: String,
    /// The stacks counted against this budget, largest first.
    pub offenders: Vec<Offender>,
}

#[derive(Clone, Debug, Serialize)]
pub struct Decision {
    pub passed: bool,
    pub checks: Vec<Check>,
    /// Outstanding in the C runtime / loader only: allowed, listed for information.
    pub runtime: Vec<Observed>,
    /// Matched an allow rule (with its reason).
    pub allowed: Vec<(Observed, String)>,
}

fn offender(o: &Observed, allowed: Option<u64>) -> Offender {
    Offender {
        kind: o.kind,
        stack: o.stack.clone(),
        value: o.value,
        allowed,
        frames: o.frames.clone(),
        library_frames: o.library_frames,
    }
}

fn kind_matches(rule: &Option<Kind>, kind: Kind) -> bool {
    rule.is_none_or(|k| k == kind)
}

fn largest_first(mut v: Vec<&Observed>) -> Vec<&Observed> {
    v.sort_by_key(|o| std::cmp::Reverse(o.value));
    v
}

pub fn decide(observed: &[Observed], config: &Config, baseline: Option<&Baseline>) -> Decision {
    let base: BTreeMap<(Kind, &str), (u64, u64)> = baseline
        .map(|b| b.stacks.iter().map(|s| ((s.kind, s.stack.as_str()), (s.value, s.noise))).collect())
        .unwrap_or_default();
    let mut runtime = Vec::new();
    let mut allowed = Vec::new();
    let mut per_rule: Vec<Vec<&Observed>> = vec![Vec::new(); config.stacks.len()];
    let mut per_kind: BTreeMap<Kind, Vec<&Observed>> = BTreeMap::new();
    let mut grown: Vec<Offender> = Vec::new();
    let mut baseline_checked = 0;

    for o in observed.iter().filter(|o| o.value > 0) {
        if o.runtime && !config.include_runtime {
            runtime.push(o.clone());
            continue;
        }
        if let Some(rule) = config
            .allow
            .iter()
            .find(|a| kind_matches(&a.kind, o.kind) && a.function.matches_any(o.functions()))
        {
            allowed.push((o.clone(), rule.reason.clone()));
            continue;
        }
        if let Some(i) = config
            .stacks
            .iter()
            .position(|r| kind_matches(&r.kind, o.kind) && r.function.matches_any(o.functions()))
        {
            per_rule[i].push(o);
            continue;
        }
        if let Some(&(value, noise)) = base.get(&(o.kind, o.stack.as_str())) {
            baseline_checked += 1;
            let limit = value + config.baseline.allowance(value).max(noise);
            if o.value > limit {
                grown.push(offender(o, Some(limit)));
            }
            continue;
        }
        per_kind.entry(o.kind).or_default().push(o);
    }

    let mut checks = Vec::new();
    for kind in Kind::ALL {
        let Some(limit) = config.budget.get(kind) else { continue };
        let stacks = largest_first(per_kind.remove(&kind).unwrap_or_default());
        let actual = stacks.iter().map(|o| o.value).sum();
        let scope = if baseline.is_some() { "new stacks" } else { "all stacks" };
        checks.push(Check {
            name: format!("{kind} budget ({scope})"),
            limit,
            actual,
            passed: actual <= limit,
            unit: kind.unit().into(),
            offenders: stacks.iter().map(|o| offender(o, None)).collect(),
        });
    }
    for (rule, stacks) in config.stacks.iter().zip(per_rule) {
        let stacks = largest_first(stacks);
        let actual = stacks.iter().map(|o| o.value).sum();
        checks.push(Check {
            name: format!("stacks matching {}", rule.function.text),
            limit: rule.max,
            actual,
            passed: actual <= rule.max,
            unit: rule
                .kind
                .map(Kind::unit)
                .unwrap_or_else(|| stacks.first().map_or(Kind::Heap, |o| o.kind).unit())
                .into(),
            offenders: stacks.iter().map(|o| offender(o, None)).collect(),
        });
    }
    if baseline.is_some() {
        grown.sort_by_key(|o| std::cmp::Reverse(o.value - o.allowed.unwrap_or(0)));
        checks.push(Check {
            name: format!("baseline ({baseline_checked} stacks compared)"),
            limit: 0,
            actual: grown.len() as u64,
            passed: grown.is_empty(),
            unit: "stacks over baseline".into(),
            offenders: grown,
        });
    }
    Decision { passed: checks.iter().all(|c| c.passed), checks, runtime, allowed }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn obs(kind: &str, stack: &str, value: u64, runtime: bool) -> Observed {
        Observed {
            kind: kind.parse().unwrap(),
            stack: stack.into(),
            value,
            noise: 0,
            runtime,
            frames: vec![],
            library_frames: 0,
        }
    }

    fn failing(d: &Decision) -> Vec<String> {
        d.checks
            .iter()
            .filter(|c| !c.passed)
            .flat_map(|c| c.offenders.iter().map(|o| o.stack.clone()))
            .collect()
    }

    #[test]
    fn zero_config_fails_on_program_leaks_and_allows_runtime() {
        let c = Config::default();
        let clean = [obs("heap", "_dl_start;calloc", 272, true), obs("mmap", "main;work", 4096, false)];
        let d = decide(&clean, &c, None);
        assert!(d.passed, "runtime heap and (unbudgeted) mmap pass: {d:?}");
        assert_eq!(d.runtime.len(), 1);

        let leaky = [obs("heap", "main;leak", 10, false), obs("sockets", "main;open_conn", 1, false)];
        let d = decide(&leaky, &c, None);
        assert!(!d.passed);
        assert_eq!(failing(&d), vec!["main;leak", "main;open_conn"]);
    }

    #[test]
    fn allow_rules_and_stack_budgets() {
        let c = Config::parse(
            "[[allow]]\nfunction = \"init_*\"\nreason = \"once\"\n[[stack]]\nfunction = \"cache_*\"\nmax = 100\n",
        )
        .unwrap();
        let within =
            [obs("heap", "main;init_tables", 5000, false), obs("heap", "main;cache_put", 100, false)];
        let d = decide(&within, &c, None);
        assert!(d.passed, "{d:?}");
        assert_eq!(d.allowed[0].1, "once");
        let over = [obs("heap", "main;cache_put", 60, false), obs("heap", "main;x;cache_put", 60, false)];
        let d = decide(&over, &c, None);
        assert!(!d.passed);
        let check = d.checks.iter().find(|c| !c.passed).unwrap();
        assert_eq!((check.name.as_str(), check.actual, check.limit), ("stacks matching cache_*", 120, 100));
    }

    #[test]
    fn baseline_fails_exactly_the_grown_stack_and_budgets_new_ones() {
        let c = Config::default();
        let before = [obs("heap", "main;a", 1000, false), obs("heap", "main;b", 50, false)];
        let baseline = Baseline::from_observed(&before);
        assert!(decide(&before, &c, Some(&baseline)).passed);

        let grown = [obs("heap", "main;a", 1100, false), obs("heap", "main;b", 50, false)];
        let d = decide(&grown, &c, Some(&baseline));
        assert!(!d.passed);
        assert_eq!(failing(&d), vec!["main;a"]);

        let new_stack = [obs("heap", "main;a", 1000, false), obs("heap", "main;c", 8, false)];
        let d = decide(&new_stack, &c, Some(&baseline));
        assert_eq!(failing(&d), vec!["main;c"]);

        let shrunk = [obs("heap", "main;a", 10, false)];
        assert!(decide(&shrunk, &c, Some(&baseline)).passed);
    }

    #[test]
    fn noise_band_and_measured_noise_widen_the_baseline() {
        let c = Config::parse("[baseline]\nnoise_percent = 10.0\n").unwrap();
        let baseline = Baseline::from_observed(&[obs("heap", "main;a", 1000, false)]);
        assert!(decide(&[obs("heap", "main;a", 1100, false)], &c, Some(&baseline)).passed);
        assert!(!decide(&[obs("heap", "main;a", 1101, false)], &c, Some(&baseline)).passed);

        let mut noisy = obs("heap", "main;a", 1000, false);
        noisy.noise = 300;
        let baseline = Baseline::from_observed(&[noisy]);
        assert_eq!(baseline.stacks[0].value, 1300, "baseline keeps the max of the runs");
        assert!(decide(&[obs("heap", "main;a", 1600, false)], &Config::default(), Some(&baseline)).passed);
        assert!(!decide(&[obs("heap", "main;a", 1601, false)], &Config::default(), Some(&baseline)).passed);
    }
}
