//! A checkpoint's tensors by name: one `model.safetensors`, or the shards that a
//! `model.safetensors.index.json` names (as the Hub publishes models past a few GB).
//!
//! Every file is memory-mapped and only its header is parsed up front. A tensor's bytes are copied
//! out when a family takes it, converted to the model's device and dtype, and the mapped pages
//! are handed back to the kernel, so host memory while loading stays near the model's own size
//! (on CUDA, near one tensor) instead of the whole checkpoint plus the model.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use memmap2::{Mmap, UncheckedAdvice};
use safetensors::{Dtype, SafeTensors};
use tch::{Device, Kind, Tensor};

use super::{LayerNorm, Linear, RmsNorm};
use crate::model_dir::checkpoint::{invalid, is_torch_pickle, read_index, ShardIndex};
use crate::{Error, Result};


/// A stored tensor's size, for estimates.
pub(crate) struct StoredShape {
    /// Whether it holds floating-point values.
    pub(crate) float: bool,
    /// Bytes per element as stored.
    pub(crate) width: u64,
    pub(crate) shape: Vec<u64>,
}

/// The dtype and shape of every tensor in torch pickle `path` (no tensor data is read).
pub(crate) fn torch_pickle_shapes(path: &Path) -> Result<Vec<StoredShape>> {
    let shard = Shard::open(path.to_path_buf(), None)?;
    let tensors = super::torch_pickle::read_state_dict(path, &shard.map)?;
    Ok(tensors
        .into_iter()
        .map(|(_, t)| StoredShape {
            float: matches!(t.kind, Kind::Float | Kind::Double | Kind::Half | Kind::BFloat16),
            width: t.kind.elt_size_in_bytes() as u64,
            shape: t.shape.iter().map(|&d| d as u64).collect(),
        })
        .collect())
}

/// One mapped file.
struct Shard {
    path: PathBuf,
    map: Mmap,
}

impl Shard {
    fn open(path: PathBuf, named_by: Option<&Path>) -> Result<Shard> {
        let file = std::fs::File::open(&path).map_err(|e| match (e.kind(), named_by) {
            (std::io::ErrorKind::NotFound, Some(index)) => Error::MissingFile {
                path: path.clone(),
                hint: format!(" (a shard named by {})", index.file_name().unwrap_or_default().to_string_lossy()),
            },
            _ => Error::io(&path, e),
        })?;
        // SAFETY: the map is read-only and private to this loader; a file changed underneath
        // while loading gives wrong weights (as any reader would), not unsoundness in our code,
        // since every byte is copied out before use and never handed out by reference.
        let map = unsafe { Mmap::map(&file) }.map_err(|e| Error::io(&path, e))?;
        Ok(Shard { path, map })
    }

    /// Drops the pages of `range` from this process (they are read again from the file if
    /// touched). Best effort: failure only costs memory.
    fn release(&self, start: usize, end: usize) {
        // SAFETY: the map is a read-only file mapping; after MADV_DONTNEED a later read faults
        // the same bytes back in from the file, so no reference into the map sees changed data.
        let _ = unsafe { self.map.unchecked_advise_range(UncheckedAdvice::DontNeed, start, end - start) };
    }
}

/// Where one tensor's bytes are.
struct Entry {
    shard: usize,
    /// The stored dtype, or the name of one libtorch cannot hold.
    kind: std::result::Result<Kind, String>,
    shape: Vec<i64>,
    /// Element strides over the byte range, for a torch pickle's views (a transposed or sliced
    /// tensor); `None` for safetensors' contiguous tensors.
    stride: Option<Vec<i64>>,
    /// Byte range in the shard's map.
    start: usize,
    end: usize,
}

/// Every tensor of a checkpoint (single file or shards), by name, not yet read.
pub(crate) struct Checkpoint {
    shards: Vec<Shard>,
    entries: HashMap<String, Entry>,
}

