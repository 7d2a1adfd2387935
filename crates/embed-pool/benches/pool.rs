//! Pool overheads on tiny models (so the numbers are the pool's, not the model's):
//! * `lease_hot`: `get` + drop of a loaded model (a lock, a map lookup, a counter; microseconds).
//! * `swap_evict_load`: with one slot, alternating two models: each `get` evicts the other
//!   (waiting for its release) and loads its own.

#![allow(missing_docs)] // criterion_group! generates undocumented items

use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion};
use embed_core::ModelSpec;
use embed_pool::{ModelRegistry, Pool, PoolConfig};
use embed_testkit::TinyModel;

fn bench(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let (_tmp_a, dir_a) = TinyModel::default().write_temp();
    let (_tmp_b, dir_b) = TinyModel { seed: 8, ..Default::default() }.write_temp();
    let registry = ModelRegistry::new()
        .with("a", ModelSpec::new(dir_a.to_string_lossy()))
        .with("b", ModelSpec::new(dir_b.to_string_lossy()));

    let mut group = c.benchmark_group("pool");
    let pool = Pool::new(PoolConfig::default(), registry.clone());
    rt.block_on(pool.preload("a")).unwrap();
    group.bench_function("lease_hot", |b| {
        b.iter_custom(|iters| {
            rt.block_on(async {
                let started = Instant::now();
                for _ in 0..iters {
                    let lease = pool.get("a").await.unwrap();
                    drop(std::hint::black_box(lease));
                }
                started.elapsed()
            })
        })
    });
    rt.block_on(pool.close());

    let pool = Pool::new(PoolConfig::default().with_max_models(1), registry);
    rt.block_on(pool.preload("a")).unwrap();
    group.sample_size(20).measurement_time(Duration::from_secs(5));
    group.bench_function("swap_evict_load", |b| {
        let mut next = ["b", "a"].into_iter().cycle();
        b.iter_custom(|iters| {
            rt.block_on(async {
                let started = Instant::now();
                for _ in 0..iters {
                    drop(pool.get(next.next().unwrap()).await.unwrap());
                }
                started.elapsed()
            })
        })
    });
    let stats = pool.stats();
    eprintln!("swap bench: {} loads, {} capacity evictions", stats.loads, stats.evictions.capacity);
    rt.block_on(pool.close());
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
