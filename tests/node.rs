//! Node.js fixtures reproducing the seeds' leaks (loopback only, bounded),
//! each printing its own ground truth. The profiler records the live
//! process and the report is taken while it still holds the leak (Node frees
//! its Buffers at exit).

mod common;

use std::{
    io::{BufRead, BufReader},
    path::Path,
    process::{Command, Stdio},
};

use common::PROFILER;

/// Launches `node FLAGS script ARGS` under the profiler, waits for the line
/// starting with `truth_prefix`, ends recording with SIGINT while node is
/// still alive; returns the report and the number after the prefix.
fn record_node(
    name: &str,
    script: &str,
    args: &[&str],
    truth_prefix: &str,
) -> Option<(serde_json::Value, u64)> {
    if Command::new("node").arg("--version").output().is_err() {
        eprintln!("SKIPPED {name}: node is not installed");
        return None;
    }
    Some(record_node_binary(Path::new("node"), name, script, args, truth_prefix))
}

/// [`record_node`] with the node binary `node`.
fn record_node_binary(
    node: &Path,
    name: &str,
    script: &str,
    args: &[&str],
    truth_prefix: &str,
) -> (serde_json::Value, u64) {
    let _one_alloc_lens = ALLOC_LENS.lock().unwrap_or_else(|e| e.into_inner());
    let dir = common::fresh_dir(name);
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/node").join(script);
    let mut profiler = Command::new(PROFILER)
        .current_dir(common::tmp()) // node --perf-basic-prof writes logs to its working directory
        .args(["record", "--lens", "alloc,handles", "-q", "--interval", "1", "-o"])
        .arg(&dir)
        .arg("--")
        .arg(node)
        .args(["--expose-gc", "--perf-basic-prof", "--interpreted-frames-native-stack"])
        .arg(&script)
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = BufReader::new(profiler.stdout.take().unwrap());
    let mut truth = None;
    for line in stdout.lines() {
        let line = line.unwrap();
        if let Some(n) = line.strip_prefix(truth_prefix) {
            truth = Some(n.trim().parse::<u64>().unwrap());
            break;
        }
    }
    let truth = truth.expect("the fixture printed its ground truth");
    assert!(Command::new("kill").args(["-INT", &profiler.id().to_string()]).status().unwrap().success());
    assert!(profiler.wait().unwrap().success());
    let report = common::report_json(&dir);
    // The profiler detached; the fixture is still running.
    let _ = Command::new("kill").arg(report["target"]["pid"].to_string()).status();
    (report, truth)
}

/// Whether node runs here; says the test is skipped when not.
fn node_installed() -> bool {
    let installed = Command::new("node").arg("--version").output().is_ok();
    if !installed {
        eprintln!("SKIPPED: node is not installed");
    }
    installed
}

fn bytes_where(report: &serde_json::Value, keep: impl Fn(&serde_json::Value) -> bool) -> u64 {
    report["stacks"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| keep(e))
        .map(|e| e["bytes"].as_u64().unwrap())
        .sum()
}

fn has_frame(e: &serde_json::Value, needle: &str) -> bool {
    e["frames"].as_array().unwrap().iter().any(|f| has_name(f, needle))
}

#[test]
fn retained_response_bodies_are_attributed_to_the_js_function_that_keeps_them() {
    let Some((report, truth)) = record_node("node-responses", "responses.js", &["300"], "retained ") else {
        return;
    };
    assert_eq!(truth, 300 * 64 * 1024);
    let in_function = bytes_where(&report, |e| e["kind"] == "heap" && has_frame(e, "retainResponse"));
    assert!(
        in_function as f64 >= 0.9 * truth as f64,
        "only {in_function} of {truth} retained bytes are in stacks naming retainResponse"
    );
    let external = report["memory_split"]["external_bytes"].as_u64().unwrap();
    let error = (external as f64 - truth as f64).abs() / truth as f64;
    assert!(error <= 0.02, "external memory {external} vs ground truth {truth}");
    assert!(
        report["memory_split"]["v8_heap_bytes"].as_u64().unwrap() > 0,
        "V8's heap mappings are classified"
    );
    let txt = std::fs::read_to_string(common::tmp().join("node-responses/report.txt")).unwrap();
    assert!(
        txt.contains(
            "Memory split (heap blocks and mappings; V8 heap and external by node's own count): V8 heap"
        ),
        "{txt}"
    );
}

#[test]
fn unbounded_set_shows_up_as_v8_heap_growth() {
    let Some((report, ids)) = record_node("node-set", "set.js", &["40"], "ids ") else { return };
    assert_eq!(ids, 200_000);
    // Per sample, the V8 heap's mappings (V8's page allocator), summed over stacks.
    let v8: Vec<&serde_json::Value> =
        report["stacks"].as_array().unwrap().iter().filter(|e| e["class"] == "v8-heap").collect();
    let samples = report["series"]["times"].as_array().unwrap().len();
    let totals: Vec<u64> =
        (0..samples).map(|i| v8.iter().map(|e| e["series"][i].as_u64().unwrap_or(0)).sum()).collect();
    let started = totals.iter().copied().find(|v| *v > 0).expect("V8 reserved its heap");
    let grown = totals.last().unwrap() - started;
    // 200k strings of ~60 bytes plus the Set's table: at least 10 MiB of new V8 pages.
    assert!(grown >= 10 << 20, "V8 heap grew by only {grown} bytes: {totals:?}");
    let pages =
        v8.iter().find(|e| has_frame(e, "MemoryAllocator")).expect("V8's page allocations are attributed");
    assert!(pages["trend"]["growth_per_min"].as_f64().unwrap() > 0.0, "{}", pages["trend"]);
}

/// Open handles of `kind` whose stacks contain `needle`.
fn handles_where(report: &serde_json::Value, kind: &str, needle: &str) -> u64 {
    report["stacks"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["kind"] == kind && has_frame(e, needle))
        .map(|e| e["count"].as_u64().unwrap())
        .sum()
}

#[test]
fn keep_alive_agents_per_request_leak_exactly_their_sockets() {
    let Some((report, count)) = record_node("node-agents", "agents.js", &["20"], "sockets ") else { return };
    assert_eq!(handles_where(&report, "sockets", "internalConnect"), count, "client sockets");
    // Connected a tick later (process.nextTick), with no JS of the app on
    // the stack: the socket's creator is joined after a handoff frame, down
    // to the JS that made the agent.
    assert_eq!(
        handles_where(&report, "sockets", "JS:requestWithNewAgent "),
        count,
        "{:#?}",
        report["stacks"]
    );
    assert_eq!(handles_where(&report, "sockets", "uv__accept"), count, "their server ends");
    assert_eq!(report["handles"]["sockets"]["tcp"]["open"], count * 2 + 1, "plus the listener");
}

