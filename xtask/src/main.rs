//! Developer tasks: `cargo xtask <task>`.
//!
//! - `setup`: make sure a toolchain that can build the eBPF programs exists,
//!   installing it when missing (Debian's Rust with library sources and
//!   bpf-linker built against LLVM 22; or rustup nightly + rust-src when present).
//! - `build`: eBPF programs, then the profiler with them embedded.
//! - `run [ARGS]`: build, then `profiler record ARGS` as root (through sudo if
//!   needed). Without ARGS it profiles the bundled demo (the leaky fixture).
//! - `gate ARGS`: build, then `profiler gate ARGS` as root; exits with its code.
//! - `test`: set up, build and run the whole test suite as root.
//! - `bench`: measure what profiling costs (see [`bench`]).
//! - `fuzz`: run every cargo-fuzz target of `profiler/fuzz` for a bounded time.

mod bench;

use std::{
    env,
    ffi::OsString,
    path::{Path, PathBuf},
    process::{Command, ExitCode},
};

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "xtask", about = "Build, run and test the leak profiler")]
struct Cli {
    #[command(subcommand)]
    task: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Install what building the eBPF programs needs, if missing.
    Setup,
    /// Build the eBPF programs and the profiler.
    Build {
        /// Build the userspace profiler in debug mode.
        #[arg(long)]
        debug: bool,
    },
    /// Build, then run `profiler record ARGS` as root (the bundled demo without ARGS).
    Run {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<OsString>,
    },
    /// Build, then run `profiler gate ARGS` as root (the CI leak gate).
    Gate {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<OsString>,
    },
    /// Measure the profiler's overhead against unprobed runs (as root); writes target/bench/bench.md and bench.json.
    Bench {
        /// Length of each soak run (launch, then attach), seconds; 0 skips the soak.
        #[arg(long, default_value_t = 600)]
        soak_secs: u64,
        /// Length of the agent run (--serve on the Node HTTP server), seconds; 0 skips it.
        #[arg(long, default_value_t = 1800)]
        serve_secs: u64,
        /// Run only these sections (default: all).
        #[arg(long, value_enum, value_delimiter = ',')]
        only: Vec<bench::Section>,
    },
    /// Run each fuzz target (profiler/fuzz) for a bounded time, from its committed corpus.
    Fuzz {
        /// Seconds per target.
        #[arg(long, default_value_t = 15)]
        seconds: u64,
        /// Targets to run (default: all).
        targets: Vec<String>,
    },
    /// Build and run the full test suite (as root).
    Test {
        /// Extra arguments for `cargo test` (e.g. a test name filter).
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<OsString>,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.task {
        Task::Setup => ebpf_toolchain().map(|t| eprintln!("eBPF toolchain: {}", t.describe())),
        Task::Build { debug } => build(!debug).map(|_| ()),
        Task::Run { args } => run(args),
        Task::Gate { args } => gate(args),
        Task::Test { args } => test(args),
        Task::Fuzz { seconds, targets } => fuzz(seconds, targets),
        Task::Bench { soak_secs, serve_secs, only } => build(true).and_then(|profiler| {
            if !is_root() {
                bail!("the benchmark loads eBPF programs: run it as root");
            }
            bench::bench(profiler, &workspace_root(), &only, soak_secs, serve_secs)
        }),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xtask: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_path_buf()
}

fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines().find(|l| l.starts_with("Uid:")).map(|l| l.split_whitespace().nth(2) == Some("0"))
        })
        .unwrap_or(false)
}

fn status(cmd: &mut Command) -> Result<()> {
    let st = cmd.status().with_context(|| format!("running {cmd:?}"))?;
    if !st.success() {
        bail!("{cmd:?} failed ({st})");
    }
    Ok(())
}

fn find_in_path(name: &str) -> Option<PathBuf> {
    env::split_paths(&env::var_os("PATH")?).map(|d| d.join(name)).find(|p| p.is_file())
}

/// Where we install tools of our own (bpf-linker).
fn tools_dir() -> PathBuf {
    let cache = env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
        .unwrap_or_else(|| workspace_root().join("target"));
    cache.join("profiler-tools")
}

/// A Rust toolchain able to build `core` for bpfel-unknown-none, plus bpf-linker.
enum EbpfToolchain {
    /// rustup's nightly with rust-src.
    Nightly { linker_dir: PathBuf },
    /// Debian's rustc-web/cargo-web with rust-web-src, via RUSTC_BOOTSTRAP.
    Debian { linker_dir: PathBuf },
}