impl Checkpoint {
    /// Opens `path`: a safetensors file, a torch pickle (`pytorch_model.bin`, by its extension),
    /// or a sharded index (by its `.index.json` name). Checks
    /// every header, that no tensor is in two files, and that the index and the shards agree.
    pub(crate) fn open(path: &Path) -> Result<Checkpoint> {
        let is_index = path.file_name().is_some_and(|f| f.to_string_lossy().ends_with(".index.json"));
        if !is_index {
            let mut ck = Checkpoint { shards: Vec::new(), entries: HashMap::new() };
            ck.add(Shard::open(path.to_path_buf(), None)?)?;
            return Ok(ck);
        }
        let ShardIndex { files, weight_map: names, .. } = read_index(path)?;
        let dir = path.parent().unwrap_or(Path::new("."));
        let mut ck = Checkpoint { shards: Vec::with_capacity(files.len()), entries: HashMap::new() };
        for f in &files {
            ck.add(Shard::open(dir.join(f), Some(path))?)?;
        }
        for (tensor, file) in &names {
            match ck.entries.get(tensor) {
                Some(e) if ck.shards[e.shard].path.file_name() == Some(std::ffi::OsStr::new(file)) => {}
                Some(e) => {
                    let held = ck.shards[e.shard].path.file_name().unwrap_or_default().to_string_lossy().into_owned();
                    return Err(invalid(path, format!("tensor {tensor:?} is mapped to {file}, but {held} holds it")));
                }
                None => return Err(invalid(path, format!("tensor {tensor:?} is mapped to {file}, which does not hold it"))),
            }
        }
        Ok(ck)
    }

    /// Adds every tensor of `shard` (safetensors, or a torch pickle by its extension).
    fn add(&mut self, shard: Shard) -> Result<()> {
        let index = self.shards.len();
        let entries: Vec<(String, Entry)> = if is_torch_pickle(&shard.path) {
            super::torch_pickle::read_state_dict(&shard.path, &shard.map)?
                .into_iter()
                .map(|(name, t)| {
                    let entry = Entry { shard: index, kind: Ok(t.kind), shape: t.shape, stride: Some(t.stride), start: t.start, end: t.end };
                    (name, entry)
                })
                .collect()
        } else {
            let (header, meta) = SafeTensors::read_metadata(&shard.map).map_err(|e| invalid(&shard.path, format!("{e:?}")))?;
            let base = 8 + header;
            meta.tensors()
                .into_iter()
                .map(|(name, info)| {
                    let (start, end) = info.data_offsets;
                    let shape = info.shape.iter().map(|&d| d as i64).collect();
                    let kind = kind_of(info.dtype).ok_or_else(|| format!("{:?}", info.dtype));
                    (name, Entry { shard: index, kind, shape, stride: None, start: base + start, end: base + end })
                })
                .collect()
        };
        for (name, entry) in entries {
            if let Some(other) = self.entries.get(&name) {
                let first = self.shards[other.shard].path.file_name().unwrap_or_default().to_string_lossy().into_owned();
                return Err(invalid(&shard.path, format!("tensor {name:?} is also in {first}")));
            }
            self.entries.insert(name, entry);
        }
        self.shards.push(shard);
        Ok(())
    }

    fn names(&self) -> impl Iterator<Item = &String> {
        self.entries.keys()
    }

    fn contains(&self, name: &str) -> bool {
        self.entries.contains_key(name)
    }

    /// Copies tensor `name` out of its file (to host memory, in the stored dtype) and releases
    /// the mapped pages. `None` when the checkpoint has no such tensor.
    fn read(&mut self, name: &str) -> Option<Result<(Tensor, PathBuf)>> {
        let e = self.entries.remove(name)?;
        let shard = &self.shards[e.shard];
        let kind = match e.kind {
            Ok(kind) => kind,
            Err(dtype) => return Some(Err(invalid(&shard.path, format!("tensor {name:?} has dtype {dtype}, which libtorch cannot hold")))),
        };
        let bytes = &shard.map[e.start..e.end];
        let t = match &e.stride {
            None => Tensor::f_from_data_size(bytes, &e.shape, kind),
            // A view: the span's elements, then the view copied out of them.
            Some(stride) => {
                let span = (bytes.len() / kind.elt_size_in_bytes()) as i64;
                Tensor::f_from_data_size(bytes, &[span], kind).and_then(|flat| flat.f_as_strided(&e.shape, stride, 0)).and_then(|v| v.f_contiguous())
            }
        }
        .map_err(|err| invalid(&shard.path, format!("tensor {name:?}: {err}")));
        shard.release(e.start, e.end);
        Some(t.map(|t| (t, shard.path.clone())))
    }
}

