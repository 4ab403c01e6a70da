//! Standard formats and offline tools (as root): pprof that `go tool pprof`
//! reads with exact totals, `profiler report` re-rendering a saved report,
//! and `profiler diff` of two runs with exact per-function deltas and a
//! differential flamegraph naming the function that grew.

mod common;

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    process::Command,
    sync::OnceLock,
};

use common::{tmp, PROFILER};

fn record(name: &str, exe: &Path, args: &[&str]) -> PathBuf {
    let dir = common::fresh_dir(name);
    common::record_launch(&dir, exe, args);
    dir
}

fn leaky_report() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| record("formats-leaky", &common::fixture("leaky"), &[]))
}

#[test]
fn go_tool_pprof_lists_the_leaking_functions_with_exact_bytes() {
    if Command::new("go").arg("version").output().is_err() {
        eprintln!("SKIPPED go_tool_pprof_lists_the_leaking_functions_with_exact_bytes: go is not installed (apt-get install golang-go)");
        return;
    }
    let top = |file: &str, args: &[&str]| {
        let out = Command::new("go")
            .args(["tool", "pprof", "-top", "-nodecount=200"])
            .args(args)
            .arg(leaky_report().join(file))
            .env("HOME", tmp())
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        // "flat flat% sum% cum cum% name" rows: function -> flat value.
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        text.lines()
            .filter_map(|l| {
                let cols: Vec<&str> = l.split_whitespace().collect();
                (cols.len() >= 6).then(|| (cols[5..].join(" "), cols[0].trim_end_matches('B').to_string()))
            })
            .collect::<BTreeMap<String, String>>()
    };
    // It opens on inuse_space, as Go's heap profiles do: no -sample_index needed.
    let heap = top("heap.pb.gz", &["-unit=B"]);
    for (f, bytes) in
        [("leak_malloc", "3000"), ("leak_calloc", "2000"), ("leak_pvalloc", "8192"), ("thread_main", "2048")]
    {
        assert_eq!(heap.get(f).map(String::as_str), Some(bytes), "{f}: {heap:?}");
    }
    // The profile's total is the report's heap total, nothing added from other kinds.
    let out = Command::new("go")
        .args(["tool", "pprof", "-top", "-unit=B"])
        .arg(leaky_report().join("heap.pb.gz"))
        .env("HOME", tmp())
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let total = text
        .lines()
        .find_map(|l| l.split(" of ").nth(1)?.strip_suffix(" total")?.strip_suffix('B')?.parse::<u64>().ok())
        .unwrap_or_else(|| panic!("no total in: {text}"));
    let report = common::report_json(leaky_report());
    assert_eq!(Some(total), report["totals"]["heap"]["bytes"].as_u64(), "{text}");
    // Inlined functions are Lines of one Location: -noinlines folds them into their caller,
    // -lines shows each source line.
    let outer = top("heap.pb.gz", &["-unit=B", "-noinlines"]);
    assert_eq!(outer.get("leak_malloc").map(String::as_str), Some("3000"), "{outer:?}");
    let lines = top("heap.pb.gz", &["-unit=B", "-lines"]);
    assert!(lines.keys().any(|f| f.starts_with("leak_malloc ") && f.contains("leaky.c:")), "{lines:?}");
    // Mappings carry each module's path, build id and code segment: -disasm reads the code,
    // and the bytes sit on the call that allocated them.
    let disasm = Command::new("go")
        .args(["tool", "pprof", "-disasm=leak_malloc", "-unit=B"])
        .arg(leaky_report().join("heap.pb.gz"))
        .env("HOME", tmp())
        .output()
        .unwrap();
    let listing = String::from_utf8_lossy(&disasm.stdout);
    assert!(disasm.status.success(), "{}", String::from_utf8_lossy(&disasm.stderr));
    assert!(
        listing.lines().any(|l| l.contains("3000B") && l.contains("CALL") && l.contains("leak_malloc")),
        "{listing}"
    );
    let raw = Command::new("go")
        .args(["tool", "pprof", "-raw"])
        .arg(leaky_report().join("heap.pb.gz"))
        .env("HOME", tmp())
        .output()
        .unwrap();
    let raw = String::from_utf8_lossy(&raw.stdout);
    let exe = common::fixture("leaky");
    let mapping = raw.lines().skip_while(|l| *l != "Mappings").find(|l| l.contains(exe.to_str().unwrap()));
    assert!(mapping.is_some_and(|m| m.contains("[FN][FL][LN][IN]")), "{raw}");
    let handles = top("sockets.pb.gz", &[]);
    assert_eq!(handles.get("leak_sockets").map(String::as_str), Some("3"), "{handles:?}");
    assert_eq!(handles.get("leak_socketpair").map(String::as_str), Some("2"), "{handles:?}");
}

