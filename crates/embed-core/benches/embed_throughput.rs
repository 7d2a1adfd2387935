//! Throughput of `embed_texts` on all-MiniLM-L6-v2 (CPU) over the committed real-text corpus.
//! `cargo xtask bench` runs this next to sentence-transformers; this bench alone reports the
//! Rust side (texts/s via criterion's throughput, tokens/s printed once).

#![allow(missing_docs)] // criterion_group! generates undocumented items

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use embed_core::{DType, DenseEmbeddingService, EmbedOptions, EmbeddingService, ModelOptions, ModelSpec};

fn corpus(n: usize) -> Vec<String> {
    let text = std::fs::read_to_string(embed_testkit::workspace_root().join("testdata/corpus.txt"))
        .expect("testdata/corpus.txt");
    text.lines().filter(|l| !l.trim().is_empty()).take(n).map(str::to_string).collect()
}

fn bench(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
    let texts = corpus(256);
    let mut group = c.benchmark_group("embed_texts_minilm_cpu");
    group.sample_size(10);
    group.throughput(Throughput::Elements(texts.len() as u64));
    for dtype in [DType::F32, DType::Bf16] {
        let spec = ModelSpec::new(embed_testkit::minilm_dir().to_string_lossy())
            .with_options(ModelOptions::default().with_dtype(dtype));
        let svc = rt.block_on(DenseEmbeddingService::from_spec(spec)).expect("load MiniLM");
        let tokens = rt.block_on(svc.embed_texts(&texts, &EmbedOptions::default())).unwrap().total_tokens();
        eprintln!("{dtype}: {} texts, {tokens} tokens per iteration", texts.len());
        group.bench_function(dtype.to_string(), |b| {
            b.iter(|| rt.block_on(svc.embed_texts(&texts, &EmbedOptions::default())).unwrap())
        });
        rt.block_on(svc.cleanup()).unwrap();
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