fn kind_of(d: Dtype) -> Option<Kind> {
    Some(match d {
        Dtype::BOOL => Kind::Bool,
        Dtype::U8 => Kind::Uint8,
        Dtype::I8 => Kind::Int8,
        Dtype::I16 => Kind::Int16,
        Dtype::F16 => Kind::Half,
        Dtype::BF16 => Kind::BFloat16,
        Dtype::I32 => Kind::Int,
        Dtype::F32 => Kind::Float,
        Dtype::F64 => Kind::Double,
        Dtype::I64 => Kind::Int64,
        _ => return None,
    })
}

/// The tensors of a checkpoint by name, taken one by one onto the model's device and dtype,
/// with the bytes counted. On any error everything taken so far is dropped by the caller.
pub(crate) struct Weights<'a> {
    ck: Checkpoint,
    prefix: String,
    path: &'a Path,
    device: Device,
    kind: Kind,
    /// Bytes held on the device by the tensors taken so far.
    pub(crate) bytes: u64,
}

impl<'a> Weights<'a> {
    /// Opens `path` (a safetensors file or a sharded index). Checkpoints name their tensors with
    /// or without the head model's prefix (`bert.`, `roberta.`, `model.`, …): the prefix is
    /// whatever precedes `anchor`, a tensor every checkpoint of the family has.
    pub(crate) fn read(path: &'a Path, anchor: &str, device: Device, kind: Kind) -> Result<Self> {
        let ck = Checkpoint::open(path)?;
        let mut found: Vec<&String> = ck.names().filter(|k| k.ends_with(anchor)).collect();
        // The shortest match: a checkpoint with several heads keeps the encoder's at the top.
        found.sort_by_key(|k| k.len());
        let prefix = match found.first() {
            Some(k) => k[..k.len() - anchor.len()].to_string(),
            None => {
                return Err(Error::WeightsMismatch {
                    path: path.into(),
                    reason: format!("no tensor named {anchor:?} (with or without a prefix): not this model family's weights"),
                })
            }
        };
        Ok(Weights { ck, prefix, path, device, kind, bytes: 0 })
    }

    fn mismatch(&self, reason: String) -> Error {
        Error::WeightsMismatch { path: self.path.into(), reason }
    }

    /// Runs `f` with names taken from the checkpoint's top level, outside the encoder's prefix
    /// (a task head's `classifier.*` or `cls.predictions.*` beside `bert.*`).
    pub(crate) fn top<T>(&mut self, f: impl FnOnce(&mut Self) -> Result<T>) -> Result<T> {
        let prefix = std::mem::take(&mut self.prefix);
        let result = f(self);
        self.prefix = prefix;
        result
    }

    /// Whether the checkpoint has tensor `name` (under the prefix).
    pub(crate) fn has(&self, name: &str) -> bool {
        self.ck.contains(&format!("{}{name}", self.prefix))
    }

    /// Takes tensor `name`, checks its shape, moves it to the device in the model's dtype.
    pub(crate) fn take(&mut self, name: &str, shape: &[i64]) -> Result<Tensor> {
        let (t, _, _) = self.read_checked(name, shape)?;
        Ok(self.place(&t))
    }