#[test]
fn unconsumed_read_streams_leak_exactly_their_fds() {
    let Some((report, count)) = record_node("node-streams", "streams.js", &["10"], "streams ") else {
        return;
    };
    assert_eq!(handles_where(&report, "files", "uv__fs_open"), count);
    // Opened on a threadpool thread for the stream's construction, which
    // node defers with process.nextTick: the JS that queued the open is
    // node's (the caller of createReadStream is on another tick).
    let queued = handles_where(&report, "files", "[libuv threadpool: the work was queued by]");
    assert_eq!(queued, count, "{:#?}", report["stacks"]);
    assert_eq!(handles_where(&report, "files", "JS:_construct node:internal/fs/streams"), count);
}

/// `fs.open` runs on libuv's threadpool: the fd is attributed to the JS
/// function that called it, through the handoff (issue 16). On this
/// machine's node and on node 22.
#[test]
fn files_opened_on_the_threadpool_are_attributed_to_the_js_that_asked() {
    if !node_installed() {
        return;
    }
    for node in node_binaries() {
        let (report, count) = record_node_binary(&node, "node-opens", "opens.js", &["12"], "opened ");
        let name = node.display();
        // In flight at once, among fs.stat work: each open under its request.
        assert_eq!(
            handles_where(&report, "files", "JS:openAuditLog "),
            count,
            "{name}: {:#?}",
            report["stacks"]
        );
        assert_eq!(
            handles_where(&report, "files", "JS:openConfigSync "),
            1,
            "{name}: {:#?}",
            report["stacks"]
        );
        let stack = report["stacks"]
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["kind"] == "files" && has_frame(e, "JS:openAuditLog "))
            .unwrap();
        let names: Vec<&str> =
            stack["frames"].as_array().unwrap().iter().map(|f| f["function"].as_str().unwrap()).collect();
        let handoff =
            names.iter().position(|n| n.starts_with("[libuv threadpool")).expect("the handoff frame");
        assert_eq!(names[0], "uv__fs_open", "{name}: {names:#?}");
        assert!(
            names[handoff + 1].starts_with("node::fs::Open"),
            "{name}: the request's frames follow: {names:#?}"
        );
        assert!(stack["fds"][0].as_str().unwrap().ends_with("/opens.js"), "{}", stack["fds"]);
    }
}

#[test]
fn control_server_after_warm_up_has_no_growing_stack() {
    if Command::new("node").arg("--version").output().is_err() {
        eprintln!("SKIPPED control_server_after_warm_up_has_no_growing_stack: node is not installed");
        return;
    }
    let _one_alloc_lens = ALLOC_LENS.lock().unwrap_or_else(|e| e.into_inner());
    let dir = common::fresh_dir("node-control");
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/node/control.js");
    let mut profiler = Command::new(PROFILER)
        .current_dir(common::tmp())
        .args(["record", "--lens", "alloc,handles", "-q", "--interval", "1", "--warmup-marker", "warm", "-o"])
        .arg(&dir)
        .args(["--", "node", "--expose-gc", "--perf-basic-prof", "--interpreted-frames-native-stack"])
        .arg(&script)
        .arg("10")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = BufReader::new(profiler.stdout.take().unwrap());
    assert!(stdout.lines().map_while(Result::ok).any(|l| l.starts_with("done")), "the control ran");
    assert!(Command::new("kill").args(["-INT", &profiler.id().to_string()]).status().unwrap().success());
    assert!(profiler.wait().unwrap().success());
    let report = common::report_json(&dir);
    let _ = Command::new("kill").arg(report["target"]["pid"].to_string()).status();
    assert!(report["warmup"].as_str().unwrap().contains("warm"), "{}", report["warmup"]);
    let growing: Vec<String> = report["stacks"]
        .as_array()
        .unwrap()
        .iter()
        // brk is the top of glibc's arena, which grows while V8 frees Buffers late and is not
        // trimmed eagerly; the allocations made from it are judged individually under heap.
        // V8 commits its heap's pages by its own sizing policy (seen in CI: 3 more pages, 768 KiB,
        // after the warm-up): below 4 MiB that is not this control's business.
        .filter(|e| e["kind"] != "brk" && e["trend"]["verdict"] == "growing")
        .filter(|e| {
            let v8_pages = e["kind"] == "mmap" && has_frame(e, "v8::base::OS::Allocate");
            !(v8_pages && e["bytes"].as_u64().unwrap() < 4 << 20)
        })
        .map(|e| format!("{} {} {}", e["kind"], e["bytes"], e["frames"][0]["function"]))
        .collect();
    assert!(growing.is_empty(), "stacks growing across snapshots in the control: {growing:#?}");
}

/// Attaches the profiler to `pid` with `args`, writing to `dir`, and
/// returns once it says it is profiling (its stderr is drained after that).
fn attach(pid: u32, args: &[&str], dir: &Path) -> std::process::Child {
    let mut profiler = Command::new(PROFILER)
        .args(["record", "--pid", &pid.to_string()])
        .args(args)
        .args(["-q", "-o"])
        .arg(dir)
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stderr = BufReader::new(profiler.stderr.take().unwrap());
    let mut said = String::new();
    while !said.starts_with("profiling") {
        said.clear();
        assert!(stderr.read_line(&mut said).unwrap() > 0, "the profiler never attached");
    }
    std::thread::spawn(move || std::io::copy(&mut stderr, &mut std::io::sink()));
    profiler
}

/// Starts `node script ARGS` without the profiler (no flags) and waits for
/// the line starting with `ready_prefix`; `None` without node. The lines it
/// prints later arrive on the receiver (its stdout stays open).
fn start_node(
    script: &str,
    args: &[&str],
    ready_prefix: &str,
) -> Option<(std::process::Child, std::sync::mpsc::Receiver<String>)> {
    if !node_installed() {
        return None;
    }
    Some(start_node_binary(Path::new("node"), script, args, ready_prefix))
}

/// The node binaries JS names are checked with: the machine's, and node 22
/// from the npm registry where `cargo xtask test` installed it.
fn node_binaries() -> Vec<std::path::PathBuf> {
    let mut nodes = vec![std::path::PathBuf::from("node")];
    let other = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/node-22/node_modules/node/bin/node");
    if other.exists() {
        nodes.push(other);
    } else {
        eprintln!("SKIPPED for node 22: {} is not installed (cargo xtask test installs it)", other.display());
    }
    nodes
}

/// [`start_node`] with the node binary `node`.
fn start_node_binary(
    node: &Path,
    script: &str,
    args: &[&str],
    ready_prefix: &str,
) -> (std::process::Child, std::sync::mpsc::Receiver<String>) {
    start_node_with_env(node, script, args, &[], ready_prefix)
}

/// [`start_node_binary`] with environment variables `env` set.
fn start_node_with_env(
    node: &Path,
    script: &str,
    args: &[&str],
    env: &[(&str, &str)],
    ready_prefix: &str,
) -> (std::process::Child, std::sync::mpsc::Receiver<String>) {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/node").join(script);
    let mut node = Command::new(node)
        .arg(&script)
        .args(args)
        .envs(env.iter().copied())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = BufReader::new(node.stdout.take().unwrap());
    let (send, lines) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in stdout.lines().map_while(Result::ok) {
            if send.send(line).is_err() {
                break;
            }
        }
    });
    let ready = lines.iter().any(|line| line.starts_with(ready_prefix));
    if !ready {
        let _ = node.kill();
        let _ = node.wait();
        panic!("{} never printed {ready_prefix:?}", script.display());
    }
    (node, lines)
}

