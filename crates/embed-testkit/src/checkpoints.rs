//! Model directories laid out as the Hub ships larger models: a fixture copied and its
//! `model.safetensors` split into shards with a `model.safetensors.index.json`, as transformers'
//! `save_pretrained(max_shard_size=…)` writes them.

use std::path::{Path, PathBuf};

use tch::Tensor;

/// Copies model directory `src` (files and sub-folders) into `dst`, which must exist.
pub fn copy_model_dir(src: &Path, dst: &Path) {
    for entry in std::fs::read_dir(src).unwrap_or_else(|e| panic!("{}: {e}", src.display())) {
        let entry = entry.expect("directory entry");
        let to = dst.join(entry.file_name());
        if entry.file_type().expect("file type").is_dir() {
            std::fs::create_dir_all(&to).expect("create sub-folder");
            copy_model_dir(&entry.path(), &to);
        } else {
            std::fs::copy(entry.path(), &to).unwrap_or_else(|e| panic!("copy {}: {e}", entry.path().display()));
        }
    }
}

/// Splits `dir/model.safetensors` into `shards` files `model-0000i-of-0000n.safetensors` of about
/// equal bytes (tensors in name order, as transformers fills shards), writes
/// `model.safetensors.index.json` (`metadata.total_size` and the `weight_map`) and removes the
/// single file. Returns the shard paths in order.
///
/// # Panics
/// When the file cannot be read or written, or has fewer tensors than `shards`.
pub fn shard_checkpoint(dir: &Path, shards: usize) -> Vec<PathBuf> {
    let single = dir.join("model.safetensors");
    let mut tensors = Tensor::read_safetensors(&single).unwrap_or_else(|e| panic!("{}: {e}", single.display()));
    tensors.sort_by(|a, b| a.0.cmp(&b.0));
    assert!(shards >= 1 && tensors.len() >= shards, "{} tensors cannot fill {shards} shards", tensors.len());
    let bytes = |t: &Tensor| (t.numel() * t.kind().elt_size_in_bytes()) as u64;
    let total: u64 = tensors.iter().map(|(_, t)| bytes(t)).sum();
    let mut groups: Vec<Vec<(String, Tensor)>> = (0..shards).map(|_| Vec::new()).collect();
    let (mut filled, mut g) = (0u64, 0usize);
    let count = tensors.len();
    for (i, (name, t)) in tensors.into_iter().enumerate() {
        // Move on once this shard has its share, keeping at least one tensor for each later one.
        if g + 1 < shards && !groups[g].is_empty() && (filled >= total * (g as u64 + 1) / shards as u64 || count - i == shards - g - 1) {
            g += 1;
        }
        filled += bytes(&t);
        groups[g].push((name, t));
    }
    let mut weight_map = serde_json::Map::new();
    let mut paths = Vec::new();
    for (i, group) in groups.iter().enumerate() {
        assert!(!group.is_empty(), "shard {i} got no tensor");
        let file = format!("model-{:05}-of-{:05}.safetensors", i + 1, shards);
        for (name, _) in group {
            weight_map.insert(name.clone(), serde_json::Value::from(file.clone()));
        }
        let path = dir.join(&file);
        Tensor::write_safetensors(group, &path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        paths.push(path);
    }
    let index = serde_json::json!({"metadata": {"total_size": total}, "weight_map": weight_map});
    std::fs::write(dir.join("model.safetensors.index.json"), serde_json::to_string_pretty(&index).expect("JSON")).expect("write index");
    std::fs::remove_file(&single).expect("remove the single file");
    paths
}

/// A temporary copy of fixture `name` (see [`crate::fixture_dir`]) with its weights split into
/// `shards` shards.
pub fn sharded_fixture(name: &str, shards: usize) -> tempfile::TempDir {
    let tmp = tempfile::tempdir().expect("temporary directory");
    copy_model_dir(&crate::fixture_dir(name), tmp.path());
    shard_checkpoint(tmp.path(), shards);
    tmp
}

/// The files `python/make_fixtures.py --torch-pickles` writes under `testdata/fixtures/torch-pickle/`.
pub fn torch_pickle_dir() -> PathBuf {
    crate::workspace_root().join("testdata/fixtures/torch-pickle")
}

/// A temporary copy of the distilbert fixture whose weights (the encoder's and its Dense
/// module's) are `pytorch_model.bin` files written by `torch.save`, in place of its safetensors.
pub fn torch_pickle_fixture() -> tempfile::TempDir {
    let tmp = tempfile::tempdir().expect("temporary directory");
    copy_model_dir(&crate::fixture_dir("distilbert"), tmp.path());
    let bins = torch_pickle_dir().join("distilbert");
    for sub in ["", "2_Dense"] {
        let (dst, src) = (tmp.path().join(sub), bins.join(sub));
        std::fs::remove_file(dst.join("model.safetensors")).expect("remove the safetensors twin");
        std::fs::copy(src.join("pytorch_model.bin"), dst.join("pytorch_model.bin")).unwrap_or_else(|e| panic!("{}: {e}", src.display()));
    }
    tmp
}
