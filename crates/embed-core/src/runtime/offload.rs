//! Moving a loaded model's weights out of device memory into host memory and back, in place
//! (the pool's warm tier).
//!
//! The model keeps its structure; every tensor it holds ([`Model::tensors`]) is copied into a
//! few host buffers and its storage is swapped for an empty placeholder (`set_data`, so every
//! handle sharing the tensor sees the swap: SPLADE's tied decoder follows the word
//! embeddings). Restoring allocates each tensor on the device again (same shape, same dtype),
//! copies its bytes back and swaps the storage in: a bitwise copy, no conversion.
//!
//! The host side is a list of byte buffers of [`CHUNK_BYTES`] each (the last one shorter),
//! pinned when the model is on CUDA so copies run at full bus speed. Packing the tensors back
//! to back into fixed chunks keeps the host cost at the weights plus less than one chunk:
//! libtorch's pinned allocator rounds each allocation up to a power of two, which per tensor
//! would cost up to twice the weights.
//!
//! Both directions are all or nothing: if a host buffer or a device tensor cannot be
//! allocated, what was done so far is undone and the model stays where it was.

use tch::{Device, Kind, Tensor};

use crate::models::Model;
use crate::{Error, Result};

/// Size of one host buffer (a power of two, so the pinned allocator wastes nothing on it).
pub(crate) const CHUNK_BYTES: i64 = 64 << 20;
/// Each tensor starts at a multiple of this in the host buffers.
const ALIGN: i64 = 256;

/// Where one tensor's bytes are while the model is offloaded.
struct Entry {
    handle: Tensor,
    shape: Vec<i64>,
    kind: Kind,
    /// Byte offset into the concatenation of the chunks.
    offset: i64,
    len: i64,
}

/// A model's weights in host memory; the model holds empty placeholders meanwhile.
pub(crate) struct HostCopy {
    chunks: Vec<Tensor>,
    entries: Vec<Entry>,
    /// Host bytes held (the chunks' sizes).
    pub(crate) host_bytes: u64,
    /// Bytes of the tensors copied (the model's weight bytes).
    pub(crate) tensor_bytes: u64,
    /// Counts `host_bytes` in [`crate::memory::offloaded_host_bytes`] while the copy lives.
    _counted: crate::memory::OffloadedBytes,
}

fn error(model: &str, reason: impl std::fmt::Display) -> Error {
    Error::Inference { model: model.to_string(), message: format!("moving the weights failed: {reason}") }
}

/// The tensor's bytes as a flat `uint8` view (the tensor must be contiguous).
fn bytes_of(t: &Tensor) -> Tensor {
    t.reshape([-1]).view_dtype(Kind::Uint8)
}

/// Copies `len` bytes between the flat view `flat` (from byte `at`) and the chunks (from byte
/// `offset` of their concatenation), in the direction `to_chunks` says.
fn copy_bytes(chunks: &[Tensor], offset: i64, flat: &Tensor, len: i64, to_chunks: bool) -> std::result::Result<(), tch::TchError> {
    let mut done = 0;
    while done < len {
        let at = offset + done;
        let (chunk, within) = ((at / CHUNK_BYTES) as usize, at % CHUNK_BYTES);
        let n = (len - done).min(CHUNK_BYTES - within);
        let mut host = chunks[chunk].narrow(0, within, n);
        let mut dev = flat.narrow(0, done, n);
        if to_chunks {
            host.f_copy_(&dev)?;
        } else {
            dev.f_copy_(&host)?;
        }
        done += n;
    }
    Ok(())
}

/// A placeholder storage: no elements, on the CPU.
fn placeholder(kind: Kind) -> Tensor {
    Tensor::empty([0], (kind, Device::Cpu))
}

