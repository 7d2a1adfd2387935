//! Device and dtype selection.

use std::fmt;
use std::str::FromStr;

use crate::{Error, Result};

/// Where a model should run, as the caller asked for it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, serde::Serialize, serde::Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum DeviceSpec {
    /// The CPU, with libtorch's intra-op threads (see `ModelOptions::threads`).
    #[default]
    Cpu,
    /// A CUDA device by index (`cuda` means `cuda:0`).
    Cuda(usize),
    /// CUDA device 0 when available, else the CPU (recorded in [`crate::ModelInfo::device_note`]).
    Auto,
}

impl FromStr for DeviceSpec {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        let t = s.trim().to_ascii_lowercase();
        match t.as_str() {
            "cpu" => Ok(DeviceSpec::Cpu),
            "cuda" | "gpu" => Ok(DeviceSpec::Cuda(0)),
            "auto" => Ok(DeviceSpec::Auto),
            _ => t
                .strip_prefix("cuda:")
                .and_then(|n| n.parse::<usize>().ok())
                .map(DeviceSpec::Cuda)
                .ok_or_else(|| Error::InvalidDevice(s.to_string())),
        }
    }
}

impl TryFrom<String> for DeviceSpec {
    type Error = Error;
    fn try_from(s: String) -> Result<Self> {
        s.parse()
    }
}

impl From<DeviceSpec> for String {
    fn from(d: DeviceSpec) -> String {
        d.to_string()
    }
}

impl fmt::Display for DeviceSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DeviceSpec::Cpu => f.write_str("cpu"),
            DeviceSpec::Cuda(i) => write!(f, "cuda:{i}"),
            DeviceSpec::Auto => f.write_str("auto"),
        }
    }
}

/// The device a model actually runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub enum ResolvedDevice {
    /// The host CPU (memory counted by the C allocator).
    Cpu,
    /// A CUDA device.
    Cuda(usize),
}

impl ResolvedDevice {
    pub(crate) fn to_tch(self) -> tch::Device {
        match self {
            ResolvedDevice::Cpu => tch::Device::Cpu,
            ResolvedDevice::Cuda(i) => tch::Device::Cuda(i),
        }
    }

    /// True for CUDA devices.
    pub fn is_cuda(self) -> bool {
        matches!(self, ResolvedDevice::Cuda(_))
    }
}

impl fmt::Display for ResolvedDevice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ResolvedDevice::Cpu => f.write_str("cpu"),
            ResolvedDevice::Cuda(i) => write!(f, "cuda:{i}"),
        }
    }
}

impl DeviceSpec {
    /// Resolves the request against the machine. Explicit CUDA without CUDA is an error;
    /// `auto` falls back to the CPU and returns a note saying so.
    pub fn resolve(self) -> Result<(ResolvedDevice, Option<String>)> {
        match self {
            DeviceSpec::Cpu => Ok((ResolvedDevice::Cpu, None)),
            DeviceSpec::Cuda(i) => {
                let count = cuda_device_count();
                if count == 0 {
                    Err(Error::DeviceUnavailable {
                        requested: self.to_string(),
                        reason: "libtorch sees no CUDA device (no GPU, no driver, or a CPU-only libtorch)"
                            .into(),
                    })
                } else if i >= count {
                    Err(Error::DeviceUnavailable {
                        requested: self.to_string(),
                        reason: format!("only {count} CUDA device(s) are visible"),
                    })
                } else {
                    Ok((ResolvedDevice::Cuda(i), None))
                }
            }
            DeviceSpec::Auto => {
                if cuda_device_count() > 0 {
                    Ok((ResolvedDevice::Cuda(0), Some("auto: selected cuda:0".into())))
                } else {
                    Ok((ResolvedDevice::Cpu, Some("auto: no CUDA device visible, using cpu".into())))
                }
            }
        }
    }
}

/// Number of CUDA devices libtorch can use (0 on CPU-only machines).
pub fn cuda_device_count() -> usize {
    if tch::Cuda::is_available() {
        tch::Cuda::device_count().max(0) as usize
    } else {
        0
    }
}

/// How an int8 model computes ([`DType::Int8`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub enum Int8Kernel {
    /// CPU with VNNI: activations quantized per token (after a block Hadamard transform the
    /// weight carries the inverse of), oneDNN's u8 × s8 GEMM.
    OneDnn,
    /// Weights stored in int8, dequantized for each matmul into the activations' kind (bf16 on
    /// CUDA, f32 on the CPU): a quarter (CUDA: half) of the weight memory, not faster.
    WeightOnly,
}

