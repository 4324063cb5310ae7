//! Stand-ins for the CUDA launchers in builds without the `cuda` feature, so that callers'
//! CUDA branches type-check; `train::ops::cuda_bf16` is false there, so none of these runs.

use candle_core::{bail, Result, Tensor};
const NO_CUDA: &str = "loratune was built without the cuda feature";
pub fn rms_norm_forward(_: &Tensor, _: &Tensor, _: f64) -> Result<(Tensor, Tensor)> {
    bail!("{NO_CUDA}")
}
pub fn rms_norm_backward(_: &Tensor, _: &Tensor, _: &Tensor, _: &Tensor, _: Option<&Tensor>) -> Result<Tensor> {
    bail!("{NO_CUDA}")
}
pub fn rope(_: &Tensor, _: &Tensor, _: &Tensor, _: usize, _: bool) -> Result<Tensor> {
    bail!("{NO_CUDA}")
}
pub fn swiglu_forward(_: &Tensor, _: &Tensor) -> Result<Tensor> {
    bail!("{NO_CUDA}")
}
pub fn swiglu_backward(_: Tensor, _: &Tensor, _: Tensor) -> Result<(Tensor, Tensor)> {
    bail!("{NO_CUDA}")
}
pub fn cross_entropy(_: &Tensor, _: &Tensor, _: f64) -> Result<(Tensor, Tensor)> {
    bail!("{NO_CUDA}")
}
pub fn matmul_accumulate(_: &Tensor, _: &Tensor, _: &Tensor, _: bool) -> Result<()> {
    bail!("{NO_CUDA}")
}
pub fn add(_: &Tensor, _: &Tensor) -> Result<Tensor> {
    bail!("{NO_CUDA}")
}
pub fn add_rms_norm_forward(_: &Tensor, _: &Tensor, _: &Tensor, _: f64) -> Result<(Tensor, Tensor, Tensor)> {
    bail!("{NO_CUDA}")
}
pub fn flash_supported(_: usize) -> bool {
    false
}
pub fn flash_attention_forward(
    _: &Tensor,
    _: &Tensor,
    _: &Tensor,
    _: &Tensor,
    _: super::AttnShape,
) -> Result<(Tensor, Tensor)> {
    bail!("{NO_CUDA}")
}
#[allow(clippy::too_many_arguments)]
pub fn flash_attention_backward(
    _: &Tensor,
    _: &Tensor,
    _: &Tensor,
    _: &Tensor,
    _: &Tensor,
    _: &Tensor,
    _: &Tensor,
    _: super::AttnShape,
) -> Result<(Tensor, Tensor, Tensor)> {
    bail!("{NO_CUDA}")
}
pub fn elapsed_ms<T>(_: &candle_core::Device, _: impl FnOnce() -> Result<T>) -> Result<f64> {
    bail!("{NO_CUDA}")
}
