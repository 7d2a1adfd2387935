//! The load: what the clients send (a seeded mix of `/embed`, `/v1/embeddings` and `/tokenize`),
//! how they check each answer (a 200 with the wrong body counts as a failure) and the client
//! loop that records one `Sample` per request. Request ids (`PHASE-CLIENT-SEQ`) are made here and
//! read back from nginx's access log, so the phase a request belongs to is known on both sides.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use super::process::INTERRUPTED;
use super::PHASES;

#[derive(Debug, Clone, Copy, PartialEq)]
enum Kind {
    Embed,
    OpenAi,
    Tokenize,
}

impl Kind {
    fn path(self) -> &'static str {
        match self {
            Kind::Embed => "/embed",
            Kind::OpenAi => "/v1/embeddings",
            Kind::Tokenize => "/tokenize",
        }
    }
}

const WORDS: &[&str] = &[
    "the", "quick", "brown", "fox", "jumps", "over", "lazy", "dog", "embedding", "server", "rolling", "update", "balancer",
    "replica", "vector", "search", "hello", "world", "query", "document", "nginx", "cluster", "signal", "restart",
];

/// xorshift64*: reproducible per client, no dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// A request of the mix: half `/embed` with 1–8 texts, 30 % `/v1/embeddings` with 1–8, 20 %
/// `/tokenize` with 1–4. Returns the kind, the body and the number of inputs.
fn next_request(rng: &mut Rng) -> (Kind, String, usize) {
    let kind = match rng.below(10) {
        0..=4 => Kind::Embed,
        5..=7 => Kind::OpenAi,
        _ => Kind::Tokenize,
    };
    let n = 1 + rng.below(if kind == Kind::Tokenize { 4 } else { 8 }) as usize;
    let texts: Vec<String> = (0..n)
        .map(|_| (0..1 + rng.below(12)).map(|_| WORDS[rng.below(WORDS.len() as u64) as usize]).collect::<Vec<_>>().join(" "))
        .collect();
    let body = match kind {
        Kind::Embed | Kind::Tokenize => serde_json::json!({ "inputs": texts }),
        Kind::OpenAi => serde_json::json!({ "input": texts, "model": "bert" }),
    };
    (kind, body.to_string(), n)
}

/// `v` as a non-empty vector of finite numbers; returns its length.
fn vector_len(v: &serde_json::Value) -> Result<usize, String> {
    let a = v.as_array().ok_or("a vector is not an array")?;
    if a.is_empty() || !a.iter().all(|x| x.as_f64().is_some_and(f64::is_finite)) {
        return Err("a vector is empty or holds something other than finite numbers".into());
    }
    Ok(a.len())
}

/// Checks that `body` answers a `kind` request with `n` inputs.
fn check_body(kind: Kind, n: usize, body: &str) -> Result<(), String> {
    let v: serde_json::Value = serde_json::from_str(body).map_err(|e| format!("body is not JSON ({e})"))?;
    let same_dims = |lens: Vec<usize>| if lens.windows(2).all(|w| w[0] == w[1]) { Ok(()) } else { Err(format!("vectors of different lengths {lens:?}")) };
    match kind {
        Kind::Embed => {
            let rows = v.as_array().ok_or("not an array")?;
            if rows.len() != n {
                return Err(format!("{} vectors for {n} inputs", rows.len()));
            }
            same_dims(rows.iter().map(vector_len).collect::<Result<_, _>>()?)
        }
        Kind::OpenAi => {
            let data = v["data"].as_array().ok_or("no data array")?;
            if v["object"] != "list" || data.len() != n {
                return Err(format!("object {} with {} items for {n} inputs", v["object"], data.len()));
            }
            for (i, d) in data.iter().enumerate() {
                if d["index"].as_u64() != Some(i as u64) {
                    return Err(format!("item {i} has index {}", d["index"]));
                }
            }
            same_dims(data.iter().map(|d| vector_len(&d["embedding"])).collect::<Result<_, _>>()?)
        }
        Kind::Tokenize => {
            let rows = v.as_array().ok_or("not an array")?;
            if rows.len() != n {
                return Err(format!("{} token lists for {n} inputs", rows.len()));
            }
            for r in rows {
                let toks = r.as_array().filter(|t| !t.is_empty()).ok_or("an empty or missing token list")?;
                if !toks.iter().all(|t| t["id"].is_u64() && t["text"].is_string()) {
                    return Err("a token without id or text".into());
                }
            }
            Ok(())
        }
    }
}

/// One client request as the client saw it.
pub(super) struct Sample {
    pub(super) phase: usize,
    pub(super) latency: Duration,
    /// Seconds since the run started, when the request was sent.
    pub(super) at: f64,
    pub(super) id: String,
    pub(super) error: Option<String>,
}

/// What the controller and the clients share.
pub(super) struct Traffic {
    pub(super) phase: AtomicUsize,
    pub(super) stop: AtomicBool,
    pub(super) started: Instant,
}

