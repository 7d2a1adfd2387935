//! int8's calibration at load: one f32 forward pass over a fixed set of short, varied texts
//! records each linear layer's inputs (largest value per channel, and a sample of rows), on
//! which the layer's smoothing and Hadamard transform are chosen (see
//! `nn::onednn::Int8Weight::quantize`); then the model is quantized.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::oneshot;

use super::batch;
use super::job::{Job, Output, RowFinish, WorkerConfig};
use crate::model_dir::Pooling;
use crate::nn::observe_inputs;
use crate::models::Model;
use crate::text::TextPrep;
use crate::{EmbedOptions, Error, Priority, ResolvedDevice, Result};

/// Texts of many kinds (questions, prose, code, logs, numbers, other scripts; short and
/// passage-length): what sets the activations' per-channel ranges is the model's own outlier
/// channels, which any text shows, more than the topic. Fixed, so a model quantizes the same
/// way on every load. None of them is among the texts the tests and benches measure int8 on
/// (`testdata/minilm-l6-v2.json`, `testdata/all-mpnet-base-v2.json`, `testdata/corpus.txt`).
const CALIBRATION_TEXTS: &[&str] = &[
    "How do I reset my password?",
    "The weather today is sunny with a light breeze from the west.",
    "Stock prices rose sharply after the quarterly earnings report beat expectations.",
    "The cat sat on the mat.",
    "Quantum computers use qubits, which can hold a superposition of states.",
    "She has played the violin in the city orchestra for twenty years.",
    "What time does the last train to Berlin leave on Sundays?",
    "Add two cups of flour and stir gently until the batter is smooth.",
    "The patient was given antibiotics for a bacterial infection.",
    "ERROR 2024-03-01T12:00:03Z connection refused on port 8080 (retry 3/5)",
    "I love this product, it works great and arrived a day early!",
    "The treaty was signed in 1648, ending thirty years of war in Europe.",
    "def add(a, b):\n    return a + b",
    "Photosynthesis converts light energy into chemical energy stored in glucose.",
    "Le chat dort sur la table de la cuisine.",
    "Der Zug nach München hat heute zwanzig Minuten Verspätung.",
    "東京は日本の首都です。",
    "The committee will meet again next Tuesday to vote on the budget.",
    "Total: 3 items, $42.50 including tax; order #58213.",
    "Can a neural network approximate any continuous function?",
    "Rivers carry sediment from the mountains down to the sea.",
    "A minimal Rust program prints hello world with println!.",
    "Why is the sky blue during the day but red at sunset?",
    "Please find attached the signed contract and the invoice for March.",
    // Passages of a few hundred tokens, as retrieval chunks are: long inputs grow activations
    // that short ones never show.
    "The city council met on Thursday evening to discuss the new transit plan. Residents had \
     raised concerns about the cost of the project, the noise during construction, and the loss \
     of parking along the main street. The planning office presented three options: a light rail \
     line along the river, an expanded bus network with dedicated lanes, and a mixed approach that \
     would begin with buses and reserve land for rail later. Each option was compared on cost, \
     travel time, emissions and the number of households within walking distance of a stop. \
     After two hours of public comment the council voted to study the mixed approach in more \
     detail, and asked for a report on financing, including federal grants, a local sales tax \
     and fares, before the end of the year.",
    "To install the package, download the archive for your platform and unpack it into a \
     directory on your path. The first run creates a configuration file in your home directory; \
     edit it to set the data directory, the number of worker threads and the log level. If the \
     service fails to start, check that the port is free and that the user has permission to \
     write to the data directory. Logs are written to standard error by default and can be sent \
     to a file with the --log-file option. Upgrades keep the configuration but may migrate the \
     data directory; back it up first. For production use, run the service under a supervisor \
     that restarts it on failure, and monitor the health endpoint, which reports the version, the \
     uptime and the state of each background task.",
    "Mitochondria are membrane-bound organelles found in most eukaryotic cells. They generate \
     most of the cell's supply of adenosine triphosphate, which is used as a source of chemical \
     energy, through oxidative phosphorylation. Mitochondria have their own small genome, \
     inherited in most species from the mother only, and they divide independently of the cell. \
     Their number varies widely by tissue: muscle and liver cells may contain thousands, while \
     mature red blood cells contain none. Defects in mitochondrial function are linked to a range \
     of diseases, and the organelles also take part in signalling, in the regulation of the cell \
     cycle and in programmed cell death.",
];

/// Calibrates `model` (loaded in f32 on the CPU) on `texts` (or [`CALIBRATION_TEXTS`]) and
/// quantizes it to int8 for batches of about `rows` token rows.
pub(crate) fn quantize_int8(model: &mut Model, text: &TextPrep, pooling: Pooling, rows: i64, texts: Option<&[String]>) -> Result<()> {
    let texts: Vec<String> = match texts {
        Some(t) => t.to_vec(),
        None => CALIBRATION_TEXTS.iter().map(|t| t.to_string()).collect(),
    };
    let count = texts.len();
    let prepared = text.prepare(&texts, &EmbedOptions::default().with_truncate(true))?;
    let (tx, mut rx) = oneshot::channel();
    let job = Job {
        seqs: prepared.into_iter().map(|p| p.seq).collect(),
        output: Output::Head,
        finish: RowFinish::default(),
        priority: Priority::Bulk,
        arrived: Instant::now(),
        reply: tx,
        first_batch: Default::default(),
    };
    let cfg = WorkerConfig {
        model_name: String::new(),
        device: ResolvedDevice::Cpu,
        pooling,
        max_batch_tokens: rows.max(1) as usize,
        max_batch_size: count.max(1),
        faults: Default::default(),
        stats: Arc::default(),
        priorities: false,
        bulk_batch: Duration::ZERO,
        threads: 1,
        preempt: false,
    };
    cfg.stats.enqueued(job.priority);
    let ((), seen) = observe_inputs(|| batch::process(model, vec![job], &cfg));
    match rx.try_recv() {
        Ok(Ok(_)) => {}
        Ok(Err(e)) => return Err(e),
        Err(_) => return Err(Error::Inference { model: String::new(), message: "int8 calibration pass returned nothing".into() }),
    }
    model.quantize_int8(rows, &seen)
}
