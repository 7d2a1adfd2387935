//! `cargo xtask cluster-test`: nginx in front of three `embed-server` replicas on loopback, with
//! 16 clients sending a mix of requests (`/embed`, `/v1/embeddings`, `/tokenize`) through it
//! while (a) each replica in turn gets SIGTERM and is restarted (a rolling update), then (b) one
//! replica is killed with SIGKILL and restarted. A short steady phase before gives the baseline.
//!
//! Per phase it prints requests sent, ok and failed (as the clients saw them), requests nginx
//! retried on another replica (from its access log's `$upstream_status`), why upstream attempts
//! failed (its error log) and p50/p99 latency; writes `bench-results/cluster-test.json`; and exits
//! non-zero on any failed client request. An operator's setup (passive health checks, retries on
//! connection errors, 502 and 503, also for POST) must give zero.
//!
//! Everything listens on 127.0.0.1 on free ports and lives in a temp dir (nginx's prefix, the
//! logs), printed on failure (`--keep-logs` keeps it always). nginx and every replica run in a
//! process group of their own; guards kill them on error, panic, Ctrl-C or SIGTERM, and the kernel
//! signals them should this process die (PR_SET_PDEATHSIG). nginx comes from the system (`PATH`,
//! /usr/sbin); when missing, as root with apt, this task installs the Debian package `nginx-light`
//! (or `nginx`).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::fs::OpenOptions;
use std::io::Write as _;
use std::net::{TcpListener, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context, Result};

use crate::setup;

const USAGE: &str = "cargo xtask cluster-test [--phase-secs S] [--steady-secs S] [--settle-secs S] [--clients N] [--replicas N] [--keep-logs]";

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

pub(crate) struct Options {
    steady_secs: f64,
    phase_secs: f64,
    settle_secs: f64,
    clients: usize,
    replicas: usize,
    keep_logs: bool,
    /// Hidden: nginx without `proxy_next_upstream` (no retries), to show that the check fails.
    no_retry: bool,
}

impl Options {
    pub(crate) fn parse(args: &[String]) -> Result<Self> {
        let mut o = Options { steady_secs: 5.0, phase_secs: 30.0, settle_secs: 3.0, clients: 16, replicas: 3, keep_logs: false, no_retry: false };
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
        Ok(o)
    }
}

// ---------------------------------------------------------------------------------------------
// Signals and child processes

static INTERRUPTED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    // A second Ctrl-C means "now": the children still get their PR_SET_PDEATHSIG.
    if INTERRUPTED.swap(true, Ordering::SeqCst) {
        // SAFETY: _exit is async-signal-safe.
        unsafe { libc::_exit(130) }
    }
}

/// While it lives, Ctrl-C or SIGTERM turn into an error at the next check, so every guard's
/// `Drop` runs; dropping it puts the previous handlers back (`cargo xtask test` goes on after).
#[must_use = "the handlers are restored when this guard is dropped"]
struct CatchInterrupts {
    previous: [(libc::c_int, libc::sighandler_t); 2],
}

impl CatchInterrupts {
    fn install() -> Self {
        INTERRUPTED.store(false, Ordering::SeqCst);
        let handler = on_signal as extern "C" fn(libc::c_int) as libc::sighandler_t;
        // SAFETY: the handler only touches an atomic and calls _exit, both async-signal-safe.
        let previous = [libc::SIGINT, libc::SIGTERM].map(|sig| (sig, unsafe { libc::signal(sig, handler) }));
        CatchInterrupts { previous }
    }
}

impl Drop for CatchInterrupts {
    fn drop(&mut self) {
        for (sig, old) in self.previous {
            // SAFETY: reinstalls the disposition signal(2) returned for this signal.
            unsafe { libc::signal(sig, old) };
        }
    }
}

fn check_interrupted() -> Result<()> {
    if INTERRUPTED.load(Ordering::SeqCst) {
        bail!("interrupted");
    }
    Ok(())
}

/// Sleeps `d`, waking every 50 ms to notice Ctrl-C.
fn pause(d: Duration) -> Result<()> {
    let until = Instant::now() + d;
    while let Some(left) = until.checked_duration_since(Instant::now()) {
        check_interrupted()?;
        std::thread::sleep(left.min(Duration::from_millis(50)));
    }
    check_interrupted()
}

/// Spawns `cmd` as the leader of a new process group (a Ctrl-C meant for us does not reach it;
/// the guard kills the whole group) that receives `death_signal` when this thread ends. Call it
/// from the main thread: PR_SET_PDEATHSIG fires when the spawning *thread* exits.
fn spawn_group(cmd: &mut Command, death_signal: libc::c_int) -> Result<Child> {
    let parent = std::process::id() as libc::pid_t;
    cmd.process_group(0);
    // SAFETY: prctl and getppid are async-signal-safe; nothing is allocated between fork and exec.
    unsafe {
        cmd.pre_exec(move || {
            if libc::prctl(libc::PR_SET_PDEATHSIG, death_signal as libc::c_ulong) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            // The parent died before prctl: nobody would ever stop this process.
            if libc::getppid() != parent {
                libc::_exit(1);
            }
            Ok(())
        });
    }
    cmd.spawn().with_context(|| format!("starting {cmd:?}"))
}

/// Sends `sig` to a child that has not been reaped (so its pid is still its own).
fn signal_child(child: &mut Child, sig: libc::c_int, group: bool) {
    if matches!(child.try_wait(), Ok(None)) {
        let pid = child.id() as libc::pid_t;
        // SAFETY: kill(2)/killpg(2) on our own, not yet reaped, child.
        unsafe {
            if group {
                libc::killpg(pid, sig);
            } else {
                libc::kill(pid, sig);
            }
        }
    }
}

