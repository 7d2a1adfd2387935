//! Starts the `embed-server` binary on a free loopback port and talks to it.
#![allow(dead_code, unreachable_pub)]

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A running server process; killed on drop.
pub struct Server {
    child: Child,
    pub base: String,
    log: std::sync::Arc<std::sync::Mutex<String>>,
    out: std::sync::Arc<std::sync::Mutex<String>>,
}

impl Server {
    pub fn start(args: &[&str]) -> Server {
        Self::start_with(args, |_| {})
    }

    /// Like [`Server::start`], with a chance to adjust the command (environment, limits).
    pub fn start_with(args: &[&str], adjust: impl FnOnce(&mut Command)) -> Server {
        let mut cmd = command(args);
        adjust(&mut cmd);
        Self::spawn(cmd)
    }

    /// Starts `cmd` (stdout and stderr piped), which must print the address it listens on.
    pub fn spawn(mut cmd: Command) -> Server {
        let mut child = cmd.spawn().expect("start embed-server");
        let stdout = child.stdout.take().unwrap();
        let mut lines = BufReader::new(stdout).lines();
        let out = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
        let base = loop {
            let line = lines.next().expect("server printed its address").unwrap();
            out.lock().unwrap().push_str(&format!("{line}\n"));
            if let Some(rest) = line.split("listening on ").nth(1) {
                break rest.split_whitespace().next().unwrap().to_string();
            }
        };
        let log = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
        let stderr = child.stderr.take().unwrap();
        let sink = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let mut s = sink.lock().unwrap();
                s.push_str(&line);
                s.push('\n');
            }
        });
        let sink = out.clone();
        std::thread::spawn(move || {
            for line in lines.map_while(Result::ok) {
                sink.lock().unwrap().push_str(&format!("{line}\n"));
            }
        });
        Server { child, base, log, out }
    }

    /// What the server printed on stdout so far.
    pub fn stdout(&self) -> String {
        self.out.lock().unwrap().clone()
    }

    pub async fn wait_ready(&self, client: &reqwest::Client) {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Ok(r) = client.get(format!("{}/ready", self.base)).send().await {
                if r.status() == 200 {
                    return;
                }
            }
            assert!(Instant::now() < deadline, "server never became ready:\n{}", self.log.lock().unwrap());
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The server's log (stderr) so far.
    pub fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn signal(&self, sig: i32) {
        // SAFETY: plain kill(2) on our own child.
        unsafe {
            libc::kill(self.child.id() as i32, sig);
        }
    }

    pub fn wait(mut self, timeout: Duration) -> (i32, String) {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                std::thread::sleep(Duration::from_millis(100));
                return (status.code().unwrap_or(-1), self.log.lock().unwrap().clone());
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                panic!("server did not exit:\n{}", self.log.lock().unwrap());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// The `embed-server` command on a free loopback port, output piped.
pub fn command(args: &[&str]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_embed-server"));
    cmd.args(["--bind", "127.0.0.1:0"])
        .args(args)
        .env("EMBED_LOG", "info")
        .env_remove("LD_LIBRARY_PATH")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    cmd
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
    }
}


pub mod inproc;

/// Runs `cmd` to completion, killing it after `limit` (a server that should have exited).
pub fn output_within(mut cmd: Command, limit: Duration) -> std::process::Output {
    let child = cmd.spawn().unwrap();
    let pid = child.id() as i32;
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        if rx.recv_timeout(limit).is_err() {
            // SAFETY: plain kill(2) on our own child, which has not been reaped yet.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
    });
    let out = child.wait_with_output().unwrap();
    let _ = tx.send(());
    out
}

/// `embed_server::serve` in-process on a free loopback port, the tiny model as `tiny` (the
/// default model), ready when returned; [`Served::stop`] asks it to stop, [`Served::finish`]
/// waits for its report.
pub struct Served {
    pub base: String,
    pub addr: std::net::SocketAddr,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<Result<embed_server::ShutdownReport, embed_server::ServeError>>,
    _model: tempfile::TempDir,
}

impl Served {
    /// Starts it with `config` applied to the tiny model's `ServerConfig`.
    pub async fn tiny(config: impl FnOnce(embed_server::ServerConfig) -> embed_server::ServerConfig) -> Served {
        use embed_pool::{ModelRegistry, Pool, PoolConfig};
        let (tmp, dir) = embed_testkit::TinyModel::default().write_temp();
        let registry = ModelRegistry::new().with("tiny", embed_core::ModelSpec::new(dir.to_string_lossy()));
        let state = embed_server::AppState::new(Pool::new(PoolConfig::default(), registry), config(embed_server::ServerConfig::new("tiny")));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(embed_server::serve(listener, state, async {
            let _ = stopped.await;
        }));
        let served = Served { base: format!("http://{addr}"), addr, stop: Some(stop), task, _model: tmp };
        let client = reqwest::Client::new();
        while !client.get(format!("{}/ready", served.base)).send().await.is_ok_and(|r| r.status() == 200) {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        served
    }

    /// Asks the server to stop (its shutdown future completes).
    pub fn stop(&mut self) {
        self.stop.take().expect("stop asked once").send(()).unwrap();
    }

    /// Waits for `serve` to return (asking it to stop first if not yet asked).
    pub async fn finish(mut self) -> embed_server::ShutdownReport {
        if self.stop.is_some() {
            self.stop();
        }
        (&mut self.task).await.unwrap().unwrap()
    }
}