/// Attached after the leaks happened, as the seeds' engineers attach: the
/// leaked keep-alive sockets (with their peer, the server's port) and the
/// unconsumed streams' files (with their path) are reported as held at the
/// start, and so is the resident memory by region. A second wave of leaks
/// while recording is attributed by stack, with its peers.
#[test]
fn leaks_made_before_attach_are_reported_as_held_with_peers_and_paths() {
    let Some((mut agents, agent_lines)) = start_node("agents.js", &["24", "6"], "sockets 24") else { return };
    let Some((mut streams, _)) = start_node("streams.js", &["9"], "streams 9") else { return };
    for (node, name) in [(&agents, "agents"), (&streams, "streams")] {
        let dir = common::fresh_dir(&format!("node-held-{name}"));
        let mut profiler = attach(node.id(), &["-d", "3"], &dir);
        if name == "agents" {
            assert!(Command::new("kill").args(["-USR2", &node.id().to_string()]).status().unwrap().success());
            assert!(agent_lines.iter().any(|l| l == "second wave 6"));
        }
        assert!(profiler.wait().unwrap().success());
        let report = common::report_json(&dir);
        let held = &report["held_at_start"];
        let described: Vec<&str> =
            held["handles"].as_array().unwrap().iter().map(|h| h["description"].as_str().unwrap()).collect();
        if name == "agents" {
            let listener =
                described.iter().find(|d| d.ends_with("(listening)")).expect("the server's socket");
            let port = listener.rsplit(':').next().unwrap().trim_end_matches(" (listening)");
            let to_server = format!("-> 127.0.0.1:{port} established");
            let clients = described.iter().filter(|d| d.contains(&to_server)).count();
            assert_eq!(clients, 24, "the leaked client sockets, by peer: {described:#?}");
            // The second wave: 6 client sockets under the code that connects, and
            // (node started with no flag) the JS function that created them, with their peer.
            assert_eq!(handles_where(&report, "sockets", "TCPWrap::Connect"), 6, "{}", report["totals"]);
            assert_eq!(
                handles_where(&report, "sockets", "JS:requestWithNewAgent "),
                6,
                "{:#?}",
                report["stacks"]
            );
            let new_clients: usize = report["stacks"]
                .as_array()
                .unwrap()
                .iter()
                .filter(|e| e["kind"] == "sockets" && has_frame(e, "JS:requestWithNewAgent "))
                .flat_map(|e| e["fds"].as_array().unwrap())
                .filter(|fd| fd.as_str().unwrap().contains(&to_server))
                .count();
            assert_eq!(new_clients, 6, "{:#?}", report["stacks"]);
        } else {
            let files = described.iter().filter(|d| d.ends_with("/streams.js")).count();
            assert_eq!(files, 9, "the unconsumed streams' files, by path: {described:#?}");
        }
        let memory = held["memory"].as_array().unwrap();
        let class = |c: &str| memory.iter().any(|r| r["class"].as_str().unwrap().starts_with(c));
        assert!(class("file mappings") && class("V8 heap, young") && class("V8 heap, old"), "{memory:#?}");
        assert!(held_v8_pages(&report) > 1 << 20, "{memory:#?}");
        let text = std::fs::read_to_string(dir.join("report.txt")).unwrap();
        assert!(text.contains("Held when recording started"), "{text}");
    }
    let _ = agents.kill();
    let _ = streams.kill();
    let _ = agents.wait();
    let _ = streams.wait();
}

/// A function optimized mid-run while it leaks (issue 16): its interpreted
/// and optimized code are one frame, so the leak is one stack (several code
/// paths merged) with one verdict.
#[test]
fn a_leak_that_tiers_up_mid_run_stays_one_growing_stack() {
    let Some((report, truth)) = record_node("node-tierup", "tierup.js", &[], "leaked ") else { return };
    let leaking: Vec<&serde_json::Value> = report["stacks"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["kind"] == "heap" && has_frame(e, "NodeArrayBufferAllocator"))
        .filter(|e| {
            e["frames"]
                .as_array()
                .unwrap()
                .iter()
                .any(|f| f["function"].as_str().unwrap().starts_with("JS:leak "))
        })
        .collect();
    assert_eq!(leaking.len(), 1, "one stack for leak()'s buffers, whatever its tier: {leaking:#?}");
    let e = leaking[0];
    assert!(e["sites"].as_u64().unwrap() >= 2, "its interpreted and optimized code paths are merged: {e}");
    assert!(e["bytes"].as_u64().unwrap() as f64 >= 0.95 * truth as f64, "{} of {truth} bytes", e["bytes"]);
    assert_eq!(e["trend"]["verdict"], "growing", "{e}");
}

/// Node opens its inspector on 127.0.0.1:9229: one js-heap recording at a time.
static INSPECTOR: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// Node under the alloc lens makes about 300k events a second: one such
/// recording at a time, or on two cores the profilers fall behind and their
/// ring buffers fill (the report then says INCOMPLETE, and exact counts fail).
/// Never held together with [`INSPECTOR`].
static ALLOC_LENS: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// The seeds' unbounded Set in a steady-state service, started without
/// flags: `--lens js-heap` opens node's inspector from outside, and V8's
/// sampling heap profiler names the JS function that grows it. The
/// inspector is closed afterwards, its own sockets are not blamed on the
/// target, and V8's heap numbers and limit are reported.
#[test]
fn js_heap_lens_names_the_function_that_grows_a_set_and_closes_the_inspector() {
    let _one_inspector = INSPECTOR.lock().unwrap_or_else(|e| e.into_inner());
    let Some((report, dir, lines)) =
        record_processed_js("node-js-heap", &["--lens", "js-heap,handles", "-d", "6", "--interval", "1"])
    else {
        return;
    };
    let lags: Vec<&String> = lines.iter().filter(|l| l.starts_with("lag p99")).collect();
    let js: Vec<&serde_json::Value> =
        report["stacks"].as_array().unwrap().iter().filter(|e| e["kind"] == "js-heap").collect();
    // Sampling started at attach: every live sample is growth since then.
    let bytes = |e: &&serde_json::Value| e["bytes"].as_u64().unwrap();
    let total: u64 = js.iter().map(bytes).sum();
    let marked: u64 = js.iter().filter(|e| has_frame(e, "JS:markProcessed ")).map(bytes).sum();
    assert!(total > 4 << 20, "the Set grew by only {total} sampled bytes");
    assert!(marked as f64 >= 0.9 * total as f64, "markProcessed holds {marked} of {total} bytes: {js:#?}");
    let top = js.iter().find(|e| has_frame(e, "JS:markProcessed ")).unwrap();
    assert_eq!(top["trend"]["verdict"], "growing", "{}", top["trend"]);
    let frame = top["frames"].as_array().unwrap().iter().find(|f| has_name(f, "JS:markProcessed ")).unwrap();
    assert!(frame["file"].as_str().unwrap().ends_with("processed.js") && frame["line"] == 15, "{frame}");
    // V8's own numbers.
    let heap = &report["v8_heap"];
    assert!(heap["inspector"].as_str().unwrap().contains("closed after it"), "{heap}");
    assert!(heap["limit_bytes"].as_u64().unwrap() > heap["used_bytes"].as_u64().unwrap(), "{heap}");
    assert!(heap["readings"].as_u64().unwrap() >= 6, "{heap}");
    assert!(heap["growth_mib_per_min"].as_f64().unwrap() > 0.0, "{heap}");
    let spaces: Vec<&str> =
        heap["spaces"].as_array().unwrap().iter().map(|s| s["name"].as_str().unwrap()).collect();
    assert!(spaces.contains(&"old_space") && spaces.contains(&"new_space"), "{spaces:?}");
    // The inspector's connection was ours: opened and closed while recording, not the target's leak.
    assert_eq!(report["totals"]["sockets"]["count"], 0, "{}", report["totals"]);
    // What the process held at attach, told apart by V8's own count.
    assert!(heap["first"]["committed_bytes"].as_u64().unwrap() > 0, "{heap}");
    let text = std::fs::read_to_string(dir.join("report.txt")).unwrap();
    assert!(text.contains("V8 heap: ok") && text.contains("js-heap"), "{text}");
    assert!(text.contains("V8's own count") && text.contains("V8 heap, old generation"), "{text}");
    eprintln!("event-loop delay of the target while sampled: {lags:?}");
}

