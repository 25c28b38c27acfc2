//! Little-endian element decoding shared by the safetensors and GGUF loaders.
use half::{bf16, f16};

/// Float element types both file formats store unquantised.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FloatDtype {
    F32,
    F16,
    BF16,
}

impl FloatDtype {
    /// `f32`, `f16` or `bf16`.
    pub fn parse(s: &str) -> Option<FloatDtype> {
        [FloatDtype::F32, FloatDtype::F16, FloatDtype::BF16].into_iter().find(|d| d.name() == s)
    }

    /// The name [`FloatDtype::parse`] reads.
    pub fn name(self) -> &'static str {
        match self {
            FloatDtype::F32 => "f32",
            FloatDtype::F16 => "f16",
            FloatDtype::BF16 => "bf16",
        }
    }

    /// PyTorch's name of the type (config.json's `torch_dtype`).
    pub fn torch_name(self) -> &'static str {
        match self {
            FloatDtype::F32 => "float32",
            FloatDtype::F16 => "float16",
            FloatDtype::BF16 => "bfloat16",
        }
    }

    pub fn size_bytes(self) -> usize {
        match self {
            FloatDtype::F32 => 4,
            FloatDtype::F16 | FloatDtype::BF16 => 2,
        }
    }

    /// Decodes little-endian `bytes` to f32. The caller guarantees
    /// `bytes.len()` is a multiple of `size_bytes()`.
    pub fn decode(self, bytes: &[u8]) -> Vec<f32> {
        match self {
            FloatDtype::F32 => bytes.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect(),
            FloatDtype::F16 => bytes.chunks_exact(2).map(|b| f16::from_le_bytes([b[0], b[1]]).to_f32()).collect(),
            FloatDtype::BF16 => bytes.chunks_exact(2).map(|b| bf16::from_le_bytes([b[0], b[1]]).to_f32()).collect(),
        }
    }

    /// Encodes `values` as little-endian bytes (round-to-nearest-even for f16/bf16).
    pub fn encode(self, values: &[f32]) -> Vec<u8> {
        match self {
            FloatDtype::F32 => values.iter().flat_map(|v| v.to_le_bytes()).collect(),
            FloatDtype::F16 => values.iter().flat_map(|&v| f16::from_f32(v).to_le_bytes()).collect(),
            FloatDtype::BF16 => values.iter().flat_map(|&v| bf16::from_f32(v).to_le_bytes()).collect(),
        }
    }
}

/// Reads a little-endian f16 at `bytes[0..2]` (quantisation block scales).
pub(crate) fn f16_at(bytes: &[u8]) -> f32 {
    f16::from_le_bytes([bytes[0], bytes[1]]).to_f32()
}