/// Waits up to `timeout` for `child` to exit.
fn wait_exit(child: &mut Child, timeout: Duration) -> Result<Option<ExitStatus>> {
    let until = Instant::now() + timeout;
    loop {
        if let Some(status) = child.try_wait()? {
            return Ok(Some(status));
        }
        if Instant::now() >= until {
            return Ok(None);
        }
        check_interrupted()?;
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Kills the whole group of a child still running and reaps it.
fn kill_group(child: &mut Child) {
    signal_child(child, libc::SIGKILL, true);
    let _ = child.wait();
}

fn free_port() -> Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0").context("binding 127.0.0.1:0 to pick a free port")?.local_addr()?.port())
}

/// The last `lines` lines of a log file, for error messages.
fn tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

fn since_offset(path: &Path, offset: u64) -> String {
    let bytes = std::fs::read(path).unwrap_or_default();
    String::from_utf8_lossy(bytes.get(offset as usize..).unwrap_or_default()).into_owned()
}

// ---------------------------------------------------------------------------------------------
// Replicas

/// One `embed-server` process on a fixed loopback port, restartable; killed with its process
/// group when dropped.
#[must_use = "dropping a Replica kills its server"]
struct Replica {
    index: usize,
    /// 0 until the first start, which binds :0 and reads the port the server chose.
    port: u16,
    bin: PathBuf,
    model: String,
    log: PathBuf,
    /// Where the current process's output starts in `log`.
    log_offset: u64,
    child: Option<Child>,
}

/// The port from the server's "embed-server listening on http://127.0.0.1:PORT" line.
fn listening_port(log: &str) -> Option<u16> {
    let rest = log.split("listening on http://").nth(1)?;
    let addr = rest.split_whitespace().next()?;
    addr.rsplit(':').next()?.trim_end_matches('/').parse().ok()
}

/// A server log line's time (`2026-11-27T10:20:03.302929Z  INFO …`) in Unix seconds.
fn log_time(line: &str) -> Option<f64> {
    let ts = line.split_whitespace().next()?.strip_suffix('Z')?;
    let (date, time) = ts.split_once('T')?;
    let d: Vec<i64> = date.split('-').map(|x| x.parse().ok()).collect::<Option<_>>()?;
    let (hms, frac) = time.split_once('.').unwrap_or((time, "0"));
    let t: Vec<i64> = hms.split(':').map(|x| x.parse().ok()).collect::<Option<_>>()?;
    if d.len() != 3 || t.len() != 3 {
        return None;
    }
    let secs = days_from_civil(d[0], d[1], d[2]) * 86_400 + t[0] * 3600 + t[1] * 60 + t[2];
    Some(secs as f64 + format!("0.{frac}").parse::<f64>().ok()?)
}

/// What the server's log says of a shutdown signalled at `signalled_at` (Unix seconds): when it
/// noticed the signal, the connections and requests open then, and when it had drained and
/// released the models.
fn shutdown_facts(log: &str, signalled_at: f64) -> String {
    let field = |line: &str, key: &str| -> String {
        line.split_whitespace().find_map(|w| w.strip_prefix(&format!("{key}=")).map(String::from)).unwrap_or_else(|| "?".into())
    };
    let after = |line: &str| log_time(line).map(|t| format!("{:.0} ms", (t - signalled_at) * 1e3)).unwrap_or_else(|| "?".into());
    let mut facts = Vec::new();
    if let Some(line) = log.lines().find(|l| l.contains("signal received")) {
        facts.push(format!("signal handled after {}", after(line)));
    }
    if let Some(line) = log.lines().find(|l| l.contains("shutdown: no new connections")) {
        facts.push(format!("{} connections, {} requests open", field(line, "connections"), field(line, "requests")));
    }
    if let Some(line) = log.lines().find(|l| l.contains(" stopped ")) {
        facts.push(format!("drained={} cut_short={} after {}", field(line, "drained"), field(line, "cut_short"), after(line)));
    }
    facts.join("; ")
}

impl Replica {
    fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    fn child(&mut self) -> Result<&mut Child> {
        self.child.as_mut().with_context(|| format!("replica {} is not running", self.index))
    }

    fn start(&mut self) -> Result<()> {
        let mut log = OpenOptions::new().create(true).append(true).open(&self.log).with_context(|| format!("opening {}", self.log.display()))?;
        writeln!(log, "=== cluster-test: starting replica {} on 127.0.0.1:{} ===", self.index, self.port)?;
        self.log_offset = log.metadata()?.len();
        let mut cmd = Command::new(&self.bin);
        cmd.args(["--bind", &format!("127.0.0.1:{}", self.port), "--model", &self.model])
            .args(["--shutdown-deadline", &SHUTDOWN_DEADLINE_S.to_string()])
            // As the server's own tests run it: libtorch comes from the binary's RUNPATH.
            .env_remove("LD_LIBRARY_PATH")
            .env("EMBED_LOG", "info")
            // Three replicas share two cores; one intra-op thread each avoids oversubscription.
            .env("OMP_NUM_THREADS", "1")
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        // A stray EMBED_API_KEY or EMBED_MODELS from the caller's shell must not change the test.
        for (k, _) in std::env::vars_os() {
            if k.to_string_lossy().starts_with("EMBED_") && k != "EMBED_LOG" {
                cmd.env_remove(k);
            }
        }
        self.child = Some(spawn_group(&mut cmd, libc::SIGKILL)?);
        if self.port == 0 {
            let until = Instant::now() + READY_TIMEOUT;
            self.port = loop {
                if let Some(port) = listening_port(&since_offset(&self.log, self.log_offset)) {
                    break port;
                }
                self.check_alive()?;
                if Instant::now() > until {
                    bail!("replica {} printed no address within {READY_TIMEOUT:?}:\n{}", self.index, tail(&self.log, 20));
                }
                pause(Duration::from_millis(20))?;
            };
        }
        Ok(())
    }

    fn check_alive(&mut self) -> Result<()> {
        let index = self.index;
        if let Some(status) = self.child()?.try_wait()? {
            self.child = None;
            bail!("replica {index} exited ({status}):\n{}", tail(&self.log, 30));
        }
        Ok(())
    }

    /// Waits until `/ready` answers 200 on the replica's own port.
    fn wait_ready(&mut self, probe: &ureq::Agent) -> Result<()> {
        let until = Instant::now() + READY_TIMEOUT;
        let url = format!("http://{}/ready", self.addr());
        loop {
            self.check_alive()?;
            if matches!(probe.get(&url).call(), Ok(r) if r.status() == 200) {
                return Ok(());
            }
            if Instant::now() > until {
                bail!("replica {} not ready within {READY_TIMEOUT:?}:\n{}", self.index, tail(&self.log, 30));
            }
            pause(Duration::from_millis(25))?;
        }
    }

    /// Sends `sig` and waits for the exit; SIGKILLs and fails after `timeout`.
    fn stop(&mut self, sig: libc::c_int, timeout: Duration) -> Result<ExitStatus> {
        let index = self.index;
        let child = self.child()?;
        signal_child(child, sig, false);
        let status = wait_exit(child, timeout)?;
        let Some(status) = status else {
            kill_group(child);
            self.child = None;
            bail!("replica {index} did not exit within {timeout:?} of signal {sig}:\n{}", tail(&self.log, 30));
        };
        self.child = None;
        Ok(status)
    }
}

impl Drop for Replica {
    fn drop(&mut self) {
        if let Some(child) = &mut self.child {
            kill_group(child);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// nginx

/// What `nginx -V` says about the build.
#[derive(Debug, PartialEq)]
struct NginxBuild {
    version: (u32, u32, u32),
    /// Modules with a temp path of their own that are compiled in (each needs its path moved).
    temp_modules: Vec<&'static str>,
    proxy: bool,
}

fn parse_nginx_build(v: &str) -> Option<NginxBuild> {
    let ver = v.split("nginx/").nth(1)?.split(|c: char| !(c.is_ascii_digit() || c == '.')).next()?;
    let mut parts = ver.split('.').map(|p| p.parse::<u32>().ok());
    let version = (parts.next()??, parts.next().flatten().unwrap_or(0), parts.next().flatten().unwrap_or(0));
    let without = |m: &str| v.contains(&format!("--without-http_{m}_module"));
    Some(NginxBuild {
        version,
        temp_modules: ["fastcgi", "uwsgi", "scgi"].into_iter().filter(|m| !without(m)).collect(),
        proxy: !without("proxy"),
    })
}

/// The generated nginx configuration, as an operator would write it for this cluster.
struct NginxConfig<'a> {
    prefix: &'a Path,
    listen: u16,
    upstreams: &'a [u16],
    retry: bool,
    as_root: bool,
    temp_modules: &'a [&'a str],
}

/// The access-log format: `|`-separated, the request id first after the time.
const LOG_FORMAT: &str = "$msec|$http_x_request_id|$status|$request_time|$upstream_addr|$upstream_status|$upstream_response_time|$request_method $uri";

fn nginx_conf(c: &NginxConfig<'_>) -> String {
    let p = c.prefix.display();
    let mut s = String::new();
    let _ = writeln!(s, "# Generated by `cargo xtask cluster-test`; every path is inside this prefix.");
    if c.as_root {
        // Workers would otherwise drop to `nobody`, who cannot write the temp dirs here.
        let _ = writeln!(s, "user root;");
    }
    let _ = writeln!(s, "worker_processes auto;\npid \"{p}/nginx.pid\";\nerror_log \"{p}/error.log\" warn;\n");
    let _ = writeln!(s, "events {{\n    worker_connections 1024;\n}}\n");
    let _ = writeln!(s, "http {{");
    let _ = writeln!(s, "    client_body_temp_path \"{p}/tmp/client_body\";");
    let _ = writeln!(s, "    proxy_temp_path \"{p}/tmp/proxy\";");
    for m in c.temp_modules {
        let _ = writeln!(s, "    {m}_temp_path \"{p}/tmp/{m}\";");
    }
    let _ = writeln!(s, "    log_format cluster '{LOG_FORMAT}';");
    let _ = writeln!(s, "    access_log \"{p}/access.log\" cluster;\n");
    let _ = writeln!(s, "    upstream embed {{");
    // Shared failure counts: every worker takes a failed replica out, not just the one that saw it.
    let _ = writeln!(s, "        zone embed 64k;");
    for port in c.upstreams {
        let _ = writeln!(s, "        server 127.0.0.1:{port} max_fails=1 fail_timeout={FAIL_TIMEOUT_S}s;");
    }
    let _ = writeln!(s, "        keepalive 32;");
    // Shorter than the server's 75 s keep-alive: nginx, not the server, closes idle connections.
    let _ = writeln!(s, "        keepalive_timeout 60s;");
    let _ = writeln!(s, "    }}\n");
    let _ = writeln!(s, "    server {{");
    let _ = writeln!(s, "        listen 127.0.0.1:{};", c.listen);
    let _ = writeln!(s, "        location / {{");
    let _ = writeln!(s, "            proxy_pass http://embed;");
    let _ = writeln!(s, "            proxy_http_version 1.1;");
    let _ = writeln!(s, "            proxy_set_header Connection \"\";");
    let _ = writeln!(s, "            proxy_connect_timeout 2s;");
    let _ = writeln!(s, "            proxy_send_timeout 10s;");
    let _ = writeln!(s, "            proxy_read_timeout 15s;");
    if c.retry {
        // Refused or reset connections (`error`), and 502/503 from a replica, go to the next one;
        // embedding POSTs are idempotent, so a request already sent may be sent again.
        let _ = writeln!(s, "            proxy_next_upstream error timeout http_502 http_503 non_idempotent;");
        let _ = writeln!(s, "            proxy_next_upstream_tries 3;");
        let _ = writeln!(s, "            proxy_next_upstream_timeout 15s;");
    } else {
        let _ = writeln!(s, "            proxy_next_upstream off;");
    }
    let _ = writeln!(s, "        }}\n    }}\n}}");
    s
}

/// nginx in the foreground on a generated config; killed with its workers when dropped.
#[must_use = "dropping Nginx kills it"]
struct Nginx {
    child: Child,
}

impl Nginx {
    fn start(bin: &Path, prefix: &Path, build: &NginxBuild, listen: u16) -> Result<Nginx> {
        let conf = prefix.join("nginx.conf");
        let mut base = Command::new(bin);
        base.arg("-p").arg(prefix).arg("-c").arg(&conf);
        // `-e` (1.19.5+) keeps nginx from opening the packaged error log before reading the config.
        if build.version >= (1, 19, 5) {
            base.arg("-e").arg(prefix.join("error.log"));
        }
        // nginx's error log has second resolution in local time; UTC maps it onto our phases.
        base.env("TZ", "UTC").stdin(Stdio::null());
        let test = Command::new(bin).args(base.get_args()).arg("-t").env("TZ", "UTC").output().context("running nginx -t")?;
        if !test.status.success() {
            bail!("nginx rejected {}:\n{}", conf.display(), String::from_utf8_lossy(&test.stderr));
        }
        let out = OpenOptions::new().create(true).append(true).open(prefix.join("nginx.stderr"))?;
        base.args(["-g", "daemon off;"]).stdout(out.try_clone()?).stderr(out);
        // SIGTERM to the master on our death: it stops its workers, then itself.
        let child = spawn_group(&mut base, libc::SIGTERM)?;
        let mut nginx = Nginx { child };
        let until = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect(("127.0.0.1", listen)).is_err() {
            if let Some(status) = nginx.child.try_wait()? {
                bail!("nginx exited ({status}):\n{}\n{}", tail(&prefix.join("nginx.stderr"), 20), tail(&prefix.join("error.log"), 20));
            }
            if Instant::now() > until {
                bail!("nginx is not listening on 127.0.0.1:{listen} after 10 s:\n{}", tail(&prefix.join("error.log"), 20));
            }
            pause(Duration::from_millis(20))?;
        }
        Ok(nginx)
    }

    /// Graceful stop (SIGQUIT: finish open requests, flush logs), then the group's SIGKILL.
    fn stop(mut self) {
        signal_child(&mut self.child, libc::SIGQUIT, false);
        if !matches!(wait_exit(&mut self.child, Duration::from_secs(5)), Ok(Some(_))) {
            kill_group(&mut self.child);
        }
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        kill_group(&mut self.child);
    }
}

fn find_in_path(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path).chain([PathBuf::from("/usr/sbin"), PathBuf::from("/usr/local/sbin")]).map(|d| d.join(name)).find(|p| p.is_file())
}

/// nginx from the system, installed with apt when missing (as root).
fn nginx_binary() -> Result<PathBuf> {
    if let Some(p) = find_in_path("nginx") {
        return Ok(p);
    }
    const WHAT: &str = "nginx is needed (Debian/Ubuntu: `apt-get install nginx-light`, or `nginx`; \
                        any nginx 1.18+ with the proxy module on PATH or in /usr/sbin will do)";
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        bail!("{WHAT}; not root, so cluster-test cannot install it itself");
    }
    if find_in_path("apt-get").is_none() {
        bail!("{WHAT}; apt-get is not available to install it");
    }
    let apt = |args: &[&str]| -> Result<bool> {
        println!("cluster-test: nginx not found; running apt-get {}", args.join(" "));
        let status = Command::new("apt-get").args(args).env("DEBIAN_FRONTEND", "noninteractive").stdin(Stdio::null()).status().context("running apt-get")?;
        Ok(status.success())
    };
    let lists_present = std::fs::read_dir("/var/lib/apt/lists")
        .map(|d| d.filter_map(|e| e.ok()).any(|e| e.file_name().to_string_lossy().contains("_Packages")))
        .unwrap_or(false);
    let mut updated = false;
    if !lists_present {
        updated = apt(&["update"])?;
    }
    let install = |pkg: &str| apt(&["install", "-y", "--no-install-recommends", pkg]);
    // nginx-light is the small build on Debian 12 and Ubuntu; newer releases only have `nginx`.
    let mut ok = install("nginx-light")? || install("nginx")?;
    if !ok && !updated {
        ok = apt(&["update"])? && (install("nginx-light")? || install("nginx")?);
    }
    match find_in_path("nginx") {
        Some(p) if ok => Ok(p),
        _ => bail!("{WHAT}; installing it with apt-get failed (see above)"),
    }
}