/// Attached to a node at rest (no flag), on node 20 and node 22: V8's
/// pages, recognised in smaps by their headers, agree with V8's own
/// committed size (`v8.getHeapStatistics().total_physical_size`, read right
/// after the attach) within 10% (4% measured), and the 40 Buffers of 512
/// KiB are in malloc's large blocks (glibc's mmap threshold pinned at its
/// default, so a free cannot raise it above their size).
#[test]
fn v8_pages_and_large_buffers_held_at_attach_agree_with_v8s_count() {
    if !node_installed() {
        return;
    }
    for node in node_binaries() {
        let threshold = [("MALLOC_MMAP_THRESHOLD_", "131072")];
        let (mut target, lines) = start_node_with_env(&node, "heldheap.js", &[], &threshold, "ready");
        let dir = common::fresh_dir("node-held-v8-pages");
        let mut profiler = attach(target.id(), &["-d", "1"], &dir);
        assert!(Command::new("kill").args(["-USR2", &target.id().to_string()]).status().unwrap().success());
        let heap_line = lines.recv_timeout(std::time::Duration::from_secs(10)).unwrap();
        let counts: Vec<u64> = heap_line.split_whitespace().skip(1).map(|n| n.parse().unwrap()).collect();
        let (committed, array_buffers) = (counts[0], counts[1]);
        assert!(profiler.wait().unwrap().success());
        let _ = target.kill();
        let _ = target.wait();
        let report = common::report_json(&dir);
        let memory = &report["held_at_start"]["memory"];
        let v8_pages = held_v8_pages(&report);
        eprintln!("{}: V8's pages in smaps {v8_pages}, V8's committed {committed}", node.display());
        assert!(
            (v8_pages as f64 - committed as f64).abs() <= 0.1 * committed as f64,
            "{}: V8's pages in smaps {v8_pages} vs V8's committed {committed}: {memory:#?}",
            node.display()
        );
        let large_blocks: u64 = memory
            .as_array()
            .unwrap()
            .iter()
            .filter(|r| r["class"].as_str().unwrap().starts_with("large malloc blocks"))
            .map(|r| r["rss_bytes"].as_u64().unwrap())
            .sum();
        assert!(
            // Resident pages are spread evenly over a mapping the kernel merged from
            // blocks and something else: within 5%.
            large_blocks as f64 >= 0.95 * (40 * (512 << 10)) as f64
                && large_blocks <= array_buffers + (1 << 20),
            "{}: large malloc blocks {large_blocks}, ArrayBuffers {array_buffers}: {memory:#?}",
            node.display()
        );
    }
}

/// The resident bytes of V8's pages (both generations) held at the start.
fn held_v8_pages(report: &serde_json::Value) -> u64 {
    report["held_at_start"]["memory"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["class"].as_str().unwrap().starts_with("V8 heap"))
        .map(|r| r["rss_bytes"].as_u64().unwrap())
        .sum()
}

/// Records the Set fixture (`processed.js`, started without flags) by
/// `--pid` with `args`, checks that the inspector the recording opened is
/// closed again, and returns the report, its directory and what the
/// fixture printed meanwhile. Hold [`INSPECTOR`].
fn record_processed_js(
    name: &str,
    args: &[&str],
) -> Option<(serde_json::Value, std::path::PathBuf, Vec<String>)> {
    // Its lines are kept coming: a closed stdout would end it with EPIPE.
    let (mut node, lines) = start_node("processed.js", &["60"], "ready")?;
    let pid = node.id();
    let ports_before = profiler::process::fds::loopback_listening_ports(pid);
    let dir = common::fresh_dir(name);
    let out = Command::new(PROFILER)
        .args(["record", "--pid", &pid.to_string()])
        .args(args)
        .args(["-q", "-o"])
        .arg(&dir)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let ports_after = profiler::process::fds::loopback_listening_ports(pid);
    let printed: Vec<String> = lines.try_iter().collect();
    let _ = node.kill();
    let _ = node.wait();
    assert_eq!(ports_after, ports_before, "the inspector's port is closed again");
    Some((common::report_json(&dir), dir, printed))
}

fn has_name(frame: &serde_json::Value, needle: &str) -> bool {
    frame["function"].as_str().is_some_and(|f| f.contains(needle))
}

