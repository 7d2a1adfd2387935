//! `cargo xtask cluster-test`: nginx in front of three `embed-server` replicas on loopback, with
//! 16 clients sending a mix of requests (`/embed`, `/v1/embeddings`, `/tokenize`) through it
//! while (a) each replica in turn gets SIGTERM and is restarted (a rolling update), then (b) one
//! replica is killed with SIGKILL and restarted. A short steady phase before gives the baseline.
//!
//! Per phase it prints requests sent, ok and failed (as the clients saw them), requests nginx
//! retried on another replica (from its access log's `$upstream_status`), why upstream attempts
//! failed (its error log) and p50/p99 latency; writes `bench-results/cluster-test.json`; and exits
//! non-zero on any failed client request. An operator's setup (passive health checks, retries on
//! connection errors, 502 and 503, also for POST) must give zero. `--negative-control` (which
//! `cargo xtask test` runs too) is the proof that this can fail: a short run with nginx not
//! retrying, which passes only when the restarts cost the clients requests.
//!
//! The server binary is built first (`cargo build`; a no-op when it is up to date), so a run on
//! its own never tests a stale `target/debug/embed-server`.
//!
//! Everything listens on 127.0.0.1 on free ports and lives in a temp dir (nginx's prefix, the
//! logs), printed on failure (`--keep-logs` keeps it always). nginx and every replica run in a
//! process group of their own; guards kill them on error, panic, Ctrl-C or SIGTERM, and the kernel
//! signals them should this process die (PR_SET_PDEATHSIG). nginx comes from the system (`PATH`,
//! /usr/sbin); when missing, as root with apt, this task installs the Debian package `nginx-light`
//! (or `nginx`).
//!
//! This file holds the options, the phase driver and `run`; the pieces it drives are in
//! `process` (process groups, signals, the `Replica`), `nginx` (its binary, config, process and
//! logs), `traffic` (the clients and their checks) and `report` (the per-phase table and JSON).

mod nginx;
mod process;
mod report;
mod traffic;

use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context, Result};

use crate::setup;
use nginx::{nginx_binary, nginx_conf, parse_error_line, parse_nginx_build, phase_at, tally_access_log, Nginx, NginxBuild, NginxConfig};
use process::{free_port, pause, shutdown_facts, since_offset, tail, CatchInterrupts, Replica};
use report::{json_report, print_table, report_phases, PhaseReport};
use traffic::{client, StopOnDrop, Traffic};

const USAGE: &str = "cargo xtask cluster-test [--phase-secs S] [--steady-secs S] [--settle-secs S] [--clients N] [--replicas N] [--keep-logs] [--negative-control]";

/// Seconds in-flight requests get after SIGTERM (`--shutdown-deadline`); the fixture model
/// answers in milliseconds, so a replica that needs this long is itself a finding.
const SHUTDOWN_DEADLINE_S: u64 = 10;
/// How long a replica may take to exit after SIGTERM: the deadline plus the server's 5 s for
/// releasing models, plus slack for a loaded 2-core machine.
const EXIT_TIMEOUT: Duration = Duration::from_secs(SHUTDOWN_DEADLINE_S + 5 + 5);
/// How long a (re)started replica may take to answer `/ready` 200.
const READY_TIMEOUT: Duration = Duration::from_secs(60);
/// nginx's passive health check: one failed attempt (a refused connection on loopback is a
/// definite signal) takes a replica out of rotation for this long. Restarts are spaced further
/// apart (`--settle-secs`), so nginx never holds two replicas out at once.
const FAIL_TIMEOUT_S: u64 = 2;
/// Request ids (`X-Request-Id`) start with the phase's index: nginx's log lines map back to it.
const PHASES: [&str; 3] = ["steady", "rolling", "kill"];

struct Options {
    steady_secs: f64,
    phase_secs: f64,
    settle_secs: f64,
    clients: usize,
    replicas: usize,
    keep_logs: bool,
    /// Hidden: nginx without `proxy_next_upstream` (no retries), to show that the check fails.
    no_retry: bool,
    /// The negative control ([`negative_control`]): `--no-retry` on a short run that passes
    /// only if the restarts made client requests fail.
    negative_control: bool,
}