// ---------------------------------------------------------------------------------------------
// Clients

#[derive(Debug, Clone, Copy, PartialEq)]
enum Kind {
    Embed,
    OpenAi,
    Tokenize,
}

impl Kind {
    fn path(self) -> &'static str {
        match self {
            Kind::Embed => "/embed",
            Kind::OpenAi => "/v1/embeddings",
            Kind::Tokenize => "/tokenize",
        }
    }
}

const WORDS: &[&str] = &[
    "the", "quick", "brown", "fox", "jumps", "over", "lazy", "dog", "embedding", "server", "rolling", "update", "balancer",
    "replica", "vector", "search", "hello", "world", "query", "document", "nginx", "cluster", "signal", "restart",
];

/// xorshift64*: reproducible per client, no dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// A request of the mix: half `/embed` with 1–8 texts, 30 % `/v1/embeddings` with 1–8, 20 %
/// `/tokenize` with 1–4. Returns the kind, the body and the number of inputs.
fn next_request(rng: &mut Rng) -> (Kind, String, usize) {
    let kind = match rng.below(10) {
        0..=4 => Kind::Embed,
        5..=7 => Kind::OpenAi,
        _ => Kind::Tokenize,
    };
    let n = 1 + rng.below(if kind == Kind::Tokenize { 4 } else { 8 }) as usize;
    let texts: Vec<String> = (0..n)
        .map(|_| (0..1 + rng.below(12)).map(|_| WORDS[rng.below(WORDS.len() as u64) as usize]).collect::<Vec<_>>().join(" "))
        .collect();
    let body = match kind {
        Kind::Embed | Kind::Tokenize => serde_json::json!({ "inputs": texts }),
        Kind::OpenAi => serde_json::json!({ "input": texts, "model": "bert" }),
    };
    (kind, body.to_string(), n)
}