impl HostCopy {
    /// Copies every tensor of `model` to host memory and frees them on the device. `name` is
    /// for error messages.
    pub(crate) fn take(model: &Model, name: &str) -> Result<HostCopy> {
        if model.int8 {
            return Err(Error::InvalidOption {
                name: "dtype",
                reason: format!("model {name}: its weights are quantized to int8 and prepacked for oneDNN on the CPU and cannot be offloaded (a CPU model gains nothing from it)"),
            });
        }
        if model.prepacked {
            return Err(Error::InvalidOption {
                name: "cpu_prepack",
                reason: format!("model {name}: its linear weights are prepacked for oneDNN on the CPU and cannot be offloaded (a CPU model gains nothing from it; load with cpu_prepack off to offload anyway)"),
            });
        }
        let device = model.device();
        let all = model.tensors();
        // Each storage once (handles sharing a tensor are swapped together).
        let mut seen = std::collections::HashSet::new();
        let mut entries = Vec::new();
        let mut total = 0i64;
        for t in &all {
            if t.numel() == 0 || !seen.insert(t.data_ptr() as usize) {
                continue;
            }
            if !t.is_contiguous() {
                return Err(error(name, format!("a tensor of shape {:?} is not contiguous", t.size())));
            }
            let len = (t.numel() * t.kind().elt_size_in_bytes()) as i64;
            entries.push(Entry { handle: t.shallow_clone(), shape: t.size(), kind: t.kind(), offset: total, len });
            total += (len + ALIGN - 1) / ALIGN * ALIGN;
        }
        let mut chunks = Vec::new();
        let mut left = total;
        let pinned = matches!(device, Device::Cuda(_));
        while left > 0 {
            // The pinned allocator rounds an allocation up to a power of two: the last chunk is
            // allocated at that size, so `host_bytes` is what is really held.
            let n = if pinned { (left.min(CHUNK_BYTES) as u64).next_power_of_two() as i64 } else { left.min(CHUNK_BYTES) };
            let chunk = Tensor::f_empty([n], (Kind::Uint8, Device::Cpu)).map_err(|e| error(name, e))?;
            let chunk = match device {
                Device::Cuda(_) => chunk.f_pin_memory(device).map_err(|e| error(name, e))?,
                _ => chunk,
            };
            chunks.push(chunk);
            left -= n.min(left);
        }
        let host_bytes: i64 = chunks.iter().map(Tensor::numel).sum::<usize>() as i64;
        for e in &entries {
            copy_bytes(&chunks, e.offset, &bytes_of(&e.handle), e.len, true).map_err(|err| error(name, err))?;
        }
        // Everything is in host memory: swap the device storages out.
        for e in &mut entries {
            e.handle.set_data(&placeholder(e.kind));
        }
        let copy = HostCopy {
            chunks,
            host_bytes: host_bytes as u64,
            tensor_bytes: entries.iter().map(|e| e.len as u64).sum(),
            entries,
            _counted: crate::memory::OffloadedBytes::new(host_bytes as u64),
        };
        // A tensor that is a view of another has a storage of its own handle, which the swap
        // above did not reach: it would keep device memory alive. No family holds one; this
        // keeps it that way.
        if let Some(t) = all.iter().find(|t| t.numel() > 0) {
            let shape = t.size();
            let err = error(name, format!("a tensor of shape {shape:?} shares storage with another and cannot be moved"));
            copy.put_back(model.device(), name)?;
            return Err(err);
        }
        Ok(copy)
    }

    /// Allocates every tensor on `device` again and copies its bytes back. On failure the
    /// model keeps its placeholders and the copy is handed back with the error.
    pub(crate) fn restore(self, device: Device, name: &str) -> std::result::Result<(), (HostCopy, Error)> {
        let mut restored = Vec::with_capacity(self.entries.len());
        for e in &self.entries {
            let fresh = Tensor::f_empty(e.shape.as_slice(), (e.kind, device))
                .and_then(|t| copy_bytes(&self.chunks, e.offset, &bytes_of(&t), e.len, false).map(|()| t));
            match fresh {
                Ok(t) => restored.push(t),
                Err(err) => {
                    drop(restored);
                    return Err((self, error(name, err)));
                }
            }
        }
        let HostCopy { entries, .. } = self;
        for (mut e, t) in entries.into_iter().zip(restored) {
            e.handle.set_data(&t);
        }
        Ok(())
    }

    /// Restores after a failed `take`; the error is the reason it could not.
    fn put_back(self, device: Device, name: &str) -> Result<()> {
        self.restore(device, name).map_err(|(_, e)| e)
    }
}
