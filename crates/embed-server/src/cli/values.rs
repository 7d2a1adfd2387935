//! Values the flags and the file share a syntax for: precisions, byte sizes, host budgets and
//! pressure thresholds.

use anyhow::{bail, Context, Result};
use embed_core::DType;
use embed_pool::{HostBudget, Pressure};

/// A `--dtype` / `dtype =` value: `auto` (or nothing) leaves the choice to the model's family
/// and device (`DType::preferred`), anything else must name a precision.
pub(super) fn parse_dtype(s: &str) -> Result<Option<DType>> {
    if s.trim().eq_ignore_ascii_case("auto") {
        return Ok(None);
    }
    Ok(Some(s.parse()?))
}

pub(super) fn parse_bytes(s: &str) -> Result<u64> {
    let s = s.trim();
    let (num, mul) = match s.char_indices().find(|(_, c)| c.is_ascii_alphabetic()) {
        Some((i, _)) => {
            let mul = match s[i..].to_ascii_uppercase().trim_end_matches("IB").trim_end_matches('B') {
                "" => 1,
                "K" => 1 << 10,
                "M" => 1 << 20,
                "G" => 1 << 30,
                "T" => 1u64 << 40,
                other => bail!("memory budget {s:?}: unknown unit {other:?}"),
            };
            (&s[..i], mul)
        }
        None => (s, 1),
    };
    let n: f64 = num.trim().parse().with_context(|| format!("memory budget {s:?} is not a number"))?;
    Ok((n * mul as f64) as u64)
}

/// A host budget: bytes (`8G`) or a percentage of the RAM (`25%`).
pub(super) fn parse_host_budget(s: &str) -> Result<HostBudget> {
    match s.trim().strip_suffix('%') {
        Some(p) => {
            let p: f64 = p.trim().parse().with_context(|| format!("host budget {s:?} is not a percentage"))?;
            if !(0.0..=100.0).contains(&p) {
                bail!("host budget {s:?}: a percentage of the RAM must be between 0 and 100");
            }
            Ok(HostBudget::FractionOfRam(p / 100.0))
        }
        None => Ok(HostBudget::Bytes(parse_bytes(s)?)),
    }
}

/// `MODERATE,HIGH,CRITICAL` fractions, increasing, each in (0, 1].
pub(super) fn parse_thresholds(s: &str, base: Pressure) -> Result<Pressure> {
    let parts: Vec<f64> = s
        .split(',')
        .map(|p| p.trim().parse::<f64>().with_context(|| format!("pressure thresholds {s:?}: {p:?} is not a number")))
        .collect::<Result<_>>()?;
    let [moderate, high, critical] = parts[..] else { bail!("pressure thresholds {s:?}: expected MODERATE,HIGH,CRITICAL") };
    if !(0.0 < moderate && moderate < high && high < critical && critical <= 1.0) {
        bail!("pressure thresholds {s:?}: need 0 < moderate < high < critical <= 1");
    }
    Ok(Pressure { moderate, high, critical, ..base })
}
