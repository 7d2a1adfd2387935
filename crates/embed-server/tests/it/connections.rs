//! Slow, idle and too many connections against the `embed-server` binary, over raw loopback
//! sockets: the header-read timeout, the keep-alive timeout, the connection cap under a small
//! file-descriptor limit, a half-sent request at shutdown, and a small load-and-abuse mix.
//!
//! Timing assertions have wide absolute slack (a busy 2-core machine): a 2 s timeout must fire
//! between 1.5 s and 20 s, where the defect was "never".

use crate::common;

use std::io::{ErrorKind, Read, Write};
use std::net::TcpStream;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::Server;
use embed_testkit::TinyModel;
use serde_json::json;

fn tiny() -> (tempfile::TempDir, String) {
    let (tmp, dir) = TinyModel::default().write_temp();
    (tmp, format!("tiny={}", dir.display()))
}

fn addr(server: &Server) -> String {
    server.base.trim_start_matches("http://").to_string()
}

/// Whether the server has closed `s` (EOF or reset), polling for up to `within`.
fn closed_within(s: &mut TcpStream, within: Duration) -> Option<Duration> {
    let started = Instant::now();
    s.set_read_timeout(Some(Duration::from_millis(200))).unwrap();
    let mut buf = [0u8; 4096];
    while started.elapsed() < within {
        match s.read(&mut buf) {
            Ok(0) => return Some(started.elapsed()),
            Ok(_) => {}
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(_) => return Some(started.elapsed()),
        }
    }
    None
}