/// A service leaking into `--max-old-space-size=64`: V8's utilisation rises
/// and the time to its limit shrinks across the readings, and the abort is
/// named (node's OOM handler, probed in the kernel), not just "SIGABRT".
#[test]
fn a_leak_into_the_v8_heap_limit_is_seen_coming_and_its_abort_is_named() {
    let _one_inspector = INSPECTOR.lock().unwrap_or_else(|e| e.into_inner());
    if !node_installed() {
        return;
    }
    let dir = common::fresh_dir("node-heap-limit");
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/node/heaplimit.js");
    let out = Command::new(PROFILER)
        .args(["record", "--lens", "js-heap", "--interval", "0.5", "-q", "-o"])
        .arg(&dir)
        .args(["--", "node", "--max-old-space-size=64"])
        .arg(&script)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let report = common::report_json(&dir);
    assert_eq!(report["target_exit"]["signal"], "SIGABRT", "{}", report["end_reason"]);
    assert!(
        report["end_reason"].as_str().unwrap().starts_with("V8 out of memory"),
        "{}",
        report["end_reason"]
    );
    let oom = &report["v8_out_of_memory"][0];
    assert!(oom["what"].as_str().unwrap().starts_with("JavaScript heap out of memory"), "{oom}");
    let heap = &report["v8_heap"];
    let utilisation: Vec<f64> =
        heap["utilisation_pct_series"].as_array().unwrap().iter().map(|v| v.as_f64().unwrap()).collect();
    assert!(utilisation.len() >= 6, "{utilisation:?}");
    assert!(utilisation.last().unwrap() > &(2.0 * utilisation[0]), "{utilisation:?}");
    let to_limit: Vec<f64> =
        heap["time_to_limit_s_series"].as_array().unwrap().iter().filter_map(|v| v.as_f64()).collect();
    assert!(to_limit.len() >= 2 && to_limit.last() < to_limit.first(), "{to_limit:?}");
    let js: Vec<&serde_json::Value> =
        report["stacks"].as_array().unwrap().iter().filter(|e| e["kind"] == "js-heap").collect();
    let total: u64 = js.iter().map(|e| e["bytes"].as_u64().unwrap()).sum();
    let kept: u64 =
        js.iter().filter(|e| has_frame(e, "JS:keepRecords ")).map(|e| e["bytes"].as_u64().unwrap()).sum();
    assert!(kept as f64 >= 0.9 * total as f64, "keepRecords holds {kept} of {total}");
    let text = std::fs::read_to_string(dir.join("report.txt")).unwrap();
    assert!(text.contains("V8 OUT OF MEMORY: pid"), "{text}");
}

/// SIGUSR1 kills a process that does not catch it: the lens refuses a
/// target that is not node before attaching anything, and it lives on.
#[test]
fn js_heap_lens_refuses_a_process_that_is_not_node() {
    let mut sleeper = Command::new("sleep").arg("30").spawn().unwrap();
    let out = Command::new(PROFILER)
        .args(["record", "--pid", &sleeper.id().to_string(), "--lens", "js-heap", "-d", "1", "-q", "-o"])
        .arg(common::fresh_dir("node-js-heap-refused"))
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && stderr.contains("runs \"sleep\""), "{stderr}");
    assert!(sleeper.try_wait().unwrap().is_none(), "the process was left alone");
    let _ = sleeper.kill();
    let _ = sleeper.wait();
}

/// The memory split under the default lens (issue 16), node launched: each
/// resident page once, by the memory it lies in (an ArrayBuffer's own
/// mapping, the break grown for a backing store, V8's heap), else by its
/// first toucher; the external figure is node's own count. Checked against
/// V8's own count of ArrayBuffer bytes, read by the js-heap lens.
#[test]
fn the_memory_split_under_the_default_lens_sees_the_retained_buffers_as_external() {
    let _one_inspector = INSPECTOR.lock().unwrap_or_else(|e| e.into_inner());
    if !node_installed() {
        return;
    }
    let dir = common::fresh_dir("node-split-resident");
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/node/responses.js");
    let mut profiler = Command::new(PROFILER)
        .args(["record", "--lens", "resident,handles,js-heap", "--interval", "1", "-q", "-o"])
        .arg(&dir)
        .args(["--", "node", "--expose-gc"])
        .arg(&script)
        .arg("300")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = BufReader::new(profiler.stdout.take().unwrap());
    let retained =
        stdout.lines().map_while(Result::ok).find_map(|l| l.strip_prefix("retained ").map(str::to_string));
    assert_eq!(retained.as_deref(), Some("19660800"));
    std::thread::sleep(std::time::Duration::from_millis(1500)); // a reading after the leak
    assert!(Command::new("kill").args(["-INT", &profiler.id().to_string()]).status().unwrap().success());
    assert!(profiler.wait().unwrap().success());
    let report = common::report_json(&dir);
    let _ = Command::new("kill").arg(report["target"]["pid"].to_string()).status();
    let split = &report["memory_split"];
    assert_eq!(split["measured_on"], "resident pages", "{split}");
    let external = split["external_bytes"].as_u64().unwrap() as f64;
    let array_buffers = report["v8_heap"]["array_buffers_bytes"].as_u64().unwrap() as f64;
    assert!(array_buffers >= 19660800.0, "{}", report["v8_heap"]);
    // Node's allocator counts the backing stores; the pages malloc keeps
    // after a free (the read chunks Buffer.concat copied from, +20% here)
    // are held unused, not external.
    assert!(split["node_counts"]["processes"] == 1, "{split}");
    assert!(
        (external - array_buffers).abs() / array_buffers <= 0.05,
        "external {external} vs V8's {array_buffers}"
    );
    assert!(split["held_unused_bytes"].as_u64().unwrap() > 0, "{split}");
    assert!(split["v8_heap_bytes"].as_u64().unwrap() > 0, "{split}");
}

/// Node started with no flag and attached after its warm-up, as in
/// production (issue 16): JS frames are named from V8's own heap (function,
/// script and line, no perf map), under the default lens and the alloc
/// lens, and the leak stays one growing stack while V8 optimizes the
/// function that keeps it. On this machine's node and on node 22.
#[test]
fn js_functions_are_named_without_perf_maps_in_a_node_started_without_flags() {
    if !node_installed() {
        return;
    }
    let _one_alloc_lens = ALLOC_LENS.lock().unwrap_or_else(|e| e.into_inner());
    let runs = node_binaries().into_iter().flat_map(|node| {
        [("resident,handles", "resident"), ("alloc", "heap")]
            .map(move |(lens, kind)| (node.clone(), lens, kind))
    });
    for (node_binary, lens, kind) in runs {
        let (mut node, lines) = start_node_binary(&node_binary, "retain.js", &[], "ready");
        let version = if node_binary == Path::new("node") { "node" } else { "node-22" };
        let dir = common::fresh_dir(&format!("node-flagless-{version}-{kind}"));
        let mut profiler = attach(node.id(), &["--lens", lens, "--interval", "0.5"], &dir);
        assert!(Command::new("kill").args(["-USR2", &node.id().to_string()]).status().unwrap().success());
        let truth: u64 =
            lines.iter().find_map(|l| l.strip_prefix("retained ").map(|n| n.parse().unwrap())).unwrap();
        assert!(Command::new("kill").args(["-INT", &profiler.id().to_string()]).status().unwrap().success());
        assert!(profiler.wait().unwrap().success());
        let _ = node.kill();
        let _ = node.wait();
        let report = common::report_json(&dir);
        assert_retained_under_retain_body(&report, kind, truth, &format!("{version} {lens}"));
        let text = std::fs::read_to_string(dir.join("report.txt")).unwrap();
        assert!(!text.contains("--perf-basic-prof"), "{version} {lens}: no hint to restart node: {text}");
    }
}

