//! Host-side weights: every loader returns tensors under Hugging Face Llama names,
//! dequantised to f32, rows in Hugging Face order (GGUF's permuted Q/K rows undone).
use super::config::ModelConfig;
use std::collections::HashMap;

/// A dense row-major f32 tensor on the host. `shape` is in PyTorch order:
/// a linear layer's weight is `[out_features, in_features]`.
#[derive(Clone, Debug, PartialEq)]
pub struct HostTensor {
    pub shape: Vec<usize>,
    pub data: Vec<f32>,
}

impl HostTensor {
    pub fn new(shape: Vec<usize>, data: Vec<f32>) -> Self {
        assert_eq!(shape.iter().product::<usize>(), data.len(), "shape/data mismatch");
        Self { shape, data }
    }
    pub fn numel(&self) -> usize {
        self.data.len()
    }
}

/// Everything a loader produces: config, tensors by Hugging Face name, tokenizer if the source has one.
pub struct ModelFiles {
    pub config: ModelConfig,
    pub tensors: HashMap<String, HostTensor>,
    pub tokenizer: Option<tokenizers::Tokenizer>,
    /// Human-readable description of where it came from (path, format).
    pub source: String,
}
