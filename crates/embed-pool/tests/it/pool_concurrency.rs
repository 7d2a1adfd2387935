//! Many tasks, few slots: no deadlock, no model released under a lease, one load per model
//! at a time, everything released at the end.

use crate::common;

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{CountingLoader, TinyModels};
use embed_core::memory::live_models;
use embed_core::EmbedOptions;
use embed_pool::{Lease, Pool, PoolConfig, PoolTimeouts};


/// xorshift64: a cheap per-task random stream.
fn next(state: &mut u64) -> u64 {
    *state ^= *state << 13;
    *state ^= *state >> 7;
    *state ^= *state << 17;
    *state
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sixty_four_tasks_five_models_two_slots() {
    let _gate = embed_testkit::module_gate(module_path!());
    let _s = embed_testkit::serial().await;
    const TASKS: usize = 64;
    const MAX: usize = 2;
    let models = TinyModels::new(5);
    let loader = CountingLoader::with_delay(Duration::ZERO);
    let pool = Pool::with_loader(
        PoolConfig::default().with_max_models(MAX).with_timeouts(PoolTimeouts { wait: Duration::from_secs(60), ..PoolTimeouts::default() }),
        models.registry(),
        loader.clone(),
    );
    let run_for = Duration::from_millis(2500);
    let stop = Instant::now() + run_for;
    let ops = Arc::new(AtomicU64::new(0));
    let embeds = Arc::new(AtomicU64::new(0));
    let done = Arc::new(AtomicBool::new(false));
    let max_seen = Arc::new(AtomicUsize::new(0));

    // Samples the pool and the process while the tasks run.
    let monitor = tokio::spawn({
        let (pool, done, max_seen) = (pool.clone(), done.clone(), max_seen.clone());
        async move {
            while !done.load(Ordering::SeqCst) {
                let status = pool.status();
                assert!(status.models.len() <= MAX, "{} entries in a pool of {MAX}", status.models.len());
                let live = live_models();
                assert!(live <= MAX, "{live} models live in a pool of {MAX}");
                max_seen.fetch_max(status.models.len(), Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        }
    });

    let tasks: Vec<_> = (0..TASKS)
        .map(|t| {
            let (pool, ops, embeds) = (pool.clone(), ops.clone(), embeds.clone());
            tokio::spawn(async move {
                let mut rng = 0x9E37_79B9_7F4A_7C15u64 ^ (t as u64 + 1).wrapping_mul(0x2545_F491_4F6C_DD1D);
                while Instant::now() < stop {
                    let m = (next(&mut rng) % 5) as usize;
                    let lease = pool.get(&TinyModels::name(m)).await.expect("get within the wait timeout");
                    assert_eq!(Lease::name(&lease), TinyModels::name(m));
                    assert!(lease.is_ready(), "fresh lease on a released model");
                    match next(&mut rng) % 4 {
                        0 => {
                            let out = lease
                                .embed_texts(&[format!("task {t} text")], &EmbedOptions::default())
                                .await
                                .expect("embedding under a lease never fails");
                            assert_eq!(out.vectors[0].len(), 32);
                            embeds.fetch_add(1, Ordering::Relaxed);
                        }
                        1 => tokio::time::sleep(Duration::from_micros(next(&mut rng) % 2000)).await,
                        _ => tokio::task::yield_now().await,
                    }
                    assert!(lease.is_ready(), "model m{m} was released while leased");
                    drop(lease);
                    ops.fetch_add(1, Ordering::Relaxed);
                }
            })
        })
        .collect();

    let all = futures::future::join_all(tasks);
    let results = tokio::time::timeout(run_for + Duration::from_secs(60), all).await.expect("deadlock: tasks did not finish");
    for r in results {
        r.expect("task panicked");
    }
    done.store(true, Ordering::SeqCst);
    monitor.await.expect("monitor saw a violation");

    let stats = pool.stats();
    let ops = ops.load(Ordering::Relaxed);
    eprintln!(
        "ops {ops}, embeds {}, hits {}, misses {}, loads {}, capacity evictions {}, waits {} ({:?})",
        embeds.load(Ordering::Relaxed),
        stats.hits,
        stats.misses,
        stats.loads,
        stats.evictions.capacity,
        stats.capacity_waits,
        stats.capacity_wait_time
    );
    assert!(ops >= TASKS as u64, "too little progress: {ops} operations");
    assert_eq!(stats.hits + stats.misses, ops, "every lease is a hit or a miss");
    assert_eq!(stats.loads as usize, loader.calls(), "every loader call became a pooled model");
    assert_eq!(stats.load_failures, 0);
    assert!(stats.loads >= 5, "all five models were loaded at some point");
    assert!(stats.evictions.capacity >= 3, "two slots for five models means evictions");
    assert_eq!(max_seen.load(Ordering::SeqCst), MAX);
    assert_eq!(pool.status().leases, 0);

    let report = pool.close().await;
    assert_eq!((report.models_left, report.forced_leases), (0, 0));
    assert_eq!(live_models(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_gets_of_one_model_share_one_load() {
    let _gate = embed_testkit::module_gate(module_path!());
    let _s = embed_testkit::serial().await;
    const N: usize = 32;
    let models = TinyModels::new(1);
    // A slow load keeps the window open for all N callers.
    let loader = CountingLoader::with_delay(Duration::from_millis(100));
    let pool = Pool::with_loader(PoolConfig::default(), models.registry(), loader.clone());
    let barrier = Arc::new(tokio::sync::Barrier::new(N));
    let tasks: Vec<_> = (0..N)
        .map(|_| {
            let (pool, barrier) = (pool.clone(), barrier.clone());
            tokio::spawn(async move {
                barrier.wait().await;
                pool.get("m0").await.unwrap()
            })
        })
        .collect();
    let mut leases = Vec::new();
    for t in tasks {
        leases.push(t.await.unwrap());
    }
    assert_eq!(loader.calls(), 1, "{N} concurrent gets loaded the model {} times", loader.calls());
    let stats = pool.stats();
    assert_eq!((stats.loads, stats.misses + stats.hits), (1, N as u64));
    let first = Lease::service(&leases[0]);
    assert!(leases.iter().all(|l| Arc::ptr_eq(&Lease::service(l), &first)), "every caller got the same service");
    assert_eq!(pool.status().model("m0").unwrap().leases, N);
    assert_eq!(live_models(), 1);
    drop(leases);
    assert_eq!(pool.status().leases, 0);
    pool.close().await;
    assert_eq!(live_models(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn different_models_load_concurrently() {
    let _gate = embed_testkit::module_gate(module_path!());
    let _s = embed_testkit::serial().await;
    let models = TinyModels::new(3);
    let loader = CountingLoader::with_delay(Duration::from_millis(300));
    let pool = Pool::with_loader(PoolConfig::default(), models.registry(), loader.clone());
    let started = Instant::now();
    let (a, b, c) = tokio::join!(pool.get("m0"), pool.get("m1"), pool.get("m2"));
    let elapsed = started.elapsed();
    assert!(a.is_ok() && b.is_ok() && c.is_ok());
    // Three 300 ms loads in well under 900 ms: no lock is held across a load.
    assert!(elapsed < Duration::from_millis(800), "loads were serialised: {elapsed:?}");
    drop((a, b, c));
    pool.close().await;
    assert_eq!(live_models(), 0);
}