/// retain.js's leak, `truth` bytes of `kind`: at least 95% under
/// `JS:retainBody` (retain.js, line 17) in one growing stack.
fn assert_retained_under_retain_body(report: &serde_json::Value, kind: &str, truth: u64, run: &str) {
    let retaining: Vec<&serde_json::Value> = report["stacks"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["kind"] == kind && has_frame(e, "JS:retainBody "))
        .collect();
    let bytes: u64 = retaining.iter().map(|e| e["bytes"].as_u64().unwrap()).sum();
    assert!(bytes as f64 >= 0.95 * truth as f64, "{run}: {bytes} of {truth} bytes under retainBody");
    let top = retaining.iter().max_by_key(|e| e["bytes"].as_u64().unwrap()).unwrap();
    assert!(
        top["bytes"].as_u64().unwrap() as f64 >= 0.95 * truth as f64,
        "{run}: one stack whatever the tier: {retaining:#?}"
    );
    assert_eq!(top["trend"]["verdict"], "growing", "{run}: {}", top["trend"]);
    let frame = top["frames"].as_array().unwrap().iter().find(|f| has_name(f, "JS:retainBody ")).unwrap();
    assert!(frame["file"].as_str().unwrap().ends_with("/retain.js") && frame["line"] == 17, "{run}: {frame}");
}

/// `--heap-snapshot` with `--snapshot-at`: the heap snapshot is taken when
/// the size is crossed, labelled with it next to the report snapshot of
/// that moment, and compared with the one from the start; none at the end.
/// The size is node's resident memory 60 MiB above what it was before
/// attaching (opening the inspector and the start snapshot add about 20),
/// crossed when retain.js keeps 100 MiB of Buffers over 4 s, on SIGUSR2
/// sent once the inspector is open.
#[test]
fn heap_snapshots_are_taken_at_snapshot_at_sizes() {
    let _one_inspector = INSPECTOR.lock().unwrap_or_else(|e| e.into_inner());
    let Some((mut node, lines)) = start_node("retain.js", &["1024"], "ready") else { return };
    let status = std::fs::read_to_string(format!("/proc/{}/status", node.id())).unwrap();
    let rss_kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap();
    let threshold_mib = rss_kib / 1024 + 60;
    let label = format!("{threshold_mib}.0MiB");
    let dir = common::fresh_dir("node-heap-snapshot-at");
    let at = format!("{threshold_mib}M");
    let args = ["--lens", "js-heap", "--heap-snapshot", "--snapshot-at", &at, "--interval", "1", "-d", "12"];
    let mut profiler = attach(node.id(), &args, &dir);
    std::thread::sleep(std::time::Duration::from_secs(3)); // the inspector opens and the start snapshot is taken
    assert!(Command::new("kill").args(["-USR2", &node.id().to_string()]).status().unwrap().success());
    assert!(lines.iter().any(|l| l.starts_with("retained ")), "retain.js kept its Buffers");
    assert!(profiler.wait().unwrap().success());
    let _ = node.kill();
    let _ = node.wait();
    let report = common::report_json(&dir);
    let snapshots = &report["v8_heap_snapshots"];
    let taken = snapshots["taken"].as_array().unwrap();
    let labels: Vec<&str> = taken.iter().map(|t| t["label"].as_str().unwrap()).collect();
    assert_eq!(labels, ["start", label.as_str()], "{snapshots} {}", report["hints"]);
    for t in taken {
        assert!(dir.join(t["file"].as_str().unwrap()).is_file(), "{t}");
    }
    assert!(taken[1]["at_s"].as_f64().unwrap() > 3.0, "taken after the leak began: {}", taken[1]);
    let report_snapshot = std::fs::read_dir(&dir).unwrap().flatten().any(|e| {
        let name = e.file_name().to_string_lossy().into_owned();
        name.starts_with("snapshot-") && name.ends_with(&format!("-{label}"))
    });
    assert!(report_snapshot, "the report's own snapshot of that moment");
    let comparison = &snapshots["comparisons"][0];
    assert_eq!(
        (comparison["base"].as_str(), comparison["to"].as_str()),
        (Some("start"), Some(label.as_str()))
    );
}

/// JS names from V8's heap in the other target modes (node started with
/// no flag): a container's node found running (`--cgroup`, default lens),
/// one started in the container after recording began (alloc lens: held
/// at exec, probed before its first allocation), and one a shell starts
/// (`--follow`, launched).
#[test]
fn js_functions_are_named_in_cgroup_and_follow_modes() {
    if !node_installed() {
        return;
    }
    let _one_alloc_lens = ALLOC_LENS.lock().unwrap_or_else(|e| e.into_inner());
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/node/retain.js");
    for mode in ["cgroup, running", "cgroup, started later", "follow"] {
        let dir = common::fresh_dir(&format!("node-modes-{}", mode.replace([',', ' '], "")));
        let cgroup = common::TestCgroup::new("node-modes");
        let in_cgroup = format!("echo $$ > {}/cgroup.procs && exec node \"$0\"", cgroup.0.display());
        let start_in_cgroup = || {
            let mut node = Command::new("sh")
                .args(["-c", &in_cgroup])
                .arg(&script)
                .stdout(Stdio::piped())
                .spawn()
                .unwrap();
            let out = BufReader::new(node.stdout.take().unwrap());
            (node, out)
        };
        let record_cgroup = |lens: &str| {
            let args =
                ["--cgroup", &cgroup.0.to_string_lossy(), "--lens", lens, "--interval", "0.5", "-q", "-o"];
            let mut args: Vec<std::ffi::OsString> = args.iter().map(Into::into).collect();
            args.push(dir.clone().into());
            common::start_profiler(&args).0
        };
        let (kind, mut profiler, output, ready, node) = match mode {
            "cgroup, running" => {
                let (node, mut out) = start_in_cgroup();
                let mut ready = String::new();
                out.read_line(&mut ready).unwrap();
                (
                    "resident",
                    record_cgroup("resident,handles"),
                    out,
                    Some(ready.trim().to_string()),
                    Some(node),
                )
            }
            "cgroup, started later" => {
                let profiler = record_cgroup("alloc");
                let (node, out) = start_in_cgroup();
                ("heap", profiler, out, None, Some(node))
            }
            _ => {
                let mut profiler = Command::new(PROFILER)
                    .args(["record", "--follow", "--interval", "0.5", "-q", "-o"])
                    .arg(&dir)
                    .args(["--", "sh", "-c", "node \"$0\"; echo node ended"])
                    .arg(&script)
                    .stdout(Stdio::piped())
                    .stderr(Stdio::null())
                    .spawn()
                    .unwrap();
                let out = BufReader::new(profiler.stdout.take().unwrap());
                ("resident", profiler, out, None, None)
            }
        };
        let mut lines = output.lines().map_while(Result::ok);
        let pid = ready
            .into_iter()
            .chain(&mut lines)
            .find_map(|l| l.strip_prefix("ready ").map(|p| p.to_string()))
            .unwrap_or_else(|| panic!("{mode}: retain.js never became ready"));
        // A process found after recording began is held at exec until its tables
        // (V8's layout with them) are in place, so "ready" follows them: this is margin.
        std::thread::sleep(std::time::Duration::from_secs(1));
        assert!(Command::new("kill").args(["-USR2", &pid]).status().unwrap().success());
        let truth: u64 = lines
            .find_map(|l| l.strip_prefix("retained ").map(|n| n.parse().unwrap()))
            .unwrap_or_else(|| panic!("{mode}: retain.js never said what it retained"));
        assert!(Command::new("kill").args(["-INT", &profiler.id().to_string()]).status().unwrap().success());
        assert!(profiler.wait().unwrap().success(), "{mode}");
        let _ = Command::new("kill").arg(&pid).status();
        if let Some(mut node) = node {
            let _ = node.wait();
        }
        drop(cgroup);
        assert_retained_under_retain_body(&common::report_json(&dir), kind, truth, mode);
    }
}

