//! The kernels' switches: how attention runs on the CPU and on CUDA, int8's Hadamard rounding,
//! the fused CPU residual + LayerNorm, and stage profiling. Each model has its own
//! ([`ModelOptions::tuning`](crate::ModelOptions::tuning)); its worker thread installs them
//! before it loads the model, and the kernels read them there. The defaults serve best; the
//! others exist for comparison and diagnosis.
//!
//! The library reads no environment for them. [`Tuning::from_env`] is for front ends that
//! offer the `EMBED_*` variables (embed-server, the examples, bench scripts).

use std::cell::Cell;

/// How CPU batches run attention.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum CpuAttention {
    /// The shim's variable-length kernel (every sequence over its own tokens, no padding) for
    /// the families that run it (all of them now), length groups for any other.
    #[default]
    Varlen,
    /// Padded SDPA in runs of similar length (the encoders' path before the varlen kernel).
    Grouped,
    /// Padded SDPA over the whole batch at its longest sequence.
    Padded,
}

/// How CUDA runs attention in half precision (f16, bf16; f32 always runs padded).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum CudaAttention {
    /// FlashAttention-2 over packed sequences where the family's scores and head size allow
    /// it, padded SDPA (cuDNN's backend off) elsewhere.
    #[default]
    Packed,
    /// Padded SDPA under a key mask, cuDNN's backend off for the process.
    Padded,
    /// Padded SDPA with libtorch's own dispatch untouched (the behaviour before the packed
    /// path existed).
    Sdpa,
}

/// The kernels' switches of one model (see the module's documentation). `#[non_exhaustive]`:
/// start from [`Tuning::DEFAULT`] or [`Tuning::from_env`] and set what differs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct Tuning {
    /// How CPU batches run attention (`EMBED_CPU_ATTENTION`: `varlen`, `grouped`, `padded`).
    pub cpu_attention: CpuAttention,
    /// How CUDA runs attention in half precision (`EMBED_CUDA_ATTENTION`: `packed`, `padded`,
    /// `sdpa`).
    pub cuda_attention: CudaAttention,
    /// int8 on the CPU: round weights (and transform inputs) in a block Hadamard basis where it
    /// measures closer to f32 (`EMBED_INT8_HADAMARD=0` turns it off). On by default.
    pub int8_hadamard: bool,
    /// CPU post-norm blocks in f32 and bf16: add the residual and apply LayerNorm in one pass
    /// (`EMBED_CPU_FUSED_NORM=0` turns it off). On by default.
    pub cpu_fused_norm: bool,
    /// Time every stage of the forward pass (and tokenization) into the process-wide table of
    /// [`crate::profile`] (`EMBED_PROFILE_STAGES=1`). Off by default.
    pub profile_stages: bool,
}

impl Tuning {
    /// The defaults.
    pub const DEFAULT: Tuning = Tuning {
        cpu_attention: CpuAttention::Varlen,
        cuda_attention: CudaAttention::Packed,
        int8_hadamard: true,
        cpu_fused_norm: true,
        profile_stages: false,
    };

    /// The switches as the `EMBED_*` variables of this process set them, the defaults for those
    /// unset; a value that names nothing is warned about and the default used. For front ends
    /// (embed-server maps its environment with it); the library never calls it.
    pub fn from_env() -> Tuning {
        let var = |name: &str| std::env::var(name).unwrap_or_default();
        let cpu_attention = match var("EMBED_CPU_ATTENTION").as_str() {
            "" | "varlen" => CpuAttention::Varlen,
            "grouped" => CpuAttention::Grouped,
            "padded" => CpuAttention::Padded,
            other => {
                tracing::warn!("EMBED_CPU_ATTENTION={other:?} is not varlen, grouped or padded; using varlen");
                CpuAttention::Varlen
            }
        };
        let cuda_attention = match var("EMBED_CUDA_ATTENTION").as_str() {
            "" | "packed" => CudaAttention::Packed,
            "padded" => CudaAttention::Padded,
            "sdpa" => CudaAttention::Sdpa,
            other => {
                tracing::warn!("EMBED_CUDA_ATTENTION={other:?} is not packed, padded or sdpa; using the default");
                CudaAttention::Packed
            }
        };
        Tuning {
            cpu_attention,
            cuda_attention,
            int8_hadamard: var("EMBED_INT8_HADAMARD") != "0",
            cpu_fused_norm: var("EMBED_CPU_FUSED_NORM") != "0",
            profile_stages: var("EMBED_PROFILE_STAGES") == "1",
        }
    }

    /// Makes these the switches of the calling thread (a model's worker thread, before it loads
    /// the model).
    pub(crate) fn install(self) {
        TUNING.with(|t| t.set(self));
        crate::profile::set_on_this_thread(self.profile_stages);
    }

    /// The calling thread's switches (the defaults where none were installed).
    pub(crate) fn current() -> Tuning {
        TUNING.with(Cell::get)
    }
}

with_setters!(Tuning {
    plain with_cpu_attention(cpu_attention: CpuAttention) "Sets [`Tuning::cpu_attention`].";
    plain with_cuda_attention(cuda_attention: CudaAttention) "Sets [`Tuning::cuda_attention`].";
    plain with_int8_hadamard(int8_hadamard: bool) "Sets [`Tuning::int8_hadamard`].";
    plain with_cpu_fused_norm(cpu_fused_norm: bool) "Sets [`Tuning::cpu_fused_norm`].";
    plain with_profile_stages(profile_stages: bool) "Sets [`Tuning::profile_stages`].";
});

impl Default for Tuning {
    fn default() -> Self {
        Tuning::DEFAULT
    }
}

thread_local! {
    static TUNING: Cell<Tuning> = const { Cell::new(Tuning::DEFAULT) };
}

#[cfg(test)]
mod tests {
    use super::{CpuAttention, Tuning};

    #[test]
    fn a_thread_sees_the_switches_it_installed_and_no_other_threads() {
        assert_eq!(Tuning::current(), Tuning::DEFAULT);
        let grouped = Tuning { cpu_attention: CpuAttention::Grouped, int8_hadamard: false, ..Tuning::DEFAULT };
        std::thread::spawn(move || {
            grouped.install();
            assert_eq!(Tuning::current(), grouped);
        })
        .join()
        .unwrap();
        assert_eq!(Tuning::current(), Tuning::DEFAULT, "another thread's switches leaked here");
    }
}