/// Sets `stop` when dropped, so the clients end even when the controller fails or panics.
#[must_use = "the clients stop when this guard is dropped"]
pub(super) struct StopOnDrop<'a>(pub(super) &'a AtomicBool);

impl Drop for StopOnDrop<'_> {
    fn drop(&mut self) {
        self.0.store(true, Ordering::SeqCst);
    }
}

/// The start of a body on one line (nginx's error pages are HTML over several).
fn excerpt(s: &str) -> String {
    let s = s.split_whitespace().collect::<Vec<_>>().join(" ");
    match s.char_indices().nth(160) {
        Some((i, _)) => format!("{}…", &s[..i]),
        None => s,
    }
}

pub(super) fn client(index: usize, base: &str, traffic: &Traffic) -> Vec<Sample> {
    let agent = ureq::AgentBuilder::new().timeout(Duration::from_secs(30)).max_idle_connections_per_host(1).build();
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15u64.wrapping_mul(index as u64 + 1) | 1);
    let mut samples = Vec::new();
    let mut seq = 0u64;
    while !traffic.stop.load(Ordering::SeqCst) && !INTERRUPTED.load(Ordering::SeqCst) {
        let phase = traffic.phase.load(Ordering::SeqCst);
        let (kind, body, n) = next_request(&mut rng);
        seq += 1;
        let id = format!("{phase}-{index}-{seq}");
        let sent = Instant::now();
        let result = agent.post(&format!("{base}{}", kind.path())).set("Content-Type", "application/json").set("X-Request-Id", &id).send_string(&body);
        let outcome = match result {
            Ok(resp) => match resp.into_string() {
                Ok(text) => check_body(kind, n, &text).map_err(|e| format!("{} 200 but {e}: {}", kind.path(), excerpt(&text))),
                Err(e) => Err(format!("{} 200 but reading the body failed: {e}", kind.path())),
            },
            Err(ureq::Error::Status(code, resp)) => Err(format!("{} HTTP {code}: {}", kind.path(), excerpt(&resp.into_string().unwrap_or_default()))),
            Err(ureq::Error::Transport(t)) => Err(format!("{} transport error: {t}", kind.path())),
        };
        samples.push(Sample { phase, latency: sent.elapsed(), at: (sent - traffic.started).as_secs_f64(), id, error: outcome.err() });
    }
    samples
}

/// The phase a request id (`PHASE-CLIENT-SEQ`) was sent in.
pub(super) fn phase_of(request_id: &str) -> Option<usize> {
    request_id.split('-').next()?.parse().ok().filter(|p| *p < PHASES.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_request_mix_is_well_formed_and_checked() {
        let mut rng = Rng(42);
        let mut seen = [0usize; 3];
        for _ in 0..300 {
            let (kind, body, n) = next_request(&mut rng);
            seen[kind as usize] += 1;
            let v: serde_json::Value = serde_json::from_str(&body).unwrap();
            let inputs = if kind == Kind::OpenAi { &v["input"] } else { &v["inputs"] };
            assert_eq!(inputs.as_array().unwrap().len(), n);
            assert!((1..=8).contains(&n));
        }
        assert!(seen.iter().all(|&c| c > 30), "every kind is sent: {seen:?}");
        assert_eq!(phase_of("2-15-300"), Some(2));
        assert_eq!(phase_of("9-1-1"), None);

        assert!(check_body(Kind::Embed, 2, "[[0.1,0.2],[0.3,0.4]]").is_ok());
        assert!(check_body(Kind::Embed, 2, "[[0.1,0.2]]").is_err());
        assert!(check_body(Kind::Embed, 2, "[[0.1,0.2],[0.3]]").is_err());
        assert!(check_body(Kind::Embed, 1, "[[]]").is_err());
        assert!(check_body(Kind::Embed, 1, "{\"error\":\"x\"}").is_err());
        let oa = r#"{"object":"list","data":[{"object":"embedding","index":0,"embedding":[0.1,0.2]},{"object":"embedding","index":1,"embedding":[0.3,0.4]}],"model":"bert"}"#;
        assert!(check_body(Kind::OpenAi, 2, oa).is_ok());
        assert!(check_body(Kind::OpenAi, 3, oa).is_err());
        assert!(check_body(Kind::OpenAi, 2, &oa.replace("\"index\":1", "\"index\":0")).is_err());
        assert!(check_body(Kind::Tokenize, 1, r#"[[{"id":2,"text":"[CLS]"},{"id":3,"text":"[SEP]"}]]"#).is_ok());
        assert!(check_body(Kind::Tokenize, 1, "[[]]").is_err());
        assert!(check_body(Kind::Tokenize, 1, "not json").is_err());
        assert_eq!(excerpt("<html>\n<head><title>502 Bad Gateway</title></head>\n"), "<html> <head><title>502 Bad Gateway</title></head>");
    }
}