impl Options {
    fn parse(args: &[String]) -> Result<Self> {
        let mut o = Options {
            steady_secs: 5.0,
            phase_secs: 30.0,
            settle_secs: 3.0,
            clients: 16,
            replicas: 3,
            keep_logs: false,
            no_retry: false,
            negative_control: false,
        };
        if args.iter().any(|a| a == "--negative-control") {
            // Short: two replicas, a few clients, seconds per phase (options below still apply).
            o = Options { steady_secs: 1.0, phase_secs: 3.0, settle_secs: 1.0, clients: 4, replicas: 2, no_retry: true, negative_control: true, ..o };
        }
        let mut it = args.iter();
        while let Some(a) = it.next() {
            let mut value = |name: &str| it.next().with_context(|| format!("{name} needs a value\n{USAGE}")).cloned();
            match a.as_str() {
                "--steady-secs" => o.steady_secs = value(a)?.parse().context("--steady-secs")?,
                "--phase-secs" => o.phase_secs = value(a)?.parse().context("--phase-secs")?,
                "--settle-secs" => o.settle_secs = value(a)?.parse().context("--settle-secs")?,
                "--clients" => o.clients = value(a)?.parse().context("--clients")?,
                "--replicas" => o.replicas = value(a)?.parse().context("--replicas")?,
                "--keep-logs" => o.keep_logs = true,
                "--no-retry" => o.no_retry = true,
                "--negative-control" => {}
                other => bail!("cluster-test: unknown option {other:?}\n{USAGE}"),
            }
        }
        for (name, s) in [("--steady-secs", o.steady_secs), ("--phase-secs", o.phase_secs), ("--settle-secs", o.settle_secs)] {
            if !(s.is_finite() && s > 0.0 && s <= 3600.0) {
                bail!("{name} must be a number of seconds in (0, 3600], not {s}");
            }
        }
        if o.clients == 0 || o.clients > 256 {
            bail!("--clients must be 1 to 256");
        }
        // With one replica a restart leaves nginx nowhere to send requests.
        if !(2..=16).contains(&o.replicas) {
            bail!("--replicas must be 2 to 16");
        }
        if o.negative_control && !o.no_retry {
            bail!("--negative-control runs nginx without retries");
        }
        Ok(o)
    }
}

// ---------------------------------------------------------------------------------------------
// The run

struct Event {
    at: f64,
    what: String,
}

struct Timeline {
    started: Instant,
    events: Vec<Event>,
}

impl Timeline {
    fn note(&mut self, what: impl Into<String>) {
        let at = self.started.elapsed().as_secs_f64();
        let what = what.into();
        println!("cluster-test: {at:6.1}s  {what}");
        self.events.push(Event { at, what });
    }
}

fn unix_now() -> f64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs_f64()).unwrap_or(0.0)
}

/// Stops replica `i` with `sig`, restarts it on its port and waits until it is ready.
fn bounce(replicas: &mut [Replica], i: usize, sig: libc::c_int, probe: &ureq::Agent, tl: &mut Timeline) -> Result<()> {
    let r = &mut replicas[i];
    let name = if sig == libc::SIGKILL { "SIGKILL" } else { "SIGTERM" };
    tl.note(format!("{name} replica {i} ({})", r.addr()));
    let t = Instant::now();
    let signalled_at = unix_now();
    let status = r.stop(sig, EXIT_TIMEOUT)?;
    let exited = t.elapsed().as_millis();
    let facts = shutdown_facts(&since_offset(&r.log, r.log_offset), signalled_at);
    tl.note(format!("replica {i} exited ({status}) after {exited} ms{}", if facts.is_empty() { String::new() } else { format!(" ({facts})") }));
    if sig == libc::SIGTERM && !status.success() {
        bail!("replica {i} exited with {status} after SIGTERM; a drained server exits 0:\n{}", tail(&r.log, 30));
    }
    let t = Instant::now();
    r.start()?;
    r.wait_ready(probe)?;
    tl.note(format!("replica {i} restarted, ready after {} ms", t.elapsed().as_millis()));
    Ok(())
}

/// Sleeps out the rest of a phase of `secs` (none when its actions took longer).
fn phase_until(phase_started: Instant, secs: f64) -> Result<()> {
    match Duration::from_secs_f64(secs).checked_sub(phase_started.elapsed()) {
        Some(left) => pause(left),
        None => Ok(()),
    }
}

