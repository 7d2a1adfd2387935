//! Random sequences of get / drop / unload / preload / TTL tick, run against real tiny models and
//! checked after every step against a reference model of the pool: what is loaded, lease
//! counts, LRU order and eviction choices, counters, and the process's live models.
//!
//! Time is tokio's paused clock, so TTL ticks and exhausted waits are exact and instant.

use crate::common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::TinyModels;
use embed_core::memory::live_models;
use embed_pool::{Lease, ModelSettings, Pool, PoolConfig, PoolError, UnloadMode, PoolTimeouts};
use proptest::prelude::*;
use proptest::test_runner::{Config, TestCaseError, TestRunner};

const MODELS: usize = 4;
const TTL: Duration = Duration::from_secs(10);
const WAIT: Duration = Duration::from_secs(30);


#[derive(Debug, Clone)]
enum Op {
    /// Lease a model and hold the lease.
    Get(usize),
    /// Return the n-th held lease (modulo the number held).
    Drop(usize),
    /// `unload(FailIfLeased)`.
    Unload(usize),
    /// Load without keeping a lease.
    Preload(usize),
    /// Advance the clock by this many seconds, then evict expired models.
    Tick(u64),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        5 => (0..MODELS).prop_map(Op::Get),
        4 => (0usize..16).prop_map(Op::Drop),
        1 => (0..MODELS).prop_map(Op::Unload),
        2 => (0..MODELS).prop_map(Op::Preload),
        2 => (1u64..=12).prop_map(Op::Tick),
    ]
}

#[derive(Debug, Clone)]
struct RefEntry {
    leases: usize,
    tick: u64,
    last_used: Duration,
}

/// What the pool should do, written as plainly as possible.
#[derive(Debug)]
struct Reference {
    max: usize,
    pinned: [bool; MODELS],
    clock: u64,
    now: Duration,
    loaded: BTreeMap<usize, RefEntry>,
    hits: u64,
    misses: u64,
    capacity_evictions: u64,
    ttl_evictions: u64,
    explicit_evictions: u64,
}

#[derive(Debug, PartialEq)]
enum Expect {
    Ok,
    Exhausted,
}

impl Reference {
    fn touch(&mut self, m: usize) {
        self.clock += 1;
        let e = self.loaded.get_mut(&m).unwrap();
        e.tick = self.clock;
        e.last_used = self.now;
    }

    fn get(&mut self, m: usize) -> Expect {
        if let Some(e) = self.loaded.get_mut(&m) {
            e.leases += 1;
            self.hits += 1;
            self.touch(m);
            return Expect::Ok;
        }
        if self.loaded.len() >= self.max {
            // The least recently used idle, unpinned model.
            let victim = self
                .loaded
                .iter()
                .filter(|(k, e)| e.leases == 0 && !self.pinned[**k])
                .min_by_key(|(_, e)| e.tick)
                .map(|(k, _)| *k);
            match victim {
                Some(v) => {
                    self.loaded.remove(&v);
                    self.capacity_evictions += 1;
                }
                None => {
                    self.now += WAIT;
                    return Expect::Exhausted;
                }
            }
        }
        self.misses += 1;
        self.loaded.insert(m, RefEntry { leases: 1, tick: 0, last_used: self.now });
        self.touch(m);
        Expect::Ok
    }

    fn release(&mut self, m: usize) {
        self.loaded.get_mut(&m).unwrap().leases -= 1;
        self.touch(m);
    }

    fn expired(&mut self) -> Vec<usize> {
        let now = self.now;
        let out: Vec<usize> = self
            .loaded
            .iter()
            .filter(|(k, e)| e.leases == 0 && !self.pinned[**k] && now - e.last_used >= TTL)
            .map(|(k, _)| *k)
            .collect();
        for k in &out {
            self.loaded.remove(k);
        }
        self.ttl_evictions += out.len() as u64;
        out
    }

    /// Names, least recently used first.
    fn lru_order(&self) -> Vec<String> {
        let mut v: Vec<(&usize, &RefEntry)> = self.loaded.iter().collect();
        v.sort_by_key(|(_, e)| e.tick);
        v.into_iter().map(|(k, _)| TinyModels::name(*k)).collect()
    }
}

fn check(pool: &Pool, reference: &Reference, held: &[(usize, Lease)]) -> Result<(), TestCaseError> {
    let status = pool.status();
    prop_assert!(status.models.len() <= reference.max, "{} models loaded, max {}", status.models.len(), reference.max);
    let names: Vec<String> = status.models.iter().map(|m| m.name.clone()).collect();
    prop_assert_eq!(&names, &reference.lru_order(), "loaded models or LRU order differ");
    for m in &status.models {
        let k: usize = m.name[1..].parse().unwrap();
        prop_assert_eq!(m.leases, reference.loaded[&k].leases, "leases of {}", m.name);
        prop_assert_eq!(m.state, embed_pool::ModelState::Ready);
        prop_assert_eq!(m.pinned, reference.pinned[k]);
    }
    prop_assert_eq!(status.leases, held.len());
    for (m, lease) in held {
        prop_assert!(lease.is_ready(), "leased model m{} was released under its lease", m);
    }
    let stats = pool.stats();
    prop_assert_eq!(stats.hits, reference.hits);
    prop_assert_eq!(stats.misses, reference.misses);
    prop_assert_eq!(stats.loads, reference.misses);
    prop_assert_eq!(stats.evictions.capacity, reference.capacity_evictions);
    prop_assert_eq!(stats.evictions.ttl, reference.ttl_evictions);
    prop_assert_eq!(stats.evictions.explicit, reference.explicit_evictions);
    prop_assert_eq!(stats.load_failures, 0);
    // Evictions are complete when the call that caused them returns: the process holds
    // exactly the models the pool holds.
    prop_assert_eq!(live_models(), reference.loaded.len());
    Ok(())
}