/// `--heap-snapshot` (issue 17) on the seeds' unbounded Set: a snapshot at
/// the start and one at the end, written for DevTools, and their comparison
/// names what grew with the path that retains it, as DevTools' comparison
/// view does. Without `--lens js-heap` the switch is a usage error.
#[test]
fn heap_snapshots_name_the_path_that_retains_what_grew() {
    let refused = Command::new(PROFILER).args(["record", "--heap-snapshot", "--", "true"]).output().unwrap();
    assert_eq!(refused.status.code(), Some(2), "{}", String::from_utf8_lossy(&refused.stderr));
    assert!(String::from_utf8_lossy(&refused.stderr).contains("add --lens js-heap"));
    let _one_inspector = INSPECTOR.lock().unwrap_or_else(|e| e.into_inner());
    let Some((report, dir, _)) =
        record_processed_js("node-heap-snapshot", &["--lens", "js-heap", "--heap-snapshot", "-d", "5"])
    else {
        return;
    };
    let snapshots = &report["v8_heap_snapshots"];
    let taken = snapshots["taken"].as_array().unwrap();
    let labels: Vec<&str> = taken.iter().map(|t| t["label"].as_str().unwrap()).collect();
    assert_eq!(labels, ["start", "end"], "{snapshots}");
    for t in taken {
        // The file is V8's own JSON, as DevTools' Memory tab loads it.
        let file = std::fs::read(dir.join(t["file"].as_str().unwrap())).unwrap();
        assert_eq!(file.len() as u64, t["file_bytes"].as_u64().unwrap());
        let json: serde_json::Value = serde_json::from_slice(&file).unwrap();
        assert!(json["snapshot"]["meta"]["node_fields"].is_array() && json["nodes"].is_array());
        assert!(t["pause_ms"].as_f64().unwrap() > 0.0 && t["objects"].as_u64().unwrap() > 1000, "{t}");
    }
    let comparison = &snapshots["comparisons"][0];
    assert_eq!((comparison["base"].as_str(), comparison["to"].as_str()), (Some("start"), Some("end")));
    let top = &comparison["grew"][0];
    assert_eq!(top["class"], "(string)", "{comparison:#}");
    assert!(top["delta_bytes"].as_i64().unwrap() > 4 << 20, "{top}");
    let path: Vec<&str> =
        top["retained_by"].as_array().unwrap().iter().map(|s| s.as_str().unwrap()).collect();
    let at =
        path.iter().position(|s| *s == "SyncService.processedRecords").unwrap_or_else(|| panic!("{path:?}"));
    assert_eq!(path.get(at + 1), Some(&"Set.table"), "{path:?}");
    let text = std::fs::read_to_string(dir.join("report.txt")).unwrap();
    assert!(text.contains("SyncService.processedRecords -> Set.table"), "{text}");
}

/// The memory split under the default lens, attached by `--pid` to a node
/// started with no flag (issue 16), on node 20 and node 22: the V8 heap and
/// external figures are node's own counts' growth, read from its memory
/// (V8's page headers, node's ArrayBuffer allocator), within 5% of
/// `process.memoryUsage()`'s `heapUsed` and `external` deltas; what the
/// resident pages hold beyond them is held unused, not external.
#[test]
fn the_memory_split_under_the_default_lens_matches_node_memory_usage() {
    if !node_installed() {
        return;
    }
    for node in node_binaries() {
        let (mut target, lines) = start_node_binary(&node, "split.js", &[], "ready");
        let dir = common::fresh_dir("node-split-counts");
        let mut profiler = attach(target.id(), &["--interval", "1"], &dir);
        assert!(Command::new("kill").args(["-USR2", &target.id().to_string()]).status().unwrap().success());
        let usage = lines.recv_timeout(std::time::Duration::from_secs(30)).unwrap();
        let usage: Vec<f64> =
            usage.strip_prefix("usage ").unwrap().split(' ').map(|n| n.parse().unwrap()).collect();
        let (heap_used, external, array_buffers) =
            (usage[3] - usage[0], usage[4] - usage[1], usage[5] - usage[2]);
        assert!(Command::new("kill").args(["-INT", &profiler.id().to_string()]).status().unwrap().success());
        assert!(profiler.wait().unwrap().success());
        let _ = target.kill();
        let _ = target.wait();
        let report = common::report_json(&dir);
        let split = &report["memory_split"];
        let name = node.display();
        assert_eq!(split["measured_on"], "resident pages", "{split}");
        assert_eq!(split["node_counts"]["processes"], 1, "{name}: {split}");
        let close = |ours: &serde_json::Value, truth: f64| {
            (ours.as_u64().unwrap() as f64 - truth).abs() <= 0.05 * truth
        };
        eprintln!("{name}: split {split}; memoryUsage deltas heapUsed {heap_used} external {external} arrayBuffers {array_buffers}");
        assert!(
            heap_used > 10e6 && close(&split["v8_heap_bytes"], heap_used),
            "{name}: {split} vs heapUsed +{heap_used}"
        );
        assert!(
            array_buffers > 20e6 && close(&split["external_bytes"], external),
            "{name}: {split} vs external +{external}"
        );
        // Node's own ArrayBuffer count, read when both ends were quiet: to the byte.
        assert_eq!(split["external_bytes"].as_f64().unwrap(), array_buffers, "{name}: {split}");
        assert!(close(&split["node_counts"]["at_start"]["array_buffers_bytes"], usage[2]), "{name}: {split}");
        let text = std::fs::read_to_string(dir.join("report.txt")).unwrap();
        assert!(text.contains("V8 heap and external by node's own count"), "{text}");
    }
}

/// A file stream's fd under the JS that created the stream (issue 16):
/// node opens the file a tick after `fs.createReadStream` returned, from
/// its own JS. With `--lens js-heap` (node started with no flag, attached
/// by `--pid`, node 20 and 22), the inspector keeps the creating stack: each fd's stack
/// continues, after a stream marker, with `openReport` and the line of its
/// call, and the fd's path. `process.nextTick` is node's own again after.
#[test]
fn file_streams_fds_are_attributed_to_the_js_that_created_them() {
    let _one_inspector = INSPECTOR.lock().unwrap_or_else(|e| e.into_inner());
    if !node_installed() {
        return;
    }
    for node in node_binaries() {
        file_streams_fds_are_attributed_with(&node);
    }
}