impl Int8Kernel {
    /// The kernel an int8 model runs with on `device`: `asked` if it can run there, else
    /// oneDNN's on a CPU with VNNI and weight-only elsewhere.
    pub(crate) fn choose(device: ResolvedDevice, asked: Option<Int8Kernel>) -> Result<Int8Kernel> {
        let onednn_refused = if device.is_cuda() { Some("oneDNN's int8 GEMM runs on the CPU".to_string()) } else { int8_unsupported_reason() };
        match (asked, onednn_refused) {
            (Some(Int8Kernel::OneDnn), Some(reason)) => {
                Err(Error::UnsupportedDtype { dtype: "int8 (onednn)".into(), device: device.to_string(), reason })
            }
            (Some(k), _) => Ok(k),
            (None, Some(_)) => Ok(Int8Kernel::WeightOnly),
            (None, None) => Ok(Int8Kernel::OneDnn),
        }
    }
}

impl FromStr for Int8Kernel {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s.trim().to_ascii_lowercase().as_str() {
            "onednn" => Ok(Int8Kernel::OneDnn),
            "weight-only" | "weight_only" => Ok(Int8Kernel::WeightOnly),
            _ => Err(Error::InvalidOption { name: "int8_kernel", reason: format!("{s:?}: expected onednn or weight-only") }),
        }
    }
}

/// Why this CPU cannot run oneDNN's int8 GEMM, or `None` when it can: it needs VNNI (AVX-512
/// VNNI or AVX-VNNI; every AMX CPU has it); without it the u8 × s8 products are summed in pairs
/// into saturating 16-bit registers, and full-range 8-bit values overflow them. Such a CPU runs
/// int8 weight-only ([`Int8Kernel::WeightOnly`]).
pub fn int8_unsupported_reason() -> Option<String> {
    #[cfg(target_arch = "x86_64")]
    {
        if std::is_x86_feature_detected!("avx512vnni") || std::is_x86_feature_detected!("avxvnni") {
            return None;
        }
        Some("this CPU lacks VNNI (AVX-512 VNNI or AVX-VNNI), which int8's GEMM needs to sum 8-bit products without saturating; use bf16 or f32".into())
    }
    #[cfg(not(target_arch = "x86_64"))]
    Some("int8 is built for x86-64 CPUs with VNNI; use f32 or bf16".into())
}

/// Why this CPU cannot prepack bf16 linear weights for oneDNN ([`crate::ModelOptions::cpu_prepack`]),
/// or `None` when it can: oneDNN's bf16 reorder needs AVX-512 BW, VL and DQ (or AVX-NE-CONVERT).
/// Without them a bf16 model runs libtorch's plain bf16 matmul, unprepacked.
pub fn cpu_prepack_unsupported_reason() -> Option<String> {
    #[cfg(target_arch = "x86_64")]
    {
        let avx512 = std::is_x86_feature_detected!("avx512bw") && std::is_x86_feature_detected!("avx512vl") && std::is_x86_feature_detected!("avx512dq");
        if avx512 {
            return None;
        }
        Some("this CPU lacks AVX-512 BW/VL/DQ, which oneDNN's bf16 weight prepacking needs".into())
    }
    #[cfg(not(target_arch = "x86_64"))]
    Some("oneDNN bf16 prepacking is built for x86-64 CPUs with AVX-512".into())
}

/// Floating-point precision of the weights and activations.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, serde::Serialize, serde::Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum DType {
    /// 32-bit float: the default, matches sentence-transformers.
    #[default]
    F32,
    /// 16-bit float (CUDA).
    F16,
    /// bfloat16 (CUDA, and CPUs with AVX-512 BF16 / AMX).
    Bf16,
    /// int8 weights, quantized at load (symmetric, per output channel) from the checkpoint;
    /// the word embeddings in int8 per row. On a CPU with VNNI the activations are quantized
    /// per token on every call too and the matmuls run on oneDNN's int8 GEMM, with lookups,
    /// norms, attention and pooling in f32 ([`Int8Kernel::OneDnn`]); on CUDA, and on CPUs
    /// without VNNI, the weights are dequantized into bf16 (CUDA) or f32 activations for each
    /// matmul ([`Int8Kernel::WeightOnly`]).
    Int8,
}