/// `v` as a non-empty vector of finite numbers; returns its length.
fn vector_len(v: &serde_json::Value) -> Result<usize, String> {
    let a = v.as_array().ok_or("a vector is not an array")?;
    if a.is_empty() || !a.iter().all(|x| x.as_f64().is_some_and(f64::is_finite)) {
        return Err("a vector is empty or holds something other than finite numbers".into());
    }
    Ok(a.len())
}

/// Checks that `body` answers a `kind` request with `n` inputs.
fn check_body(kind: Kind, n: usize, body: &str) -> Result<(), String> {
    let v: serde_json::Value = serde_json::from_str(body).map_err(|e| format!("body is not JSON ({e})"))?;
    let same_dims = |lens: Vec<usize>| if lens.windows(2).all(|w| w[0] == w[1]) { Ok(()) } else { Err(format!("vectors of different lengths {lens:?}")) };
    match kind {
        Kind::Embed => {
            let rows = v.as_array().ok_or("not an array")?;
            if rows.len() != n {
                return Err(format!("{} vectors for {n} inputs", rows.len()));
            }
            same_dims(rows.iter().map(vector_len).collect::<Result<_, _>>()?)
        }
        Kind::OpenAi => {
            let data = v["data"].as_array().ok_or("no data array")?;
            if v["object"] != "list" || data.len() != n {
                return Err(format!("object {} with {} items for {n} inputs", v["object"], data.len()));
            }
            for (i, d) in data.iter().enumerate() {
                if d["index"].as_u64() != Some(i as u64) {
                    return Err(format!("item {i} has index {}", d["index"]));
                }
            }
            same_dims(data.iter().map(|d| vector_len(&d["embedding"])).collect::<Result<_, _>>()?)
        }
        Kind::Tokenize => {
            let rows = v.as_array().ok_or("not an array")?;
            if rows.len() != n {
                return Err(format!("{} token lists for {n} inputs", rows.len()));
            }
            for r in rows {
                let toks = r.as_array().filter(|t| !t.is_empty()).ok_or("an empty or missing token list")?;
                if !toks.iter().all(|t| t["id"].is_u64() && t["text"].is_string()) {
                    return Err("a token without id or text".into());
                }
            }
            Ok(())
        }
    }
}