fn file_streams_fds_are_attributed_with(node_binary: &Path) {
    let (mut node, lines) = start_node_binary(node_binary, "streams.js", &["10"], "streams ");
    let name = node_binary.display();
    let version = if node_binary == Path::new("node") { "node" } else { "node-22" };
    let dir = common::fresh_dir(&format!("node-stream-creators-{version}"));
    let mut profiler = attach(node.id(), &["--lens", "resident,handles,js-heap", "--interval", "1"], &dir);
    assert!(Command::new("kill").args(["-USR2", &node.id().to_string()]).status().unwrap().success());
    let opened = lines.recv_timeout(std::time::Duration::from_secs(30)).unwrap();
    assert_eq!(opened, "streams 20");
    assert!(Command::new("kill").args(["-INT", &profiler.id().to_string()]).status().unwrap().success());
    assert!(profiler.wait().unwrap().success());
    assert!(Command::new("kill").args(["-WINCH", &node.id().to_string()]).status().unwrap().success());
    let wrapped = lines.recv_timeout(std::time::Duration::from_secs(30));
    let _ = node.kill();
    let _ = node.wait();
    assert_eq!(wrapped.as_deref(), Ok("wrapped false"), "{name}: process.nextTick is node's own again");
    let report = common::report_json(&dir);
    let marker = "[fs stream: opened a tick after it was created at]";
    assert_eq!(handles_where(&report, "files", marker), 10, "{name}: {:#?}", report["stacks"]);
    let creators: Vec<&serde_json::Value> = report["stacks"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["kind"] == "files" && has_frame(e, marker))
        .collect();
    for stack in creators {
        let names: Vec<&str> =
            stack["frames"].as_array().unwrap().iter().map(|f| f["function"].as_str().unwrap()).collect();
        let after = &names[names.iter().position(|n| *n == marker).unwrap() + 1..];
        assert!(
            after.iter().any(|n| n.starts_with("JS:createReadStream node:fs"))
                && after.iter().any(|n| n.starts_with("JS:openReport ") && n.contains("/streams.js:13:")),
            "{names:#?}"
        );
        for fd in stack["fds"].as_array().unwrap() {
            assert!(fd.as_str().unwrap().ends_with("/streams.js"), "{}", stack["fds"]);
        }
    }
}

/// Attached while a worker thread is busy (it churns JS objects without a
/// pause), node started with no flag: the leaks the worker and the main
/// thread make afterwards are each under their own JS function, named
/// from their own isolate's heap. Default lens on node 20 and node 22, the
/// alloc lens on node 20.
#[test]
fn a_worker_busy_at_attach_and_the_main_thread_leak_under_their_own_js() {
    if !node_installed() {
        return;
    }
    let _one_alloc_lens = ALLOC_LENS.lock().unwrap_or_else(|e| e.into_inner());
    let runs = node_binaries().into_iter().map(|node| (node, "resident,handles", "resident"));
    for (node_binary, lens, kind) in runs.chain([(std::path::PathBuf::from("node"), "alloc", "heap")]) {
        let (mut node, lines) = start_node_binary(&node_binary, "worker.js", &[], "ready");
        let run = format!("{} {lens}", node_binary.display());
        let dir = common::fresh_dir("node-busy-worker");
        let mut profiler = attach(node.id(), &["--lens", lens, "--interval", "0.5"], &dir);
        assert!(Command::new("kill").args(["-USR2", &node.id().to_string()]).status().unwrap().success());
        let retained = lines.recv_timeout(std::time::Duration::from_secs(30)).unwrap();
        let truth: Vec<u64> =
            retained.strip_prefix("retained ").unwrap().split(' ').map(|n| n.parse().unwrap()).collect();
        assert!(Command::new("kill").args(["-INT", &profiler.id().to_string()]).status().unwrap().success());
        assert!(profiler.wait().unwrap().success());
        let _ = node.kill();
        let _ = node.wait();
        let report = common::report_json(&dir);
        for (function, truth) in [("JS:workerKeeps ", truth[0]), ("JS:mainKeeps ", truth[1])] {
            let bytes = bytes_where(&report, |e| e["kind"] == kind && has_frame(e, function));
            assert!(
                bytes as f64 >= 0.95 * truth as f64 && bytes as f64 <= 1.05 * truth as f64,
                "{run}: {bytes} of {truth} bytes under {function}"
            );
        }
        // Page after page of fresh V8 pages: most first touches continue a
        // run, recorded without a stack; this (debug) build may still fall
        // behind, and says so (the release build lost none here).
        let accuracy = &report["accuracy"];
        let (drops, received) =
            (accuracy["ringbuf_drops"].as_u64().unwrap(), accuracy["events_received"].as_u64().unwrap());
        assert!(drops * 20 <= received, "{run}: {drops} events lost of {received}");
        let faults = accuracy["page_faults"].as_u64().unwrap();
        let in_runs = accuracy["fault_run_pages"].as_u64().unwrap();
        assert!(kind != "resident" || in_runs * 2 > faults, "{run}: {accuracy}");
        let text = std::fs::read_to_string(dir.join("report.txt")).unwrap();
        assert_eq!(drops > 0, text.contains("events lost to a full ring buffer"), "{run}");
    }
}

/// First touches recorded as runs (no stack) never carry one call's pages
/// into another's stack: two interpreted functions, called alternately by
/// the same caller, fill Buffers that malloc lays next to each other; each
/// holds its own bytes under the default lens.
#[test]
fn adjacent_buffers_filled_by_two_functions_stay_under_their_own() {
    let Some((mut node, lines)) = start_node("adjacent.js", &[], "ready") else { return };
    let dir = common::fresh_dir("node-adjacent");
    let mut profiler = attach(node.id(), &["--interval", "1"], &dir);
    assert!(Command::new("kill").args(["-USR2", &node.id().to_string()]).status().unwrap().success());
    let kept = lines.recv_timeout(std::time::Duration::from_secs(30)).unwrap();
    let each: u64 = kept.strip_prefix("kept ").unwrap().parse().unwrap();
    assert!(Command::new("kill").args(["-INT", &profiler.id().to_string()]).status().unwrap().success());
    assert!(profiler.wait().unwrap().success());
    let _ = node.kill();
    let _ = node.wait();
    let report = common::report_json(&dir);
    assert!(report["accuracy"]["fault_run_pages"].as_u64().unwrap() > 0, "{}", report["accuracy"]);
    for function in ["JS:fillFirst ", "JS:fillSecond "] {
        let bytes = bytes_where(&report, |e| e["kind"] == "resident" && has_frame(e, function));
        assert!(
            (bytes as f64 - each as f64).abs() <= 0.05 * each as f64,
            "{bytes} bytes under {function}, {each} kept by each"
        );
    }
}