impl DType {
    /// The kind a model of this dtype is loaded and runs its activations in on `device`.
    pub(crate) fn kind(self, device: ResolvedDevice) -> tch::Kind {
        match self {
            DType::F32 => tch::Kind::Float,
            DType::F16 => tch::Kind::Half,
            DType::Bf16 => tch::Kind::BFloat16,
            // The linear weights are quantized after loading; activations in bf16 on CUDA
            // (weight-only int8), in f32 on the CPU.
            DType::Int8 if device.is_cuda() => tch::Kind::BFloat16,
            DType::Int8 => tch::Kind::Float,
        }
    }

    /// The precision a model of `family` runs in on `device` when the options leave it open.
    ///
    /// Decoder LLMs (Qwen, Mistral, Llama, Gemma 3) are trained and shipped in bf16, and in f32
    /// their weights and activations take twice the GPU memory for no retrieval gain: bf16 on
    /// CUDA. Encoders stay in f32 on CUDA (bit-for-bit sentence-transformers parity), and every
    /// family stays in f32 on CPU (bf16 is only faster where the CPU has AMX or AVX-512 BF16;
    /// ask for it there).
    pub fn preferred(family: crate::Family, device: ResolvedDevice) -> DType {
        match (family, device) {
            (crate::Family::Decoder | crate::Family::Gemma3, ResolvedDevice::Cuda(_)) => DType::Bf16,
            _ => DType::F32,
        }
    }

    /// Bytes per element.
    pub fn size_of(self) -> usize {
        match self {
            DType::F32 => 4,
            DType::F16 | DType::Bf16 => 2,
            DType::Int8 => 1,
        }
    }
}

impl FromStr for DType {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s.trim().to_ascii_lowercase().as_str() {
            "f32" | "float32" | "fp32" | "float" => Ok(DType::F32),
            "f16" | "float16" | "fp16" | "half" => Ok(DType::F16),
            "bf16" | "bfloat16" => Ok(DType::Bf16),
            "int8" | "i8" | "qint8" => Ok(DType::Int8),
            _ => Err(Error::InvalidDtype(s.to_string())),
        }
    }
}

impl TryFrom<String> for DType {
    type Error = Error;
    fn try_from(s: String) -> Result<Self> {
        s.parse()
    }
}

impl From<DType> for String {
    fn from(d: DType) -> String {
        d.to_string()
    }
}

impl fmt::Display for DType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            DType::F32 => "f32",
            DType::F16 => "f16",
            DType::Bf16 => "bf16",
            DType::Int8 => "int8",
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decoders_default_to_bf16_on_cuda_only() {
        use crate::Family;
        for family in [Family::Decoder, Family::Gemma3] {
            assert_eq!(DType::preferred(family, ResolvedDevice::Cuda(0)), DType::Bf16, "{family}");
            assert_eq!(DType::preferred(family, ResolvedDevice::Cuda(1)), DType::Bf16, "{family}");
            assert_eq!(DType::preferred(family, ResolvedDevice::Cpu), DType::F32, "{family}");
        }
        for family in [Family::Bert, Family::DistilBert, Family::MPNet, Family::ModernBert, Family::NomicBert, Family::Gte] {
            assert_eq!(DType::preferred(family, ResolvedDevice::Cuda(0)), DType::F32, "{family}");
            assert_eq!(DType::preferred(family, ResolvedDevice::Cpu), DType::F32, "{family}");
        }
    }

    #[test]
    fn parses_devices() {
        assert_eq!("cpu".parse::<DeviceSpec>().unwrap(), DeviceSpec::Cpu);
        assert_eq!("CUDA".parse::<DeviceSpec>().unwrap(), DeviceSpec::Cuda(0));
        assert_eq!("cuda:3".parse::<DeviceSpec>().unwrap(), DeviceSpec::Cuda(3));
        assert_eq!("auto".parse::<DeviceSpec>().unwrap(), DeviceSpec::Auto);
        for bad in ["tpu", "cuda:", "cuda:-1", "cuda:x", ""] {
            let err = bad.parse::<DeviceSpec>().unwrap_err();
            assert!(matches!(err, Error::InvalidDevice(_)), "{bad}: {err}");
        }
    }

    #[test]
    fn parses_dtypes() {
        assert_eq!("bf16".parse::<DType>().unwrap(), DType::Bf16);
        assert_eq!("float16".parse::<DType>().unwrap(), DType::F16);
        assert_eq!("int8".parse::<DType>().unwrap(), DType::Int8);
        assert_eq!(DType::Int8.to_string(), "int8");
        assert!(matches!("int4".parse::<DType>(), Err(Error::InvalidDtype(_))));
        assert_eq!(DType::Bf16.to_string().parse::<DType>().unwrap(), DType::Bf16);
    }
}
