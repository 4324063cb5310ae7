//! Kernels: the fused loops and GPU kernels that the model, the training step and the
//! optimizer call, and their launchers. The layer below `model`, `lora` and `train`; it
//! imports none of them.
//!
//! - `cpu.rs`: fused CPU loops (f32) where candle's op-by-op path is slow;
//! - `cuda.rs` (feature `cuda`): launchers of the kernels in `cuda/*.cu`, one op per
//!   file, compiled to PTX by build.rs; without the feature, `cuda_stub.rs` gives the
//!   same functions as errors so that callers' CUDA branches type-check;
//! - `cudnn.rs` (feature `cuda`): cuDNN's fused attention through the C++ shim in
//!   `cudnn/sdpa.cpp`, loaded at run time; `cudnn_stub.rs` without the feature;
//! - `offload.rs` (feature `cuda`): checkpointed layer inputs in pinned host memory,
//!   copied on a side stream; `offload_stub.rs` without the feature.

pub mod cpu;
#[cfg(feature = "cuda")]
pub mod cuda;
#[cfg(not(feature = "cuda"))]
#[path = "cuda_stub.rs"]
pub mod cuda;
#[cfg(feature = "cuda")]
pub mod cudnn;
#[cfg(not(feature = "cuda"))]
#[path = "cudnn_stub.rs"]
pub mod cudnn;
#[cfg(feature = "cuda")]
pub mod offload;
#[cfg(not(feature = "cuda"))]
#[path = "offload_stub.rs"]
pub mod offload;

use serde::{Deserialize, Serialize};

/// Which attention kernels a CUDA bf16 step runs (`LORATUNE_ATTENTION`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum AttentionChoice {
    /// cuDNN's fused attention where cuDNN 9 loads, else our flash kernels.
    #[default]
    Auto,
    /// cuDNN's fused attention; an error where it does not load.
    Cudnn,
    /// Our flash kernels (sm_80 and newer).
    Flash,
}

/// A batch's N = B*T tokens cut into runs that attend causally within themselves and never
/// across: one per packed example, and one per row's padding tail. `starts` holds S + 1
/// ascending token indices, from 0 to N.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Segments {
    pub starts: Vec<u32>,
}

impl Segments {
    /// Segments of a (B, T) batch from each token's example id within its row (`ids`,
    /// (B*T,), 0 for padding): a segment starts at each row's first token and wherever the
    /// id changes. A row's padding tail is one segment: its outputs are never read by a
    /// real token, so they need only be finite.
    pub fn from_example_ids(ids: &[u32], t: usize) -> Segments {
        let mut starts: Vec<u32> =
            (0..ids.len()).filter(|&at| at % t == 0 || ids[at] != ids[at - 1]).map(|at| at as u32).collect();
        starts.push(ids.len() as u32);
        Segments { starts }
    }

    pub fn count(&self) -> usize {
        self.starts.len() - 1
    }

    /// The longest segment's tokens.
    pub fn max_len(&self) -> usize {
        self.starts.windows(2).map(|w| (w[1] - w[0]) as usize).max().unwrap_or(0)
    }
}

/// B rows of T tokens, NH query heads and NKV kv heads of dim D.
#[derive(Debug, Clone, Copy)]
pub struct AttnShape {
    pub b: usize,
    pub t: usize,
    pub nh: usize,
    pub nkv: usize,
    pub d: usize,
}

#[cfg(test)]
mod tests {
    use super::Segments;

    #[test]
    fn segments_split_rows_examples_and_padding_tails() {
        // T = 5: row 0 holds examples 1 (2 tokens) and 2 (2 tokens) then one padding token;
        // row 1 one example filling it; row 2 one token then padding.
        let ids = [1, 1, 2, 2, 0, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0];
        let seg = Segments::from_example_ids(&ids, 5);
        assert_eq!(seg.starts, vec![0, 2, 4, 5, 10, 11, 15]);
        assert_eq!((seg.count(), seg.max_len()), (6, 5));
        // The same id across a row boundary still starts a segment.
        assert_eq!(Segments::from_example_ids(&[1, 1, 1, 1], 2).starts, vec![0, 2, 4]);
    }
}
