//! What this machine's matrix multiply gives in bf16 against f32: one linear layer of the shape
//! BERT-base's feed-forward runs (2048 × 768 → 3072), through the same libtorch call the models
//! make, at the thread count asked for. Used by `cargo xtask bench` to print the machine's
//! ratio next to the model's, so a bf16 speed-up explains itself on any CPU.
//!
//! `linear_ratio [THREADS]` prints one JSON line: GFLOP/s in f32 and bf16 (medians of 15 timed
//! runs after 3 warm-up runs) and their ratio.

use std::time::Instant;

use tch::{Device, Kind, Tensor};

fn gflops(kind: Kind) -> f64 {
    let (m, k, n) = (2048i64, 768i64, 3072i64);
    let _no_grad = tch::no_grad_guard();
    let x = Tensor::randn([m, k], (Kind::Float, Device::Cpu)).to_kind(kind);
    let w = Tensor::randn([n, k], (Kind::Float, Device::Cpu)).to_kind(kind);
    let b = Tensor::randn([n], (Kind::Float, Device::Cpu)).to_kind(kind);
    for _ in 0..3 {
        let _ = x.linear(&w, Some(&b));
    }
    let mut times: Vec<f64> = (0..15)
        .map(|_| {
            let t = Instant::now();
            let y = x.linear(&w, Some(&b));
            let s = t.elapsed().as_secs_f64();
            drop(y);
            s
        })
        .collect();
    times.sort_by(f64::total_cmp);
    2.0 * (m * k * n) as f64 / times[times.len() / 2] / 1e9
}

fn main() {
    if let Some(n) = std::env::args().nth(1).and_then(|s| s.parse::<i32>().ok()) {
        tch::set_num_threads(n);
    }
    let f32 = gflops(Kind::Float);
    let bf16 = gflops(Kind::BFloat16);
    println!(
        "{{\"threads\":{},\"f32_gflops\":{f32:.1},\"bf16_gflops\":{bf16:.1},\"ratio\":{:.3}}}",
        tch::get_num_threads(),
        bf16 / f32
    );
}
