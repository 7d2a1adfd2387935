//! How a loaded model runs attention, decided once at load: [`AttentionPlan::choose`] reads the
//! model's switches ([`Tuning`]), its device and precision, and what its family's scores allow
//! ([`AttentionSupport`]). The families declare what they can run and nothing else; the
//! runtime reads the plan for each batch; the one decision left for run time is the packed
//! kernel refusing a GPU it does not support, after which the plan is padded for good.

use std::cell::Cell;

use tch::{Device, Kind};

use super::AttentionPath;
use crate::nn::tuning::{CpuAttention, CudaAttention, Tuning};

/// What a family's attention can run besides padded SDPA over the whole batch (which all run).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct AttentionSupport {
    /// Plain `q·k` scores under a key mask (no position bias, no sliding window) over heads of
    /// this size: what FlashAttention-2's packed kernel takes. `None`: never packed.
    pub(crate) packed_head_dim: Option<i64>,
    /// The CPU's variable-length kernel ([`BatchInput::varlen`](crate::nn::BatchInput::varlen)).
    pub(crate) cpu_varlen: bool,
    /// Padded attention in runs of similar length ([`BatchInput::groups`](crate::nn::BatchInput::groups)).
    pub(crate) length_groups: bool,
}

/// How one CPU batch runs its attention.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum CpuLayout {
    /// Each sequence over its own tokens (the variable-length kernel).
    Varlen,
    /// Padded SDPA in runs of similar length.
    Grouped,
    /// Padded SDPA over the whole batch.
    Padded,
}

/// The attention a loaded model runs (see the module's documentation).
#[derive(Debug)]
pub(crate) struct AttentionPlan {
    /// The form on the model's device; `Packed` turns `Padded` once if the kernel refuses.
    path: Cell<AttentionPath>,
    /// On the CPU, how each batch lays its attention out; `None` on CUDA.
    cpu: Option<CpuLayout>,
}

impl AttentionPlan {
    /// The plan for a model of a family that supports `support`, on `device` in `kind`, under
    /// `tuning`. Where the plan is padded attention on CUDA in half precision, cuDNN's SDPA
    /// backend is switched off for the process (it builds a plan per batch shape: see
    /// [`super`]); this is the only place that decides it.
    pub(crate) fn choose(device: Device, kind: Kind, support: AttentionSupport, tuning: Tuning) -> AttentionPlan {
        if !device.is_cuda() {
            let cpu = match tuning.cpu_attention {
                CpuAttention::Varlen if support.cpu_varlen => CpuLayout::Varlen,
                CpuAttention::Varlen | CpuAttention::Grouped if support.length_groups => CpuLayout::Grouped,
                _ => CpuLayout::Padded,
            };
            return AttentionPlan { path: Cell::new(AttentionPath::Padded), cpu: Some(cpu) };
        }
        let plan = AttentionPlan { path: Cell::new(Self::cuda_path(kind, support, tuning.cuda_attention)), cpu: None };
        if matches!(kind, Kind::Half | Kind::BFloat16) {
            plan.path.get().prepare();
        }
        plan
    }

    /// The form on CUDA: f32 always runs padded; half precision as `cuda` asks, packed only
    /// where FlashAttention-2 takes the family's scores and head size.
    fn cuda_path(kind: Kind, support: AttentionSupport, cuda: CudaAttention) -> AttentionPath {
        if !matches!(kind, Kind::Half | Kind::BFloat16) {
            return AttentionPath::Padded;
        }
        let flash_fits = support.packed_head_dim.is_some_and(|d| d % 8 == 0 && d <= 256);
        match cuda {
            CudaAttention::Padded => AttentionPath::Padded,
            CudaAttention::Sdpa => AttentionPath::Sdpa,
            CudaAttention::Packed if flash_fits => AttentionPath::Packed,
            CudaAttention::Packed => AttentionPath::Padded,
        }
    }

    /// Whether the next forward pass runs packed (after a pass: whether it ran packed).
    pub(crate) fn packed(&self) -> bool {
        self.path.get() == AttentionPath::Packed
    }

    /// How a CPU batch lays its attention out; `None` on CUDA.
    pub(crate) fn cpu_layout(&self) -> Option<CpuLayout> {
        self.cpu
    }

    /// The packed kernel refused this model's GPU or precision: padded attention from now on.
    pub(crate) fn fall_back_to_padded(&self, why: &str) {
        tracing::warn!("packed flash attention failed, using padded attention from now on: {why}");
        self.path.set(AttentionPath::Padded);
        AttentionPath::Padded.prepare();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const POST_NORM: AttentionSupport = AttentionSupport { packed_head_dim: Some(64), cpu_varlen: true, length_groups: true };
    const DECODER: AttentionSupport = AttentionSupport { packed_head_dim: None, cpu_varlen: true, length_groups: false };

    fn cpu(support: AttentionSupport, cpu_attention: CpuAttention) -> Option<CpuLayout> {
        AttentionPlan::choose(Device::Cpu, Kind::Float, support, Tuning::DEFAULT.with_cpu_attention(cpu_attention)).cpu_layout()
    }

    #[test]
    fn the_cpu_layout_is_the_one_asked_for_where_the_family_runs_it_else_the_next_best() {
        assert_eq!(cpu(POST_NORM, CpuAttention::Varlen), Some(CpuLayout::Varlen));
        assert_eq!(cpu(POST_NORM, CpuAttention::Grouped), Some(CpuLayout::Grouped));
        assert_eq!(cpu(POST_NORM, CpuAttention::Padded), Some(CpuLayout::Padded));
        assert_eq!(cpu(DECODER, CpuAttention::Varlen), Some(CpuLayout::Varlen));
        assert_eq!(cpu(DECODER, CpuAttention::Grouped), Some(CpuLayout::Padded));
        let no_varlen = AttentionSupport { cpu_varlen: false, ..POST_NORM };
        assert_eq!(cpu(no_varlen, CpuAttention::Varlen), Some(CpuLayout::Grouped));
        let plan = AttentionPlan::choose(Device::Cpu, Kind::BFloat16, POST_NORM, Tuning::DEFAULT);
        assert!(!plan.packed(), "the CPU never runs the packed kernel");
    }

    #[test]
    fn cuda_runs_packed_only_in_half_precision_where_flash_takes_the_scores_and_heads() {
        let path = |kind, support, cuda| AttentionPlan::cuda_path(kind, support, cuda);
        assert_eq!(path(Kind::Half, POST_NORM, CudaAttention::Packed), AttentionPath::Packed);
        assert_eq!(path(Kind::BFloat16, POST_NORM, CudaAttention::Packed), AttentionPath::Packed);
        assert_eq!(path(Kind::Float, POST_NORM, CudaAttention::Packed), AttentionPath::Padded);
        assert_eq!(path(Kind::Float, POST_NORM, CudaAttention::Sdpa), AttentionPath::Padded);
        assert_eq!(path(Kind::Half, DECODER, CudaAttention::Packed), AttentionPath::Padded);
        assert_eq!(path(Kind::Half, POST_NORM, CudaAttention::Sdpa), AttentionPath::Sdpa);
        assert_eq!(path(Kind::Half, POST_NORM, CudaAttention::Padded), AttentionPath::Padded);
        for head_dim in [60, 264] {
            let odd = AttentionSupport { packed_head_dim: Some(head_dim), ..POST_NORM };
            assert_eq!(path(Kind::Half, odd, CudaAttention::Packed), AttentionPath::Padded, "head_dim {head_dim}");
        }
    }
}
