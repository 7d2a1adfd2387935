//! Every family against sentence-transformers with the CPU's attention in length groups
//! (`EMBED_CPU_ATTENTION=grouped`): padded SDPA with each run of similar lengths at its own
//! length, the path every encoder took before the variable-length kernel and still takes when
//! it is switched off. Its own test binary, because the mode is read once per process.

mod family_parity;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_family_matches_sentence_transformers_in_length_groups() {
    // The only test of this process, and nothing has read the variable yet.
    std::env::set_var("EMBED_CPU_ATTENTION", "grouped");
    family_parity::every_family_matches_sentence_transformers().await;
}
