//! Stand-ins for `cudnn.rs` in builds without the `cuda` feature: nothing loads, so
//! [`enabled`] is false and the callers' cuDNN branches never run.

use candle_core::{bail, Device, Result, Tensor};

use super::{AttentionChoice, AttnShape, Segments};

const NO_CUDA: &str = "loratune was built without the cuda feature";

pub fn set_choice(_: AttentionChoice, _: Option<String>) {}

pub fn enabled(_: &Device) -> Result<bool> {
    Ok(false)
}

#[derive(Debug)]
pub struct SegmentTensors;

impl SegmentTensors {
    pub fn new(_: &Segments, _: AttnShape, _: &Device) -> Result<SegmentTensors> {
        bail!("{NO_CUDA}")
    }

    pub fn supported(&self, _: &AttnShape) -> bool {
        false
    }
}

pub fn sdpa_forward(_: &Tensor, _: &Tensor, _: &Tensor, _: &SegmentTensors, _: AttnShape) -> Result<(Tensor, Tensor)> {
    bail!("{NO_CUDA}")
}

#[allow(clippy::too_many_arguments)]
pub fn sdpa_backward(
    _: &Tensor,
    _: &Tensor,
    _: &Tensor,
    _: &Tensor,
    _: &Tensor,
    _: &Tensor,
    _: &SegmentTensors,
    _: AttnShape,
) -> Result<(Tensor, Tensor, Tensor)> {
    bail!("{NO_CUDA}")
}
