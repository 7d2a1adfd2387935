//! The processes cluster-test starts, and how it makes sure none outlives it: each runs as the
//! leader of a process group of its own (one `killpg` also takes nginx's workers) with
//! PR_SET_PDEATHSIG set, and Ctrl-C or SIGTERM turn into an error at the next check so every
//! guard's `Drop` runs. Also the `Replica` (one `embed-server`, restartable on its port) and what
//! its log says about its port and its shutdown.

use std::fs::OpenOptions;
use std::io::Write as _;
use std::net::TcpListener;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use super::{READY_TIMEOUT, SHUTDOWN_DEADLINE_S};

// ---------------------------------------------------------------------------------------------
// Signals and child processes

pub(super) static INTERRUPTED: AtomicBool = AtomicBool::new(false);

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
pub(super) struct CatchInterrupts {
    previous: [(libc::c_int, libc::sighandler_t); 2],
}

impl CatchInterrupts {
    pub(super) fn install() -> Self {
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
pub(super) fn pause(d: Duration) -> Result<()> {
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
pub(super) fn spawn_group(cmd: &mut Command, death_signal: libc::c_int) -> Result<Child> {
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
pub(super) fn signal_child(child: &mut Child, sig: libc::c_int, group: bool) {
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
pub(super) fn wait_exit(child: &mut Child, timeout: Duration) -> Result<Option<ExitStatus>> {
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
pub(super) fn kill_group(child: &mut Child) {
    signal_child(child, libc::SIGKILL, true);
    let _ = child.wait();
}

pub(super) fn free_port() -> Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0").context("binding 127.0.0.1:0 to pick a free port")?.local_addr()?.port())
}

/// The last `lines` lines of a log file, for error messages.
pub(super) fn tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

pub(super) fn since_offset(path: &Path, offset: u64) -> String {
    let bytes = std::fs::read(path).unwrap_or_default();
    String::from_utf8_lossy(bytes.get(offset as usize..).unwrap_or_default()).into_owned()
}

// ---------------------------------------------------------------------------------------------
// Replicas

/// One `embed-server` process on a fixed loopback port, restartable; killed with its process
/// group when dropped.
#[must_use = "dropping a Replica kills its server"]
pub(super) struct Replica {
    index: usize,
    /// 0 until the first start, which binds :0 and reads the port the server chose.
    pub(super) port: u16,
    bin: PathBuf,
    model: String,
    pub(super) log: PathBuf,
    /// Where the current process's output starts in `log`.
    pub(super) log_offset: u64,
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
pub(super) fn shutdown_facts(log: &str, signalled_at: f64) -> String {
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

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's `days_from_civil`).
pub(super) fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * (m + if m > 2 { -3 } else { 9 }) + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

impl Replica {
    /// A replica not started yet; `model` is the server's `--model` argument.
    pub(super) fn new(index: usize, bin: &Path, model: &str, log: PathBuf) -> Self {
        Replica { index, port: 0, bin: bin.to_path_buf(), model: model.to_string(), log, log_offset: 0, child: None }
    }

    pub(super) fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    pub(super) fn is_running(&self) -> bool {
        self.child.is_some()
    }

    fn child(&mut self) -> Result<&mut Child> {
        self.child.as_mut().with_context(|| format!("replica {} is not running", self.index))
    }

    pub(super) fn start(&mut self) -> Result<()> {
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
    pub(super) fn wait_ready(&mut self, probe: &ureq::Agent) -> Result<()> {
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
    pub(super) fn stop(&mut self, sig: libc::c_int, timeout: Duration) -> Result<ExitStatus> {
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

#[cfg(test)]
mod tests {
    use super::*;

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
}