impl EbpfToolchain {
    fn describe(&self) -> String {
        match self {
            Self::Nightly { linker_dir } => {
                format!("rustup nightly + rust-src, bpf-linker in {}", linker_dir.display())
            }
            Self::Debian { linker_dir } => {
                format!("Debian rustc + rust-web-src, bpf-linker in {}", linker_dir.display())
            }
        }
    }
}

fn bpf_linker_dir() -> Option<PathBuf> {
    let ours = tools_dir().join("bin");
    if ours.join("bpf-linker").is_file() {
        return Some(ours);
    }
    find_in_path("bpf-linker").and_then(|p| p.parent().map(Path::to_path_buf))
}

fn nightly_has_rust_src() -> bool {
    let Ok(out) = Command::new("rustup").args(["run", "nightly", "rustc", "--print", "sysroot"]).output()
    else {
        return false;
    };
    out.status.success()
        && Path::new(String::from_utf8_lossy(&out.stdout).trim())
            .join("lib/rustlib/src/rust/library/core")
            .is_dir()
}

fn debian_rust_ready() -> bool {
    Path::new("/usr/bin/rustc").is_file()
        && Path::new("/usr/bin/cargo").is_file()
        && Path::new("/usr/lib/rustlib/src/rust/library/core").exists()
}

fn ebpf_toolchain() -> Result<EbpfToolchain> {
    if nightly_has_rust_src() {
        if let Some(linker_dir) = bpf_linker_dir() {
            return Ok(EbpfToolchain::Nightly { linker_dir });
        }
    }
    if !debian_rust_ready() {
        if !(is_root() && Path::new("/usr/bin/apt-get").exists()) {
            bail!(
                "no toolchain can build the eBPF programs. Either install rustup nightly with rust-src and \
                 `cargo install bpf-linker`, or (Debian/Ubuntu, as root) run `cargo xtask setup`"
            );
        }
        eprintln!("xtask: installing Debian's Rust with library sources and LLVM 22 (apt-get)");
        status(Command::new("apt-get").arg("update").arg("-q"))?;
        status(Command::new("apt-get").env("DEBIAN_FRONTEND", "noninteractive").args([
            "install",
            "-y",
            "-q",
            "rustc-web",
            "cargo-web",
            "rust-web-src",
            "llvm-22-dev",
        ]))?;
    }
    let linker_dir = match bpf_linker_dir() {
        Some(d) => d,
        None => {
            eprintln!("xtask: building bpf-linker 0.13.0 against LLVM 22 into {}", tools_dir().display());
            status(
                Command::new("cargo")
                    .env("LLVM_PREFIX", "/usr/lib/llvm-22")
                    .args([
                        "install",
                        "bpf-linker",
                        "--version",
                        "0.13.0",
                        "--locked",
                        "--no-default-features",
                    ])
                    .args(["--features", "llvm-22", "--root"])
                    .arg(tools_dir()),
            )?;
            tools_dir().join("bin")
        }
    };
    Ok(EbpfToolchain::Debian { linker_dir })
}

fn ebpf_object() -> PathBuf {
    workspace_root().join("target/ebpf/bpfel-unknown-none/release/profiler")
}

fn build_ebpf() -> Result<PathBuf> {
    let toolchain = ebpf_toolchain()?;
    let root = workspace_root();
    let (mut cmd, linker_dir) = match &toolchain {
        EbpfToolchain::Nightly { linker_dir } => {
            let mut c = Command::new("rustup");
            c.args(["run", "nightly", "cargo"]);
            (c, linker_dir)
        }
        EbpfToolchain::Debian { linker_dir } => {
            let mut c = Command::new("/usr/bin/cargo");
            c.env("RUSTC", "/usr/bin/rustc").env("RUSTC_BOOTSTRAP", "1");
            (c, linker_dir)
        }
    };
    let path = env::join_paths(
        std::iter::once(linker_dir.clone()).chain(env::split_paths(&env::var_os("PATH").unwrap_or_default())),
    )?;
    for var in [
        "RUSTUP_TOOLCHAIN",
        "RUSTC_WRAPPER",
        "RUSTC_WORKSPACE_WRAPPER",
        "RUSTFLAGS",
        "CARGO_BUILD_TARGET",
        "CARGO_TARGET_DIR",
    ] {
        cmd.env_remove(var);
    }
    cmd.current_dir(root.join("profiler-ebpf"))
        .env("PATH", path)
        .env(
            "CARGO_ENCODED_RUSTFLAGS",
            ["--cfg=bpf_target_arch=\"x86_64\"", "-Cdebuginfo=2", "-Clink-arg=--btf", "-Ctarget-cpu=v3"]
                .join("\x1f"),
        )
        .args([
            "build",
            "--release",
            "--target",
            "bpfel-unknown-none",
            "-Z",
            "build-std=core",
            "--target-dir",
        ])
        .arg(root.join("target/ebpf"));
    status(&mut cmd).context("building the eBPF programs")?;
    Ok(ebpf_object())
}