/// One client request as the client saw it.
struct Sample {
    phase: usize,
    latency: Duration,
    /// Seconds since the run started, when the request was sent.
    at: f64,
    id: String,
    error: Option<String>,
}

/// What the controller and the clients share.
struct Traffic {
    phase: AtomicUsize,
    stop: AtomicBool,
    started: Instant,
}

/// Sets `stop` when dropped, so the clients end even when the controller fails or panics.
#[must_use = "the clients stop when this guard is dropped"]
struct StopOnDrop<'a>(&'a AtomicBool);

impl Drop for StopOnDrop<'_> {
    fn drop(&mut self) {
        self.0.store(true, Ordering::SeqCst);
    }
}

/// The start of a body on one line (nginx's error pages are HTML over several).
fn excerpt(s: &str) -> String {
    let s = s.split_whitespace().collect::<Vec<_>>().join(" ");
    match s.char_indices().nth(160) {
        Some((i, _)) => format!("{}…", &s[..i]),
        None => s,
    }
}

fn client(index: usize, base: &str, traffic: &Traffic) -> Vec<Sample> {
    let agent = ureq::AgentBuilder::new().timeout(Duration::from_secs(30)).max_idle_connections_per_host(1).build();
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15u64.wrapping_mul(index as u64 + 1) | 1);
    let mut samples = Vec::new();
    let mut seq = 0u64;
    while !traffic.stop.load(Ordering::SeqCst) && !INTERRUPTED.load(Ordering::SeqCst) {
        let phase = traffic.phase.load(Ordering::SeqCst);
        let (kind, body, n) = next_request(&mut rng);
        seq += 1;
        let id = format!("{phase}-{index}-{seq}");
        let sent = Instant::now();
        let result = agent.post(&format!("{base}{}", kind.path())).set("Content-Type", "application/json").set("X-Request-Id", &id).send_string(&body);
        let outcome = match result {
            Ok(resp) => match resp.into_string() {
                Ok(text) => check_body(kind, n, &text).map_err(|e| format!("{} 200 but {e}: {}", kind.path(), excerpt(&text))),
                Err(e) => Err(format!("{} 200 but reading the body failed: {e}", kind.path())),
            },
            Err(ureq::Error::Status(code, resp)) => Err(format!("{} HTTP {code}: {}", kind.path(), excerpt(&resp.into_string().unwrap_or_default()))),
            Err(ureq::Error::Transport(t)) => Err(format!("{} transport error: {t}", kind.path())),
        };
        samples.push(Sample { phase, latency: sent.elapsed(), at: (sent - traffic.started).as_secs_f64(), id, error: outcome.err() });
    }
    samples
}

// ---------------------------------------------------------------------------------------------
// nginx's logs

/// One access-log line: the request id, nginx's answer, and each upstream attempt's status.
#[derive(Debug, PartialEq)]
struct AccessLine {
    request_id: String,
    status: u16,
    /// One per attempt: the replica's status, or 502 for a refused/reset connection, `-` when
    /// nginx got no status.
    attempts: Vec<String>,
    /// The replica of each attempt.
    addrs: Vec<String>,
}

/// Splits `$upstream_*` lists: `, ` between attempts, ` : ` between internal redirects.
fn upstream_list(s: &str) -> Vec<String> {
    s.split(" : ").flat_map(|g| g.split(", ")).map(str::trim).filter(|x| !x.is_empty() && *x != "-").map(String::from).collect()
}

fn parse_access_line(line: &str) -> Option<AccessLine> {
    let f: Vec<&str> = line.splitn(8, '|').collect();
    if f.len() < 8 {
        return None;
    }
    Some(AccessLine { request_id: f[1].to_string(), status: f[2].parse().ok()?, attempts: upstream_list(f[5]), addrs: upstream_list(f[4]) })
}

/// The phase a request id (`PHASE-CLIENT-SEQ`) was sent in.
fn phase_of(request_id: &str) -> Option<usize> {
    request_id.split('-').next()?.parse().ok().filter(|p| *p < PHASES.len())
}

/// Per phase, what nginx saw.
#[derive(Debug, Default, PartialEq)]
struct NginxPhase {
    requests: usize,
    /// Requests that went to more than one replica.
    retried: usize,
    /// Upstream attempts that did not give the final answer, by status (`502`: refused or reset).
    failed_attempts: BTreeMap<String, usize>,
    /// Requests nginx answered with something other than 200.
    errors: usize,
    /// 200 answers by the replica that gave them.
    served_by: BTreeMap<String, usize>,
    /// Why upstream attempts failed, from the error log.
    reasons: BTreeMap<String, usize>,
}

