//! What a run found, per phase: the clients' counts and latency percentiles beside what nginx's
//! logs say (retries, failed upstream attempts and why, which replica answered), printed as a
//! table and written as JSON. Pure functions of the collected figures, so they run after every
//! process has stopped.

use std::collections::BTreeMap;
use std::path::Path;

use super::nginx::NginxPhase;
use super::traffic::Sample;
use super::{Options, Timeline, PHASES};

/// Nearest-rank percentile of sorted values; `None` when there are none.
fn percentile(sorted: &[f64], p: f64) -> Option<f64> {
    if sorted.is_empty() {
        return None;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    Some(sorted[rank.clamp(1, sorted.len()) - 1])
}

/// One phase's figures, clients' and nginx's.
pub(super) struct PhaseReport {
    pub(super) name: &'static str,
    secs: f64,
    pub(super) sent: usize,
    pub(super) failed: usize,
    p50_ms: Option<f64>,
    p99_ms: Option<f64>,
    max_ms: Option<f64>,
    nginx: NginxPhase,
    first_failures: Vec<String>,
}

#[cfg(test)]
impl PhaseReport {
    /// A phase with these client counts and nothing else, for verdict tests.
    pub(super) fn fake(name: &'static str, sent: usize, failed: usize) -> Self {
        PhaseReport { name, secs: 1.0, sent, failed, p50_ms: None, p99_ms: None, max_ms: None, nginx: NginxPhase::default(), first_failures: Vec::new() }
    }
}

pub(super) fn report_phases(samples: &[Sample], nginx: Vec<NginxPhase>, bounds: &[(f64, f64)]) -> Vec<PhaseReport> {
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

pub(super) fn print_table(reports: &[PhaseReport], opts: &Options) {
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

pub(super) fn json_report(opts: &Options, reports: &[PhaseReport], tl: &Timeline, passed: bool, wall_s: f64, logs: &Path) -> serde_json::Value {
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

#[cfg(test)]
mod tests {
    use super::*;

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
}