    /// Takes only `rows` of the 2-D tensor `name` (of `shape`), in that order: a few rows of a
    /// vocabulary-sized LM head without ever placing the whole of it on the device.
    pub(crate) fn take_rows(&mut self, name: &str, shape: &[i64], rows: &[i64]) -> Result<Tensor> {
        let (t, full, file) = self.read_checked(name, shape)?;
        if let Some(bad) = rows.iter().find(|&&r| !(0..shape[0]).contains(&r)) {
            return Err(Error::WeightsMismatch { path: file, reason: format!("row {bad} asked of tensor {full:?}, which has {} rows", shape[0]) });
        }
        Ok(self.place(&t.index_select(0, &Tensor::from_slice(rows))))
    }

    /// Tensor `name` as stored, its full name and its file; checked to have `shape` and a float dtype.
    fn read_checked(&mut self, name: &str, shape: &[i64]) -> Result<(Tensor, String, PathBuf)> {
        let full = format!("{}{name}", self.prefix);
        let (t, file) = self.ck.read(&full).ok_or_else(|| self.mismatch(format!("tensor {full:?} is missing")))??;
        if t.size() != shape {
            return Err(Error::WeightsMismatch {
                path: file,
                reason: format!("tensor {full:?} has shape {:?}, the config implies {shape:?}", t.size()),
            });
        }
        if !t.is_floating_point() {
            return Err(Error::WeightsMismatch { path: file, reason: format!("tensor {full:?} has non-float dtype {:?}", t.kind()) });
        }
        Ok((t, full, file))
    }

    /// `t` on the device in the model's dtype, its bytes counted.
    fn place(&mut self, t: &Tensor) -> Tensor {
        let t = t.to_device(self.device).to_kind(self.kind).contiguous();
        self.bytes += (t.numel() * t.kind().elt_size_in_bytes()) as u64;
        t
    }

    /// A linear layer `prefix.weight` `[out, inp]` with `prefix.bias` when `bias`.
    pub(crate) fn linear(&mut self, prefix: &str, out: i64, inp: i64, bias: bool) -> Result<Linear> {
        let weight = self.take(&format!("{prefix}.weight"), &[out, inp])?;
        let bias = if bias { Some(self.take(&format!("{prefix}.bias"), &[out])?) } else { None };
        Ok(Linear::new(weight, bias))
    }

    /// Several linear layers of the same input fused into one (`[out; out; …]` rows), e.g. a
    /// checkpoint's separate Q, K and V. The parts are dropped once fused; the fused copy has
    /// their size, so the byte count stays right.
    pub(crate) fn fused_linear(&mut self, prefixes: &[String], out: i64, inp: i64, bias: bool) -> Result<Linear> {
        let parts = prefixes.iter().map(|p| self.linear(p, out, inp, bias)).collect::<Result<Vec<Linear>>>()?;
        Ok(Linear::fuse(parts))
    }

    /// An embedding table `name` of `rows` rows, absent when `rows` is 0 (token types).
    pub(crate) fn optional_table(&mut self, name: &str, rows: usize, width: i64) -> Result<Option<Tensor>> {
        if rows == 0 {
            Ok(None)
        } else {
            self.take(name, &[rows as i64, width]).map(Some)
        }
    }

    /// An RMSNorm `prefix.weight` of `width`.
    pub(crate) fn rms_norm(&mut self, prefix: &str, width: i64, eps: f64) -> Result<RmsNorm> {
        Ok(RmsNorm { weight: self.take(&format!("{prefix}.weight"), &[width])?, eps, gemma: false })
    }

    /// A LayerNorm `prefix.weight` (or the old `gamma`/`beta` names), with a bias when `bias`.
    pub(crate) fn layer_norm(&mut self, prefix: &str, width: i64, eps: f64, bias: bool) -> Result<LayerNorm> {
        let (w, b) = if self.has(&format!("{prefix}.gamma")) { ("gamma", "beta") } else { ("weight", "bias") };
        Ok(LayerNorm {
            weight: self.take(&format!("{prefix}.{w}"), &[width])?,
            bias: if bias { Some(self.take(&format!("{prefix}.{b}"), &[width])?) } else { None },
            eps,
        })
    }
}