fn tally_access_log(text: &str) -> Vec<NginxPhase> {
    let mut phases: Vec<NginxPhase> = PHASES.iter().map(|_| NginxPhase::default()).collect();
    for l in text.lines().filter_map(parse_access_line) {
        let Some(p) = phase_of(&l.request_id) else { continue };
        let ph = &mut phases[p];
        ph.requests += 1;
        if l.attempts.len() > 1 {
            ph.retried += 1;
        }
        for a in l.attempts.iter().take(l.attempts.len().saturating_sub(1)) {
            *ph.failed_attempts.entry(a.clone()).or_default() += 1;
        }
        if l.status != 200 {
            ph.errors += 1;
            // The last attempt failed too (or none was made).
            if let Some(a) = l.attempts.last() {
                *ph.failed_attempts.entry(a.clone()).or_default() += 1;
            }
        } else if let Some(addr) = l.addrs.last() {
            *ph.served_by.entry(addr.clone()).or_default() += 1;
        }
    }
    phases
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's `days_from_civil`).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * (m + if m > 2 { -3 } else { 9 }) + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// An error-log line's time (`2024/05/01 12:00:00`, nginx started with TZ=UTC) in Unix seconds,
/// and why an upstream attempt failed, if the line is about one.
fn parse_error_line(line: &str) -> Option<(i64, &'static str)> {
    let (date, rest) = line.split_once(' ')?;
    let time = rest.get(..8)?;
    let d: Vec<i64> = date.split('/').map(|x| x.parse().ok()).collect::<Option<_>>()?;
    let t: Vec<i64> = time.split(':').map(|x| x.parse().ok()).collect::<Option<_>>()?;
    if d.len() != 3 || t.len() != 3 {
        return None;
    }
    let secs = days_from_civil(d[0], d[1], d[2]) * 86_400 + t[0] * 3600 + t[1] * 60 + t[2];
    let reason = if line.contains("Connection refused") {
        "connection refused"
    } else if line.contains("prematurely closed") {
        "closed before answering (keep-alive race or kill)"
    } else if line.contains("reset by peer") {
        "connection reset"
    } else if line.contains("timed out") {
        "timed out"
    } else if line.contains("no live upstreams") {
        "no live upstreams"
    } else if line.contains("temporarily disabled") {
        "replica marked down (max_fails)"
    } else if line.contains("upstream") {
        "other upstream error"
    } else {
        return None;
    };
    Some((secs, reason))
}

/// The phase whose `[start, end)` (Unix seconds) holds `t`; the error log has whole seconds, so
/// a phase starts at the second it began in.
fn phase_at(bounds: &[(f64, f64)], t: i64) -> Option<usize> {
    bounds.iter().position(|(s, e)| (t as f64) >= s.floor() && (t as f64) < *e)
}

// ---------------------------------------------------------------------------------------------
// The run

/// Nearest-rank percentile of sorted values; `None` when there are none.
fn percentile(sorted: &[f64], p: f64) -> Option<f64> {
    if sorted.is_empty() {
        return None;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    Some(sorted[rank.clamp(1, sorted.len()) - 1])
}

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

/// One phase's figures, clients' and nginx's.
struct PhaseReport {
    name: &'static str,
    secs: f64,
    sent: usize,
    failed: usize,
    p50_ms: Option<f64>,
    p99_ms: Option<f64>,
    max_ms: Option<f64>,
    nginx: NginxPhase,
    first_failures: Vec<String>,
}

fn report_phases(samples: &[Sample], nginx: Vec<NginxPhase>, bounds: &[(f64, f64)]) -> Vec<PhaseReport> {
    nginx
        .into_iter()
        .enumerate()
        .map(|(p, nginx)| {
            let mine: Vec<&Sample> = samples.iter().filter(|s| s.phase == p).collect();
            let mut ok_ms: Vec<f64> = mine.iter().filter(|s| s.error.is_none()).map(|s| s.latency.as_secs_f64() * 1e3).collect();
            ok_ms.sort_by(f64::total_cmp);
            let mut failures: Vec<&&Sample> = mine.iter().filter(|s| s.error.is_some()).collect();
            failures.sort_by(|a, b| a.at.total_cmp(&b.at));
            PhaseReport {
                name: PHASES[p],
                secs: bounds.get(p).map(|(s, e)| e - s).filter(|d| d.is_finite()).unwrap_or(0.0),
                sent: mine.len(),
                failed: failures.len(),
                p50_ms: percentile(&ok_ms, 50.0),
                p99_ms: percentile(&ok_ms, 99.0),
                max_ms: ok_ms.last().copied(),
                nginx,
                first_failures: failures.iter().take(10).map(|s| format!("{:.2}s {} {}", s.at, s.id, s.error.as_deref().unwrap_or_default())).collect(),
            }
        })
        .collect()
}

fn ms(v: Option<f64>) -> String {
    v.map(|v| format!("{v:.1}")).unwrap_or_else(|| "-".into())
}

fn counts(m: &BTreeMap<String, usize>) -> String {
    if m.is_empty() {
        return "none".into();
    }
    m.iter().map(|(k, v)| format!("{k} ×{v}")).collect::<Vec<_>>().join(", ")
}

fn print_table(reports: &[PhaseReport], opts: &Options) {
    println!(
        "\ncluster-test: {} clients, nginx ({}) in front of {} replicas; latency of the successful requests",
        opts.clients,
        if opts.no_retry { "NO RETRIES: --no-retry" } else { "retries on error/timeout/502/503" },
        opts.replicas
    );
    println!("{:<8} {:>6} {:>7} {:>7} {:>7} {:>8} {:>8} {:>8} {:>8}", "phase", "secs", "sent", "ok", "failed", "retried", "p50 ms", "p99 ms", "max ms");
    for r in reports {
        println!(
            "{:<8} {:>6.1} {:>7} {:>7} {:>7} {:>8} {:>8} {:>8} {:>8}",
            r.name,
            r.secs,
            r.sent,
            r.sent - r.failed,
            r.failed,
            r.nginx.retried,
            ms(r.p50_ms),
            ms(r.p99_ms),
            ms(r.max_ms)
        );
    }
    for r in reports {
        println!("  {}: nginx saw {} requests ({} answered non-200); failed upstream attempts: {}", r.name, r.nginx.requests, r.nginx.errors, counts(&r.nginx.failed_attempts));
        println!("  {}: why (error log): {}", r.name, counts(&r.nginx.reasons));
        println!("  {}: 200s by replica: {}", r.name, counts(&r.nginx.served_by));
        for f in &r.first_failures {
            println!("  {}: FAILED {f}", r.name);
        }
    }
}

fn json_report(opts: &Options, reports: &[PhaseReport], tl: &Timeline, passed: bool, wall_s: f64, logs: &Path) -> serde_json::Value {
    serde_json::json!({
        "passed": passed,
        "wall_s": wall_s,
        "clients": opts.clients,
        "replicas": opts.replicas,
        "phase_secs": opts.phase_secs,
        "steady_secs": opts.steady_secs,
        "settle_secs": opts.settle_secs,
        "nginx_retries": !opts.no_retry,
        "logs": logs.display().to_string(),
        "phases": reports.iter().map(|r| serde_json::json!({
            "phase": r.name, "secs": r.secs, "sent": r.sent, "ok": r.sent - r.failed, "failed": r.failed,
            "p50_ms": r.p50_ms, "p99_ms": r.p99_ms, "max_ms": r.max_ms,
            "nginx": {
                "requests": r.nginx.requests, "retried": r.nginx.retried, "non_200": r.nginx.errors,
                "failed_attempts": r.nginx.failed_attempts, "reasons": r.nginx.reasons, "served_by": r.nginx.served_by,
            },
            "first_failures": r.first_failures,
        })).collect::<Vec<_>>(),
        "events": tl.events.iter().map(|e| serde_json::json!({"at_s": e.at, "what": e.what})).collect::<Vec<_>>(),
    })
}

pub(crate) fn run(args: &[String]) -> Result<()> {
    let opts = Options::parse(args)?;
    let run_started = Instant::now();
    let env = setup::run(&setup::Options { bench: false, models: Vec::new() })?;
    let root = &env.root;
    let bin = root.join("target/debug/embed-server");
    if !bin.exists() {
        println!("cluster-test: {} is missing; building it (cargo build -p embed-server)", bin.display());
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        if !Command::new(&cargo).current_dir(root).args(["build", "-p", "embed-server"]).status()?.success() {
            bail!("building embed-server failed");
        }
    }
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
        run_in(&opts, &bin, &fixture, &nginx_bin, &build, &dir, started)
    };
    let wall_s = run_started.elapsed().as_secs_f64();
    match result {
        Ok((reports, tl)) => {
            let failed: usize = reports.iter().map(|r| r.failed).sum();
            let empty: Vec<&str> = reports.iter().filter(|r| r.sent == 0).map(|r| r.name).collect();
            let passed = failed == 0 && empty.is_empty();
            print_table(&reports, &opts);
            let out = root.join("bench-results");
            std::fs::create_dir_all(&out)?;
            let path = out.join("cluster-test.json");
            std::fs::write(&path, format!("{:#}\n", json_report(&opts, &reports, &tl, passed, wall_s, &dir)))?;
            println!("\ncluster-test: wrote {} ({wall_s:.1} s in all)", path.display());
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
        Err(e) => Err(e.context(format!("cluster-test failed; logs in {} (rerun with `cargo xtask cluster-test`)", dir.display()))),
    }
}

/// Starts the cluster, drives the phases under load, stops everything and reads nginx's logs.
fn run_in(opts: &Options, bin: &Path, fixture: &Path, nginx_bin: &Path, build: &NginxBuild, dir: &Path, started: Instant) -> Result<(Vec<PhaseReport>, Timeline)> {
    let mut tl = Timeline { started, events: Vec::new() };
    let probe = ureq::AgentBuilder::new().timeout(Duration::from_secs(1)).build();
    let model = format!("bert={}", fixture.canonicalize()?.display());
    let mut replicas: Vec<Replica> = (0..opts.replicas)
        .map(|i| Replica { index: i, port: 0, bin: bin.to_path_buf(), model: model.clone(), log: dir.join(format!("replica-{i}.log")), log_offset: 0, child: None })
        .collect();
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
    let stopped = replicas.iter_mut().filter(|r| r.child.is_some()).try_for_each(|r| r.stop(libc::SIGTERM, EXIT_TIMEOUT).map(drop));
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
    }

    #[test]
    fn percentiles_are_nearest_rank() {
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentile(&v, 50.0), Some(50.0));
        assert_eq!(percentile(&v, 99.0), Some(99.0));
        assert_eq!(percentile(&v, 100.0), Some(100.0));
        assert_eq!(percentile(&v, 0.0), Some(1.0));
        assert_eq!(percentile(&[7.0], 99.0), Some(7.0));
        assert_eq!(percentile(&[1.0, 2.0, 3.0], 50.0), Some(2.0));
        assert_eq!(percentile(&[], 50.0), None);
    }

    fn conf(retry: bool, as_root: bool) -> String {
        nginx_conf(&NginxConfig {
            prefix: Path::new("/tmp/x"),
            listen: 8000,
            upstreams: &[9001, 9002, 9003],
            retry,
            as_root,
            temp_modules: &["fastcgi", "scgi"],
        })
    }

    #[test]
    fn nginx_config_is_an_operators() {
        let c = conf(true, true);
        for want in [
            "user root;",
            "pid \"/tmp/x/nginx.pid\";",
            "error_log \"/tmp/x/error.log\" warn;",
            "client_body_temp_path \"/tmp/x/tmp/client_body\";",
            "proxy_temp_path \"/tmp/x/tmp/proxy\";",
            "fastcgi_temp_path \"/tmp/x/tmp/fastcgi\";",
            "scgi_temp_path \"/tmp/x/tmp/scgi\";",
            "access_log \"/tmp/x/access.log\" cluster;",
            "$upstream_status",
            "$upstream_addr",
            "server 127.0.0.1:9001 max_fails=1 fail_timeout=2s;",
            "server 127.0.0.1:9003 max_fails=1 fail_timeout=2s;",
            "keepalive 32;",
            "listen 127.0.0.1:8000;",
            "proxy_http_version 1.1;",
            "proxy_set_header Connection \"\";",
            "proxy_next_upstream error timeout http_502 http_503 non_idempotent;",
            "proxy_next_upstream_tries 3;",
            "proxy_connect_timeout",
            "proxy_read_timeout",
        ] {
            assert!(c.contains(want), "missing {want:?} in\n{c}");
        }
        assert!(!c.contains("uwsgi"), "a module that is not compiled in gets no directive");
        assert_eq!(c.matches('{').count(), c.matches('}').count());
        let plain = conf(false, false);
        assert!(!plain.contains("user "), "`user` only makes sense as root");
        assert!(plain.contains("proxy_next_upstream off;") && !plain.contains("non_idempotent"));
    }

    #[test]
    fn nginx_builds_are_read_from_dash_v() {
        let v = "nginx version: nginx/1.22.1\nbuilt with OpenSSL 3.0.9\nconfigure arguments: --with-cc-opt='-g' --without-http_uwsgi_module --without-http_scgi_module";
        assert_eq!(parse_nginx_build(v), Some(NginxBuild { version: (1, 22, 1), temp_modules: vec!["fastcgi"], proxy: true }));
        let b = parse_nginx_build("nginx version: nginx/1.18.0 (Ubuntu)\nconfigure arguments: --without-http_proxy_module").unwrap();
        assert_eq!(b.version, (1, 18, 0));
        assert!(!b.proxy && b.version < (1, 19, 5));
        assert_eq!(parse_nginx_build("command not found"), None);
    }

    #[test]
    fn access_log_lines_count_retries_per_phase() {
        let log = "\
1700000000.100|0-3-1|200|0.004|127.0.0.1:9001|200|0.004|POST /embed
1700000001.200|1-3-9|200|0.010|127.0.0.1:9001, 127.0.0.1:9002|502, 200|0.000, 0.009|POST /embed
1700000001.300|1-4-2|200|0.010|127.0.0.1:9003|200|0.009|POST /tokenize
1700000002.000|2-0-5|502|0.010|127.0.0.1:9001, 127.0.0.1:9002, 127.0.0.1:9003|502, 502, 502|0.000, 0.000, 0.000|POST /v1/embeddings
1700000002.100|2-0-6|502|0.000|embed|502|-|POST /embed
1700000002.200|-|404|0.000|-|-|-|GET /favicon.ico
garbage line";
        let l = parse_access_line(log.lines().nth(1).unwrap()).unwrap();
        assert_eq!(l.request_id, "1-3-9");
        assert_eq!(l.attempts, vec!["502", "200"]);
        assert_eq!(l.addrs, vec!["127.0.0.1:9001", "127.0.0.1:9002"]);
        assert!(parse_access_line("garbage line").is_none());

        let p = tally_access_log(log);
        assert_eq!((p[0].requests, p[0].retried, p[0].errors), (1, 0, 0));
        assert_eq!((p[1].requests, p[1].retried, p[1].errors), (2, 1, 0));
        assert_eq!(p[1].failed_attempts.get("502"), Some(&1));
        assert_eq!(p[1].served_by.get("127.0.0.1:9002"), Some(&1));
        assert_eq!(p[1].served_by.get("127.0.0.1:9003"), Some(&1));
        assert_eq!((p[2].requests, p[2].retried, p[2].errors), (2, 1, 2));
        assert_eq!(p[2].failed_attempts.get("502"), Some(&4));
        assert!(p[2].served_by.is_empty());
        assert_eq!(upstream_list("502, 200 : 200"), vec!["502", "200", "200"]);
    }

    #[test]
    fn error_log_lines_map_to_phases() {
        assert_eq!(days_from_civil(1970, 1, 1), 0);
        assert_eq!(days_from_civil(2000, 3, 1), 11_017);
        assert_eq!(days_from_civil(2024, 2, 29) * 86_400, 1_709_164_800);
        let refused = "2024/02/29 00:00:05 [error] 12#12: *7 connect() failed (111: Connection refused) while connecting to upstream, client: 127.0.0.1";
        assert_eq!(parse_error_line(refused), Some((1_709_164_805, "connection refused")));
        let closed = "2024/02/29 00:00:09 [error] 12#12: *9 upstream prematurely closed connection while reading response header from upstream";
        assert_eq!(parse_error_line(closed).unwrap().1, "closed before answering (keep-alive race or kill)");
        assert_eq!(parse_error_line("2024/02/29 00:00:09 [notice] 1#1: signal process started"), None);
        assert_eq!(parse_error_line("nonsense"), None);
        let bounds = [(1_709_164_800.5, 1_709_164_805.2), (1_709_164_805.2, 1_709_164_810.0)];
        assert_eq!(phase_at(&bounds, 1_709_164_800), Some(0));
        assert_eq!(phase_at(&bounds, 1_709_164_805), Some(0), "the second a phase ends in still counts for it");
        assert_eq!(phase_at(&bounds, 1_709_164_806), Some(1));
        assert_eq!(phase_at(&bounds, 1_709_164_811), None);
    }

    #[test]
    fn server_logs_give_the_port_and_the_shutdown() {
        assert_eq!(listening_port("embed-server listening on http://127.0.0.1:38779  (default model: bert)\n"), Some(38779));
        assert_eq!(listening_port("INFO listening addr=127.0.0.1:1"), None);
        let t0 = log_time("2026-11-27T10:09:26.950000Z  INFO x").unwrap();
        assert!((t0 - (days_from_civil(2026, 11, 27) * 86_400 + 10 * 3600 + 9 * 60 + 26) as f64 - 0.95).abs() < 1e-6);
        assert_eq!(log_time("embed-server listening on http://127.0.0.1:1"), None);
        let log = "2026-11-27T10:09:26.951000Z  INFO signal received; shutting down gracefully (send it again to force exit)\n\
                   2026-11-27T10:09:26.962067Z  INFO shutdown: no new connections; closing idle ones and draining in-flight requests connections=5 requests=2\n\
                   2026-11-27T10:09:26.963886Z  INFO stopped drained=true cut_short=0 released=1 live_models=0\n";
        assert_eq!(shutdown_facts(log, t0), "signal handled after 1 ms; 5 connections, 2 requests open; drained=true cut_short=0 after 14 ms");
        assert_eq!(shutdown_facts("killed", t0), "");
    }

    #[test]
    fn the_request_mix_is_well_formed_and_checked() {
        let mut rng = Rng(42);
        let mut seen = [0usize; 3];
        for _ in 0..300 {
            let (kind, body, n) = next_request(&mut rng);
            seen[kind as usize] += 1;
            let v: serde_json::Value = serde_json::from_str(&body).unwrap();
            let inputs = if kind == Kind::OpenAi { &v["input"] } else { &v["inputs"] };
            assert_eq!(inputs.as_array().unwrap().len(), n);
            assert!((1..=8).contains(&n));
        }
        assert!(seen.iter().all(|&c| c > 30), "every kind is sent: {seen:?}");
        assert_eq!(phase_of("2-15-300"), Some(2));
        assert_eq!(phase_of("9-1-1"), None);

        assert!(check_body(Kind::Embed, 2, "[[0.1,0.2],[0.3,0.4]]").is_ok());
        assert!(check_body(Kind::Embed, 2, "[[0.1,0.2]]").is_err());
        assert!(check_body(Kind::Embed, 2, "[[0.1,0.2],[0.3]]").is_err());
        assert!(check_body(Kind::Embed, 1, "[[]]").is_err());
        assert!(check_body(Kind::Embed, 1, "{\"error\":\"x\"}").is_err());
        let oa = r#"{"object":"list","data":[{"object":"embedding","index":0,"embedding":[0.1,0.2]},{"object":"embedding","index":1,"embedding":[0.3,0.4]}],"model":"bert"}"#;
        assert!(check_body(Kind::OpenAi, 2, oa).is_ok());
        assert!(check_body(Kind::OpenAi, 3, oa).is_err());
        assert!(check_body(Kind::OpenAi, 2, &oa.replace("\"index\":1", "\"index\":0")).is_err());
        assert!(check_body(Kind::Tokenize, 1, r#"[[{"id":2,"text":"[CLS]"},{"id":3,"text":"[SEP]"}]]"#).is_ok());
        assert!(check_body(Kind::Tokenize, 1, "[[]]").is_err());
        assert!(check_body(Kind::Tokenize, 1, "not json").is_err());
        assert_eq!(excerpt("<html>\n<head><title>502 Bad Gateway</title></head>\n"), "<html> <head><title>502 Bad Gateway</title></head>");
    }
}