/// Builds everything; returns the profiler binary.
fn build(release: bool) -> Result<PathBuf> {
    let object = build_ebpf()?;
    let mut cmd = Command::new(env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
    cmd.current_dir(workspace_root()).env("PROFILER_EBPF_OBJECT", &object).args(["build", "-p", "profiler"]);
    if release {
        cmd.arg("--release");
    }
    status(&mut cmd)?;
    Ok(workspace_root().join(if release { "target/release/profiler" } else { "target/debug/profiler" }))
}

/// Compiles the bundled demo (the leaky fixture) with frame pointers.
fn build_demo() -> Result<PathBuf> {
    let out = workspace_root().join("target/demo/leaky");
    std::fs::create_dir_all(out.parent().unwrap())?;
    status(
        Command::new("cc")
            .args(["-O1", "-g", "-fno-omit-frame-pointer", "-fno-inline", "-pthread", "-o"])
            .arg(&out)
            .arg(workspace_root().join("tests/fixtures/leaky.c")),
    )
    .context("compiling the demo target (needs a C compiler)")?;
    Ok(out)
}

/// Runs `program args` as root: directly when root, through sudo otherwise.
fn as_root(program: &Path, args: &[OsString]) -> Command {
    if is_root() {
        let mut c = Command::new(program);
        c.args(args);
        c
    } else {
        eprintln!("xtask: not root; running through sudo");
        let mut c = Command::new("sudo");
        c.arg("--preserve-env=PATH,CARGO_HOME,RUSTUP_HOME,PROFILER_EBPF_OBJECT").arg(program).args(args);
        c
    }
}

fn run(args: Vec<OsString>) -> Result<()> {
    let profiler = build(true)?;
    let mut full: Vec<OsString> = vec!["record".into()];
    if args.is_empty() {
        // The demo leaks known heap blocks: show them next to the production lenses.
        full.extend(["--lens".into(), "alloc,resident,handles".into()]);
        full.push("--".into());
        full.push(build_demo()?.into_os_string());
    } else {
        full.extend(args);
    }
    let st = as_root(&profiler, &full).status()?;
    if !st.success() {
        bail!("profiler exited with {st}");
    }
    Ok(())
}

/// Exits with the gate's own code (0 pass, 1 leak regression, 2 gate failure).
fn gate(args: Vec<OsString>) -> Result<()> {
    let profiler = build(true)?;
    let full: Vec<OsString> = std::iter::once("gate".into()).chain(args).collect();
    let st = as_root(&profiler, &full).status()?;
    std::process::exit(st.code().unwrap_or(2));
}

/// Tools some tests use, installed when we can (those tests report a
/// visible skip otherwise): musl-gcc for the musl fixture, go for `go tool pprof`,
/// prometheus and curl for the fleet endpoints, chromium for index.html,
/// tmux for the live view.
fn install_test_tools() {
    install_missing(
        &[
            ("musl-gcc", "musl-tools"),
            ("go", "golang-go"),
            ("/usr/lib/x86_64-linux-gnu/libjemalloc_pic.a", "libjemalloc-dev"),
            ("/usr/lib/x86_64-linux-gnu/libtcmalloc.so.4", "libgoogle-perftools-dev"),
            ("/usr/lib/x86_64-linux-gnu/libmimalloc.so.2", "libmimalloc-dev"),
            ("sqlite3", "sqlite3"),
            ("g++", "g++"),
            ("podman", "podman"),
            ("runc", "runc"),
            ("prometheus", "prometheus"),
            ("curl", "curl"),
            ("chromium", "chromium"),
            ("tmux", "tmux"),
        ],
        "the tests",
    );
    install_other_node();
}

/// The second node major the tests name JS frames in (besides the
/// machine's), from the npm registry's `node` package, which carries the
/// official binary.
const OTHER_NODE: &str = "node@22.23.3";

/// Installs [`OTHER_NODE`] into `target/node-22` (the tests look for
/// `target/node-22/node_modules/node/bin/node`); warns when it cannot.
fn install_other_node() {
    let prefix = workspace_root().join("target/node-22");
    if prefix.join("node_modules/node/bin/node").exists() || find_in_path("npm").is_none() {
        return;
    }
    eprintln!("xtask: installing {OTHER_NODE} from the npm registry into {}", prefix.display());
    let installed = Command::new("npm")
        .args(["install", "--no-audit", "--no-fund", "--prefix"])
        .arg(&prefix)
        .arg(OTHER_NODE)
        .status();
    if !installed.is_ok_and(|s| s.success()) {
        eprintln!("xtask: warning: could not install {OTHER_NODE}: its tests are skipped");
    }
}

/// Installs, as root with apt-get, the Debian package of each `(binary,
/// package)` whose binary is not on PATH (or, given as an absolute path,
/// does not exist); warns (and carries on) when it cannot.
fn install_missing(tools: &[(&str, &str)], purpose: &str) {
    let present =
        |bin: &str| if bin.starts_with('/') { Path::new(bin).exists() } else { find_in_path(bin).is_some() };
    let missing: Vec<&str> =
        tools.iter().filter(|(bin, _)| !present(bin)).map(|(_, package)| *package).collect();
    if missing.is_empty() || !(is_root() && Path::new("/usr/bin/apt-get").exists()) {
        return;
    }
    eprintln!("xtask: installing {} for {purpose}", missing.join(", "));
    let install = || {
        Command::new("apt-get")
            .env("DEBIAN_FRONTEND", "noninteractive")
            .args(["install", "-y", "-q"])
            .args(&missing)
            .status()
            .is_ok_and(|s| s.success())
    };
    // The package lists may be missing or stale on a fresh machine.
    let installed =
        install() || (Command::new("apt-get").args(["update", "-q"]).status().is_ok() && install());
    if !installed {
        eprintln!(
            "xtask: warning: could not install {}; {purpose} needing them will be skipped",
            missing.join(", ")
        );
    }
}

fn test(args: Vec<OsString>) -> Result<()> {
    let object = build_ebpf()?;
    install_test_tools();
    let cargo = env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    // The end-to-end tests are behind the `e2e` feature: plain `cargo test`
    // (any user) runs only the unit and golden-file tests.
    let mut full: Vec<OsString> =
        vec!["test".into(), "--workspace".into(), "--features".into(), "profiler/e2e".into()];
    full.extend(args);
    let mut cmd = as_root(Path::new(&cargo), &full);
    cmd.current_dir(workspace_root()).env("PROFILER_EBPF_OBJECT", &object);
    status(&mut cmd)
}

/// The cargo-fuzz release this project's fuzz targets are run with.
const CARGO_FUZZ_VERSION: &str = "0.13.2";

/// Runs the fuzz targets for `seconds` each. Findings are kept in
/// `target/fuzz-corpus/<target>` (the committed corpus is only read);
/// a crash leaves its input in `profiler/fuzz/artifacts/<target>` and fails.
fn fuzz(seconds: u64, targets: Vec<String>) -> Result<()> {
    let cargo = env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let has_cargo_fuzz =
        || Command::new(&cargo).args(["fuzz", "--version"]).output().is_ok_and(|o| o.status.success());
    if !has_cargo_fuzz() {
        eprintln!("xtask: installing cargo-fuzz {CARGO_FUZZ_VERSION}");
        status(Command::new(&cargo).args([
            "install",
            "--locked",
            "cargo-fuzz",
            "--version",
            CARGO_FUZZ_VERSION,
        ]))?;
    }
    let root = workspace_root();
    let fuzz_dir = root.join("profiler/fuzz");
    // cargo-fuzz needs unstable compiler flags (coverage instrumentation);
    // RUSTC_BOOTSTRAP lets the one stable toolchain accept them.
    let cargo_fuzz = |args: &[&str]| {
        let mut cmd = Command::new(&cargo);
        cmd.arg("fuzz").args(args).current_dir(&fuzz_dir).env("RUSTC_BOOTSTRAP", "1");
        cmd
    };
    let targets = if targets.is_empty() {
        let out = cargo_fuzz(&["list"]).output().context("cargo fuzz list")?;
        String::from_utf8(out.stdout)?.lines().map(str::to_string).collect()
    } else {
        targets
    };
    status(&mut cargo_fuzz(&["build", "-s", "none", "-O"]))?;
    for target in &targets {
        let findings = root.join("target/fuzz-corpus").join(target);
        std::fs::create_dir_all(&findings)?;
        let committed = fuzz_dir.join("corpus").join(target);
        eprintln!("xtask: fuzzing {target} for {seconds} s");
        status(cargo_fuzz(&["run", "-s", "none", "-O", target]).arg(&findings).arg(&committed).args([
            "--".into(),
            format!("-max_total_time={seconds}"),
            "-rss_limit_mb=2048".into(),
            "-print_final_stats=1".into(),
        ]))
        .with_context(|| {
            format!("fuzz target {target} failed; its input is in profiler/fuzz/artifacts/{target}")
        })?;
    }
    Ok(())
}