#[test]
fn report_re_renders_a_saved_report() {
    let dir = leaky_report();
    let render = |format: &str| {
        let out = Command::new(PROFILER)
            .args(["report", "--format", format, "--kind", "heap"])
            .arg(dir.join("report.json"))
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        out.stdout
    };
    assert_eq!(render("folded"), std::fs::read(dir.join("heap.folded")).unwrap());
    let svg = String::from_utf8(render("svg")).unwrap();
    assert!(svg.contains("<svg") && svg.contains("leak_malloc"));
    assert!(String::from_utf8(render("text")).unwrap().contains("Top heap stacks"));
    assert_eq!(render("pprof")[..2], [0x1f, 0x8b], "gzip");
    let missing = Command::new(PROFILER).args(["report", "/nonexistent.json"]).output().unwrap();
    assert_eq!(missing.status.code(), Some(1));
    // A kind the report does not hold: the error lists those it does.
    let absent = Command::new(PROFILER)
        .args(["report", "--format", "svg", "--kind", "resident"])
        .arg(dir.join("report.json"))
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&absent.stderr);
    assert_eq!(absent.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("nothing of kind \"resident\" is outstanding"), "{stderr}");
    assert!(
        stderr.contains("kinds present: ") && stderr.contains("heap") && stderr.contains("sockets"),
        "{stderr}"
    );
}

/// `profiler report` views: focus and ignore by frame regex, a minimum
/// size, one process, another order; totals count only what is shown.
#[test]
fn report_views_focus_ignore_min_bytes_pid_and_sort() {
    let dir = leaky_report();
    let view = |args: &[&str]| -> serde_json::Value {
        let out = Command::new(PROFILER)
            .args(["report", "--format", "json"])
            .args(args)
            .arg(dir.join("report.json"))
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        serde_json::from_slice(&out.stdout).unwrap()
    };
    let focused = view(&["--focus", "^leak_(malloc|calloc)$"]);
    assert_eq!(focused["totals"]["heap"]["bytes"], 5000, "{}", focused["totals"]);
    assert_eq!(focused["totals"]["sockets"]["count"], 0);
    assert!(focused["selection"].as_str().unwrap().contains("--focus"));
    let ignored = view(&["--ignore", "leak_", "--min-bytes", "4K"]);
    let heap_bytes = |report: &serde_json::Value| -> Vec<u64> {
        report["stacks"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|e| e["kind"] == "heap")
            .map(|e| e["bytes"].as_u64().unwrap())
            .collect()
    };
    let heap_bytes_ignored = heap_bytes(&ignored);
    assert!(heap_bytes_ignored.iter().all(|b| *b >= 4096), "{heap_bytes_ignored:?}");
    assert_eq!(common::through(&ignored, "heap", "leak_pvalloc"), (0, 0));
    let pid = focused["target"]["pid"].as_u64().unwrap();
    assert_eq!(view(&["--pid", &(pid + 1).to_string()])["stacks"].as_array().unwrap().len(), 0);
    let by_size = view(&["--sort", "size"]);
    let sizes = heap_bytes(&by_size);
    assert!(sizes.windows(2).all(|w| w[0] >= w[1]), "{sizes:?}");
    let text = Command::new(PROFILER)
        .args(["report", "--focus", "leak_calloc"])
        .arg(dir.join("report.json"))
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&text.stdout);
    assert!(text.contains("Showing: --focus \"leak_calloc\""), "{text}");
    let bad = Command::new(PROFILER)
        .args(["report", "--focus", "("])
        .arg(dir.join("report.json"))
        .output()
        .unwrap();
    assert_eq!(bad.status.code(), Some(2), "a bad regex is a usage error");
}

#[test]
fn diff_of_two_runs_gives_exact_deltas_and_a_differential_flamegraph() {
    let exe = common::fixture("gatework");
    let a = record("formats-diff-a", &exe, &["--leak", "10"]);
    let b = record("formats-diff-b", &exe, &["--leak", "25", "--extra"]);
    let out_dir = tmp().join("formats-diff");
    let out = Command::new(PROFILER)
        .arg("diff")
        .arg(a.join("report.json"))
        .arg(b.join("report.json"))
        .arg("-o")
        .arg(&out_dir)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let deltas: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out_dir.join("diff.json")).unwrap()).unwrap();
    let heap: BTreeMap<String, i64> = deltas
        .as_array()
        .unwrap()
        .iter()
        .filter(|d| d["kind"] == "heap")
        .map(|d| {
            (
                d["stack"].as_str().unwrap().rsplit(';').next().unwrap().to_string(),
                d["delta"].as_i64().unwrap(),
            )
        })
        .collect();
    assert_eq!(heap.get("leaky_request"), Some(&1500), "{heap:?}");
    assert_eq!(heap.get("extra_leak"), Some(&64), "{heap:?}");
    assert_eq!(heap.get("init_cache"), None, "unchanged stacks are not listed");
    let first = &deltas[0];
    assert!(first["stack"].as_str().unwrap().ends_with("leaky_request"), "ranked by growth: {first}");
    let svg = std::fs::read_to_string(out_dir.join("diff-heap.svg")).unwrap();
    assert!(svg.contains("<svg") && svg.contains("leaky_request"));
    let page = std::fs::read_to_string(out_dir.join("index.html")).unwrap();
    assert!(page.contains("leaky_request") && page.contains("alt=\"heap differential flamegraph\""));
    assert!(String::from_utf8_lossy(&out.stdout).contains("leaky_request"));
}