/// Sends a request head one byte every `every` until the server closes the connection or
/// `within` passes; returns how long the server took.
fn trickle(s: &mut TcpStream, every: Duration, within: Duration) -> Option<Duration> {
    let head = b"POST /embed HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nX-Slow: ".repeat(50);
    let started = Instant::now();
    s.set_read_timeout(Some(every)).unwrap();
    let mut buf = [0u8; 1024];
    for byte in head.iter().cycle() {
        if started.elapsed() > within {
            return None;
        }
        if s.write_all(&[*byte]).is_err() {
            return Some(started.elapsed());
        }
        match s.read(&mut buf) {
            Ok(0) => return Some(started.elapsed()),
            // A 408 or 400 answer before closing is fine too.
            Ok(_) => return Some(started.elapsed()),
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(_) => return Some(started.elapsed()),
        }
    }
    unreachable!("cycle is endless")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_request_head_is_cut_off_by_the_header_read_timeout() {
    let _gate = embed_testkit::module_gate(module_path!());
    let (_tmp, model) = tiny();
    let server = Server::start(&["--model", &model, "--header-read-timeout", "2", "--keep-alive-timeout", "120"]);
    let client = reqwest::Client::new();
    server.wait_ready(&client).await;
    let addr = addr(&server);
    let took = tokio::task::spawn_blocking(move || {
        let mut s = TcpStream::connect(addr).unwrap();
        trickle(&mut s, Duration::from_millis(250), Duration::from_secs(30))
    })
    .await
    .unwrap();
    let took = took.expect("a request head sent at 4 bytes/s was still accepted after 30 s");
    assert!(took >= Duration::from_millis(1500) && took < Duration::from_secs(20), "closed after {took:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_keep_alive_connection_is_closed() {
    let _gate = embed_testkit::module_gate(module_path!());
    let (_tmp, model) = tiny();
    let server = Server::start(&["--model", &model, "--header-read-timeout", "120", "--keep-alive-timeout", "2"]);
    let client = reqwest::Client::new();
    server.wait_ready(&client).await;
    let addr = addr(&server);
    let took = tokio::task::spawn_blocking(move || {
        let mut s = TcpStream::connect(addr).unwrap();
        s.write_all(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n").unwrap();
        // Read the response, then stay silent.
        s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        let mut buf = [0u8; 1024];
        let n = s.read(&mut buf).unwrap();
        assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"), "{}", String::from_utf8_lossy(&buf[..n]));
        closed_within(&mut s, Duration::from_secs(30))
    })
    .await
    .unwrap();
    let took = took.expect("an idle keep-alive connection was still open after 30 s");
    assert!(took >= Duration::from_millis(1500) && took < Duration::from_secs(20), "closed after {took:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_connections_beyond_the_fd_limit_wait_in_the_backlog() {
    let _gate = embed_testkit::module_gate(module_path!());
    let (_tmp, model) = tiny();
    // The setup: an open-file limit of 256 and 300 silent connections. The server fits
    // its connection cap under the limit; the rest wait in the listen backlog until the
    // header-read timeout frees slots, and a normal request still gets through.
    let server = Server::start_with(&["--model", &model, "--header-read-timeout", "3"], |cmd| {
        use std::os::unix::process::CommandExt;
        // SAFETY: setrlimit is async-signal-safe; nothing else runs between fork and exec.
        unsafe {
            cmd.pre_exec(|| {
                let lim = libc::rlimit { rlim_cur: 256, rlim_max: 256 };
                if libc::setrlimit(libc::RLIMIT_NOFILE, &lim) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
    });
    let client = reqwest::Client::builder().timeout(Duration::from_secs(90)).build().unwrap();
    server.wait_ready(&client).await;
    let target = addr(&server);
    let silent: Vec<TcpStream> = (0..300).map(|_| TcpStream::connect(&target).expect("connect (backlog)")).collect();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let started = Instant::now();
    let r = client.post(format!("{}/embed", server.base)).json(&json!({"inputs": "still served"})).send().await;
    let r = r.unwrap_or_else(|e| panic!("normal request failed after {:?}: {e}\n{}", started.elapsed(), server.log()));
    assert_eq!(r.status(), 200);
    drop(silent);
    let log = server.log();
    assert!(!log.contains("Too many open files"), "{log}");
    assert!(log.contains("max_connections lowered"), "{log}");
    server.signal(libc::SIGTERM);
    let (code, log) = server.wait(Duration::from_secs(60));
    assert_eq!(code, 0, "{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_half_sent_request_does_not_hold_shutdown() {
    let _gate = embed_testkit::module_gate(module_path!());
    let (_tmp, model) = tiny();
    let server = Server::start(&["--model", &model, "--shutdown-deadline", "60", "--header-read-timeout", "60", "--keep-alive-timeout", "60"]);
    let client = reqwest::Client::new();
    server.wait_ready(&client).await;
    let mut half = TcpStream::connect(addr(&server)).unwrap();
    half.write_all(b"POST /embed HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Ty").unwrap();
    let mut idle = TcpStream::connect(addr(&server)).unwrap();
    idle.write_all(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n").unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let started = Instant::now();
    server.signal(libc::SIGTERM);
    let (code, log) = tokio::task::spawn_blocking(move || server.wait(Duration::from_secs(40))).await.unwrap();
    let took = started.elapsed();
    assert_eq!(code, 0, "{log}");
    assert!(took < Duration::from_secs(15), "shutdown took {took:?} with a half-sent request open:\n{log}");
    assert!(log.contains("drained=true"), "{log}");
    drop((half, idle));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn normal_traffic_survives_slowloris_and_idle_connections() {
    let _gate = embed_testkit::module_gate(module_path!());
    let (_tmp, model) = tiny();
    let server = Server::start(&[
        "--model", &model, "--max-connections", "48", "--header-read-timeout", "2", "--keep-alive-timeout", "3",
    ]);
    let client = reqwest::Client::builder().timeout(Duration::from_secs(60)).build().unwrap();
    server.wait_ready(&client).await;
    let target = addr(&server);
    let stop = Arc::new(AtomicBool::new(false));
    let run_for = Duration::from_secs(8);

    // Abusers: 16 slowloris connections and 40 silent ones, reconnecting when cut off, until
    // `stop` (bounded by `run_for` in any case).
    let mut abusers = Vec::new();
    for i in 0..56 {
        let (target, stop) = (target.clone(), stop.clone());
        abusers.push(std::thread::spawn(move || {
            let started = Instant::now();
            let mut cut_off = 0usize;
            while !stop.load(Ordering::Relaxed) && started.elapsed() < run_for * 2 {
                let Ok(mut s) = TcpStream::connect(&target) else { continue };
                let left = (run_for * 2).saturating_sub(started.elapsed());
                let closed = if i < 16 { trickle(&mut s, Duration::from_millis(300), left) } else { closed_within(&mut s, left) };
                if closed.is_some() {
                    cut_off += 1;
                }
            }
            cut_off
        }));
    }

    // Normal clients, each request on a fresh connection: they queue for a slot with the
    // abusers (the cap applies to them too).
    let client = reqwest::Client::builder().timeout(Duration::from_secs(60)).pool_max_idle_per_host(0).build().unwrap();
    let ok = Arc::new(AtomicUsize::new(0));
    let mut failures = Vec::new();
    let started = Instant::now();
    let mut tasks = Vec::new();
    for c in 0..4 {
        let (client, base, ok) = (client.clone(), server.base.clone(), ok.clone());
        tasks.push(tokio::spawn(async move {
            let mut errors = Vec::new();
            let mut i = 0;
            while started.elapsed() < run_for {
                let r = client.post(format!("{base}/embed")).json(&json!({"inputs": format!("client {c} request {i}")})).send().await;
                match r {
                    // Served while the abuse went on (a request stuck behind the abusers
                    // until they gave up does not count).
                    Ok(r) if r.status() == 200 && started.elapsed() < run_for => {
                        ok.fetch_add(1, Ordering::Relaxed);
                    }
                    Ok(r) if r.status() == 200 => {}
                    Ok(r) => errors.push(format!("status {}", r.status())),
                    Err(e) => errors.push(e.to_string()),
                }
                i += 1;
            }
            errors
        }));
    }
    for t in tasks {
        failures.extend(t.await.unwrap());
    }
    stop.store(true, Ordering::Relaxed);
    let cut_off: usize = abusers.into_iter().map(|t| t.join().unwrap()).sum();
    assert!(failures.is_empty(), "normal requests failed: {:?}\n{}", &failures[..failures.len().min(5)], server.log());
    let served = ok.load(Ordering::Relaxed);
    assert!(served >= 4, "normal requests must keep being served during the abuse; {served} were in {run_for:?}");
    assert!(cut_off >= 16, "abusive connections were cut off ({cut_off}; normal requests served: {})", ok.load(Ordering::Relaxed));
    let r = client.get(format!("{}/health", server.base)).send().await.unwrap();
    assert_eq!(r.status(), 200);
    server.signal(libc::SIGTERM);
    let (code, log) = server.wait(Duration::from_secs(60));
    assert_eq!(code, 0, "{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expect_continue_with_too_large_a_body_gets_an_early_413() {
    let _gate = embed_testkit::module_gate(module_path!());
    let (_tmp, model) = tiny();
    let server = Server::start(&["--model", &model, "--max-body-bytes", "1000"]);
    let client = reqwest::Client::new();
    server.wait_ready(&client).await;
    let target = addr(&server);
    let head = tokio::task::spawn_blocking(move || {
        let mut s = TcpStream::connect(target).unwrap();
        s.write_all(
            b"POST /v1/embeddings HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n\
              Content-Length: 10000000\r\nExpect: 100-continue\r\n\r\n",
        )
        .unwrap();
        s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        let mut buf = vec![0u8; 4096];
        let n = s.read(&mut buf).unwrap();
        String::from_utf8_lossy(&buf[..n]).into_owned()
    })
    .await
    .unwrap();
    assert!(head.starts_with("HTTP/1.1 413"), "expected an early 413, got:\n{head}");
    assert!(head.contains("\"error\""), "in the route's error shape:\n{head}");
}