/// The phases, driven from the main thread while the clients run.
fn drive(opts: &Options, traffic: &Traffic, replicas: &mut [Replica], probe: &ureq::Agent, tl: &mut Timeline, bounds: &mut Vec<(f64, f64)>) -> Result<()> {
    let begin = |p: usize, tl: &mut Timeline, bounds: &mut Vec<(f64, f64)>| {
        if let Some(last) = bounds.last_mut() {
            last.1 = unix_now();
        }
        traffic.phase.store(p, Ordering::SeqCst);
        bounds.push((unix_now(), f64::INFINITY));
        tl.note(format!("phase {}", PHASES[p]));
        Instant::now()
    };
    let lead = Duration::from_secs_f64((opts.phase_secs / 6.0).min(2.0));
    let settle = Duration::from_secs_f64(opts.settle_secs);

    let t = begin(0, tl, bounds);
    phase_until(t, opts.steady_secs)?;

    let t = begin(1, tl, bounds);
    pause(lead)?;
    for i in 0..replicas.len() {
        bounce(replicas, i, libc::SIGTERM, probe, tl)?;
        // Past nginx's fail_timeout: the restarted replica is back in rotation before the next goes.
        pause(settle)?;
    }
    phase_until(t, opts.phase_secs)?;

    let t = begin(2, tl, bounds);
    pause(lead)?;
    bounce(replicas, replicas.len() / 2, libc::SIGKILL, probe, tl)?;
    pause(settle)?;
    phase_until(t, opts.phase_secs)?;
    if let Some(last) = bounds.last_mut() {
        last.1 = unix_now();
    }
    Ok(())
}

pub(crate) fn run(args: &[String]) -> Result<()> {
    let opts = Options::parse(args)?;
    if opts.negative_control {
        return check_negative_control(&opts);
    }
    let Ran { reports, dir } = cluster(&opts)?;
    let failed: usize = reports.iter().map(|r| r.failed).sum();
    let empty: Vec<&str> = reports.iter().filter(|r| r.sent == 0).map(|r| r.name).collect();
    if !empty.is_empty() {
        bail!("cluster-test: no requests were sent in phase(s) {empty:?}; logs in {}", dir.display());
    }
    if failed > 0 {
        bail!(
            "cluster-test: {failed} client request(s) failed; logs (nginx access/error logs, one per replica) in {}\n\
             rerun with `cargo xtask cluster-test --keep-logs`",
            dir.display()
        );
    }
    if opts.keep_logs {
        println!("cluster-test: logs kept in {}", dir.display());
    } else {
        let _ = std::fs::remove_dir_all(&dir);
    }
    println!("cluster-test: zero failed requests through the rolling update and the kill");
    Ok(())
}

/// The negative control `cargo xtask test` runs after the cluster test: the same cluster for a
/// few seconds per phase (two replicas, four clients, about 20 s in all), with nginx configured
/// not to retry. The restarts must then reach the clients as failed requests, and only the
/// restarts: the steady phase before them must have none. If the control passes with zero
/// failures, the cluster test's "zero failed requests" cannot fail either, and proves nothing.
pub(crate) fn negative_control() -> Result<()> {
    check_negative_control(&Options::parse(&["--negative-control".to_string()])?)
}

fn check_negative_control(opts: &Options) -> Result<()> {
    let Ran { reports, dir } = cluster(opts)?;
    let verdict = negative_control_verdict(&reports);
    if verdict.is_ok() && !opts.keep_logs {
        let _ = std::fs::remove_dir_all(&dir);
    }
    let lost = verdict.with_context(|| format!("cluster-test --negative-control: logs in {}", dir.display()))?;
    println!("cluster-test: negative control: without retries the restarts lost {lost} client request(s), as they must");
    Ok(())
}

/// The control's verdict on its phases: the number of requests the restarts lost.
fn negative_control_verdict(reports: &[PhaseReport]) -> Result<usize> {
    if let Some(r) = reports.iter().find(|r| r.sent == 0) {
        bail!("no requests were sent in phase {}", r.name);
    }
    let steady = reports.iter().find(|r| r.name == PHASES[0]).context("no steady phase")?;
    if steady.failed > 0 {
        bail!("{} request(s) failed in the steady phase, before any restart: the cluster itself is broken", steady.failed);
    }
    let lost: usize = reports.iter().filter(|r| r.name != PHASES[0]).map(|r| r.failed).sum();
    if lost == 0 {
        bail!("nginx without retries lost no request through the restarts and the kill: the cluster test's zero-failures check could not fail");
    }
    Ok(lost)
}

/// What a run left: its phases and its temp dir (logs).
struct Ran {
    reports: Vec<PhaseReport>,
    dir: std::path::PathBuf,
}