/// 40 calls from one line at 40 return addresses (an unrolled loop, Rust
/// release build with line tables): one row "over 40 calls", the addresses
/// kept in JSON.
#[test]
fn identical_symbolized_stacks_are_one_row_over_their_calls() {
    let exe = common::built_fixture("rustc", "unrolled.rs", &["-C", "opt-level=3", "-g"]);
    let dir = record("formats-unrolled", &exe, &[]);
    let report = common::report_json(&dir);
    let rows: Vec<&serde_json::Value> =
        common::entries_through(&report, "heap", "unrolled::leak_unrolled").collect();
    assert_eq!(rows.len(), 1, "{rows:#?}");
    let row = rows[0];
    assert_eq!((row["bytes"].as_u64(), row["count"].as_u64()), (Some(40 * 65536), Some(40)));
    assert_eq!(row["sites"], 40);
    let paths = row["site_offsets"].as_array().unwrap();
    assert_eq!(paths.len(), 40);
    let distinct: std::collections::BTreeSet<String> = paths.iter().map(|p| p.to_string()).collect();
    assert_eq!(distinct.len(), 40, "each path has its own addresses");
    let text = std::fs::read_to_string(dir.join("report.txt")).unwrap();
    assert!(text.contains("2.5 MiB over 40 calls from 40 code paths"), "{text}");
}

/// index.html as a browser shows it: Debian's chromium, headless, loads the
/// page from disk with nothing to fetch; the chart, every kind's flamegraph
/// and the leaking function are in the rendered page; a screenshot is left
/// beside the report (`index.png`).
#[test]
fn index_html_renders_offline_in_headless_chromium() {
    let Some(chromium) = ["chromium", "chromium-browser"]
        .into_iter()
        .find(|c| Command::new(c).arg("--version").output().is_ok())
    else {
        eprintln!("SKIPPED index_html_renders_offline_in_headless_chromium: chromium is not installed (cargo xtask test installs it)");
        return;
    };
    let dir = common::fresh_dir("formats-html");
    let out = Command::new(PROFILER)
        .args(["record", "--lens", "alloc,handles", "-q", "--interval", "0.25", "-o"])
        .arg(&dir)
        .arg("--")
        .arg(common::fixture("trend"))
        .arg("3")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let page = std::fs::read_to_string(dir.join("index.html")).unwrap();
    // Nothing to fetch: no URL with a scheme or host, no script.
    for needle in ["http:", "https:", "src=\"//", "href=\"//", "<script", "@import"] {
        assert!(!page.contains(needle), "index.html refers to {needle}");
    }
    let url = format!("file://{}", dir.join("index.html").display());
    let browser = |args: &[String]| {
        let out = Command::new(chromium)
            .args(["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--hide-scrollbars"])
            .arg(format!("--user-data-dir={}", tmp().join("chromium-profile").display()))
            .args(args)
            .arg(&url)
            .env("HOME", tmp())
            .output()
            .unwrap();
        assert!(out.status.success(), "chromium: {}", String::from_utf8_lossy(&out.stderr));
        out
    };
    let dom = String::from_utf8(browser(&["--dump-dom".into()]).stdout).unwrap();
    assert!(dom.contains("class=\"chart\"") && dom.contains("data-kind=\"heap\""), "the heap chart");
    assert!(dom.contains("leak_steady"), "the leaking function is on the page");
    let svgs: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".svg"))
        .collect();
    assert!(!svgs.is_empty());
    for svg in &svgs {
        let kind = svg.trim_end_matches(".svg");
        assert!(dom.contains(&format!("alt=\"{kind} flamegraph\"")), "the {kind} flamegraph is embedded");
    }
    let png = dir.join("index.png");
    browser(&[format!("--screenshot={}", png.display()), "--window-size=1280,2200".into()]);
    let shot = std::fs::read(&png).unwrap();
    assert_eq!(&shot[..8], b"\x89PNG\r\n\x1a\n");
    assert!(shot.len() > 20_000, "a page, not a blank: {} bytes", shot.len());
}