async fn run_case(
    models: &TinyModels,
    max: usize,
    pin_first: bool,
    ops: &[Op],
) -> Result<(), TestCaseError> {
    let mut pinned = [false; MODELS];
    pinned[0] = pin_first;
    let registry = models.registry().with_settings(
        TinyModels::name(0),
        models.spec(0),
        ModelSettings::default().with_pinned(pin_first),
    );
    let config = PoolConfig::default()
        .with_max_models(max)
        .with_timeouts(PoolTimeouts { wait: WAIT, ..PoolTimeouts::default() })
        .with_default_ttl(Some(TTL))
        .with_maintenance_interval(None);
    let pool = Pool::new(config, registry);
    let mut reference = Reference {
        max,
        pinned,
        clock: 0,
        now: Duration::ZERO,
        loaded: BTreeMap::new(),
        hits: 0,
        misses: 0,
        capacity_evictions: 0,
        ttl_evictions: 0,
        explicit_evictions: 0,
    };
    let mut held: Vec<(usize, Lease)> = Vec::new();

    for op in ops {
        match *op {
            Op::Get(m) => {
                let expected = reference.get(m);
                let got = pool.get(&TinyModels::name(m)).await;
                match (&expected, got) {
                    (Expect::Ok, Ok(lease)) => held.push((m, lease)),
                    (Expect::Exhausted, Err(PoolError::Exhausted { .. })) => {}
                    (e, g) => prop_assert!(false, "{:?}: expected {:?}, got {:?}", op, e, g.map(|_| ())),
                }
            }
            Op::Preload(m) => {
                // In the reference, a preload is a get whose lease is returned at once.
                let expected = reference.get(m);
                let got = pool.preload(&TinyModels::name(m)).await;
                match (&expected, got) {
                    (Expect::Ok, Ok(())) => reference.release(m),
                    (Expect::Exhausted, Err(PoolError::Exhausted { .. })) => {}
                    (e, g) => prop_assert!(false, "{:?}: expected {:?}, got {:?}", op, e, g),
                }
            }
            Op::Drop(i) => {
                if !held.is_empty() {
                    let (m, lease) = held.remove(i % held.len());
                    drop(lease);
                    reference.release(m);
                }
            }
            Op::Unload(m) => {
                let got = pool.unload(&TinyModels::name(m), UnloadMode::FailIfLeased).await;
                match reference.loaded.get(&m).map(|e| e.leases) {
                    None => prop_assert!(matches!(got, Ok(None)), "{:?}: {:?}", op, got),
                    Some(0) => {
                        prop_assert!(matches!(got, Ok(Some(_))), "{:?}: {:?}", op, got);
                        reference.loaded.remove(&m);
                        reference.explicit_evictions += 1;
                    }
                    Some(n) => prop_assert!(
                        matches!(got, Err(PoolError::Leased { leases, .. }) if leases == n),
                        "{:?}: {:?}",
                        op,
                        got
                    ),
                }
            }
            Op::Tick(secs) => {
                tokio::time::advance(Duration::from_secs(secs)).await;
                reference.now += Duration::from_secs(secs);
                let mut expired = pool.evict_expired().await;
                expired.sort();
                let expected: Vec<String> = reference.expired().into_iter().map(TinyModels::name).collect();
                prop_assert_eq!(expired, expected, "TTL evictions differ");
            }
        }
        check(&pool, &reference, &held)?;
    }

    held.clear();
    let report = pool.close().await;
    prop_assert_eq!(report.models_left, 0);
    prop_assert_eq!(report.forced_leases, 0);
    prop_assert!(pool.status().models.is_empty());
    prop_assert_eq!(live_models(), 0, "models left after close");
    Ok(())
}

#[test]
fn pool_behaves_like_the_reference_model() {
    let _gate = embed_testkit::module_gate(module_path!());
    let _s = embed_testkit::serial_blocking();
    let models = TinyModels::new(MODELS);
    let mut runner = TestRunner::new(Config { cases: 32, failure_persistence: None, ..Config::default() });
    let strategy = (1usize..=3, any::<bool>(), proptest::collection::vec(op(), 1..40));
    runner
        .run(&strategy, |(max, pin_first, ops)| {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().start_paused(true).build().unwrap();
            rt.block_on(run_case(&models, max, pin_first, &ops))
        })
        .unwrap();
}