/// Builds the server, runs the cluster through the phases, prints the table and (for the real
/// test, not the negative control) writes `bench-results/cluster-test.json`. Judging is the
/// caller's.
fn cluster(opts: &Options) -> Result<Ran> {
    let run_started = Instant::now();
    let env = setup::run(&setup::Options { bench: false, models: Vec::new() })?;
    let root = &env.root;
    let bin = build_server(root)?;
    let fixture = root.join("testdata/fixtures/bert");
    if !fixture.join("config.json").exists() {
        bail!("the fixture model {} is missing", fixture.display());
    }
    let nginx_bin = nginx_binary()?;
    let v = Command::new(&nginx_bin).arg("-V").output().with_context(|| format!("running {} -V", nginx_bin.display()))?;
    let v_text = String::from_utf8_lossy(&v.stderr).into_owned() + &String::from_utf8_lossy(&v.stdout);
    let build = parse_nginx_build(&v_text).with_context(|| format!("{} -V printed no version:\n{v_text}", nginx_bin.display()))?;
    if !build.proxy {
        bail!("{} was built without the proxy module", nginx_bin.display());
    }

    let dir = std::env::temp_dir().join(format!("embed-cluster-test-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(dir.join("tmp")).with_context(|| format!("creating {}", dir.display()))?;
    let started = Instant::now();
    let result = {
        let _interrupts = CatchInterrupts::install();
        run_in(opts, &bin, &fixture, &nginx_bin, &build, &dir, started)
    };
    let wall_s = run_started.elapsed().as_secs_f64();
    match result {
        Ok((reports, tl)) => {
            let failed: usize = reports.iter().map(|r| r.failed).sum();
            let passed = failed == 0 && reports.iter().all(|r| r.sent > 0);
            print_table(&reports, opts);
            if !opts.negative_control {
                let out = root.join("bench-results");
                std::fs::create_dir_all(&out)?;
                let path = out.join("cluster-test.json");
                std::fs::write(&path, format!("{:#}\n", json_report(opts, &reports, &tl, passed, wall_s, &dir)))?;
                println!("\ncluster-test: wrote {} ({wall_s:.1} s in all)", path.display());
            } else {
                println!("\ncluster-test: negative control ran in {wall_s:.1} s");
            }
            Ok(Ran { reports, dir })
        }
        Err(e) => Err(e.context(format!("cluster-test failed; logs in {} (rerun with `cargo xtask cluster-test`)", dir.display()))),
    }
}

/// Builds the `embed-server` binary the replicas run, so that a run on its own never tests a
/// stale one (cargo does nothing when it is up to date). It is built together with the
/// leak-check child (`--example leak_check`), which turns on the dev-dependencies' features for
/// the whole build: the binary then shares its dependencies with that child, which `cargo xtask
/// test` has just built, and only the binary itself is compiled here rather than every crate
/// again with another feature set.
fn build_server(root: &Path) -> Result<std::path::PathBuf> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let args = ["build", "-q", "-p", "embed-server", "--bin", "embed-server", "--example", "leak_check"];
    println!("cluster-test: building the server (cargo {})", args.join(" "));
    if !Command::new(&cargo).current_dir(root).args(args).status()?.success() {
        bail!("building embed-server failed (cargo {})", args.join(" "));
    }
    let bin = root.join("target/debug/embed-server");
    if !bin.exists() {
        bail!("cargo built embed-server, but {} is missing", bin.display());
    }
    Ok(bin)
}

/// Starts the cluster, drives the phases under load, stops everything and reads nginx's logs.
fn run_in(opts: &Options, bin: &Path, fixture: &Path, nginx_bin: &Path, build: &NginxBuild, dir: &Path, started: Instant) -> Result<(Vec<PhaseReport>, Timeline)> {
    let mut tl = Timeline { started, events: Vec::new() };
    let probe = ureq::AgentBuilder::new().timeout(Duration::from_secs(1)).build();
    let model = format!("bert={}", fixture.canonicalize()?.display());
    let mut replicas: Vec<Replica> = (0..opts.replicas).map(|i| Replica::new(i, bin, &model, dir.join(format!("replica-{i}.log")))).collect();
    for r in &mut replicas {
        r.start()?;
    }
    for r in &mut replicas {
        r.wait_ready(&probe)?;
    }
    tl.note(format!("{} replicas ready on {}", replicas.len(), replicas.iter().map(Replica::addr).collect::<Vec<_>>().join(", ")));

    let listen = free_port()?;
    let ports: Vec<u16> = replicas.iter().map(|r| r.port).collect();
    // SAFETY: geteuid has no preconditions.
    let as_root = unsafe { libc::geteuid() } == 0;
    let conf = NginxConfig { prefix: dir, listen, upstreams: &ports, retry: !opts.no_retry, as_root, temp_modules: &build.temp_modules };
    std::fs::write(dir.join("nginx.conf"), nginx_conf(&conf))?;
    let nginx = Nginx::start(nginx_bin, dir, build, listen)?;
    tl.note(format!("nginx {}.{}.{} listening on 127.0.0.1:{listen}", build.version.0, build.version.1, build.version.2));

    let traffic = Traffic { phase: AtomicUsize::new(0), stop: AtomicBool::new(false), started };
    let base = format!("http://127.0.0.1:{listen}");
    let mut bounds = Vec::new();
    let (driven, samples, panicked) = std::thread::scope(|s| {
        let handles: Vec<_> = (0..opts.clients).map(|c| {
            let (traffic, base) = (&traffic, &base);
            s.spawn(move || client(c, base, traffic))
        }).collect();
        let driven = {
            let _stop = StopOnDrop(&traffic.stop);
            drive(opts, &traffic, &mut replicas, &probe, &mut tl, &mut bounds)
        };
        let mut samples = Vec::new();
        let mut panicked = 0;
        for h in handles {
            match h.join() {
                Ok(s) => samples.extend(s),
                Err(_) => panicked += 1,
            }
        }
        (driven, samples, panicked)
    });
    tl.note(format!("clients stopped after {} requests", samples.len()));
    nginx.stop();
    let stopped = replicas.iter_mut().filter(|r| r.is_running()).try_for_each(|r| r.stop(libc::SIGTERM, EXIT_TIMEOUT).map(drop));
    driven?;
    stopped?;
    if panicked > 0 {
        bail!("{panicked} client thread(s) panicked (see above)");
    }

    let access = std::fs::read_to_string(dir.join("access.log")).unwrap_or_default();
    let mut nginx_phases = tally_access_log(&access);
    let errors = std::fs::read_to_string(dir.join("error.log")).unwrap_or_default();
    for (t, reason) in errors.lines().filter_map(parse_error_line) {
        if let Some(p) = phase_at(&bounds, t) {
            *nginx_phases[p].reasons.entry(reason.to_string()).or_default() += 1;
        }
    }
    Ok((report_phases(&samples, nginx_phases, &bounds), tl))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(a: &[&str]) -> Vec<String> {
        a.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn options_have_ci_defaults_and_refuse_nonsense() {
        let o = Options::parse(&[]).unwrap();
        assert_eq!((o.clients, o.replicas, o.phase_secs, o.no_retry), (16, 3, 30.0, false));
        let o = Options::parse(&args(&["--phase-secs", "10", "--no-retry", "--clients", "4"])).unwrap();
        assert_eq!((o.phase_secs, o.no_retry, o.clients), (10.0, true, 4));
        for bad in [&["--replicas", "1"][..], &["--phase-secs", "0"], &["--phase-secs", "NaN"], &["--clients"], &["--bogus"]] {
            assert!(Options::parse(&args(bad)).is_err(), "{bad:?} accepted");
        }
        // The negative control is short and never retries; explicit options still apply.
        let o = Options::parse(&args(&["--negative-control"])).unwrap();
        assert_eq!((o.no_retry, o.replicas, o.clients, o.phase_secs + o.steady_secs + o.settle_secs), (true, 2, 4, 5.0));
        assert_eq!(Options::parse(&args(&["--negative-control", "--clients", "6"])).unwrap().clients, 6);
    }

    /// The control passes only on failures the restarts caused.
    #[test]
    fn the_negative_control_wants_failures_from_the_restarts_only() {
        let verdict = |phases: [(usize, usize); 3]| {
            let reports: Vec<PhaseReport> = PHASES.iter().zip(phases).map(|(n, (sent, failed))| PhaseReport::fake(n, sent, failed)).collect();
            negative_control_verdict(&reports)
        };
        assert_eq!(verdict([(100, 0), (300, 4), (300, 9)]).unwrap(), 13);
        assert_eq!(verdict([(100, 0), (300, 0), (300, 2)]).unwrap(), 2);
        let err = verdict([(100, 0), (300, 0), (300, 0)]).unwrap_err().to_string();
        assert!(err.contains("could not fail"), "{err}");
        assert!(verdict([(100, 3), (300, 4), (300, 9)]).unwrap_err().to_string().contains("steady"));
        assert!(verdict([(100, 0), (0, 0), (300, 9)]).is_err(), "a phase without requests");
    }
}
