//! Stand-in for `offload.rs` in builds without the `cuda` feature: there is no GPU memory
//! to offload from, so a stash cannot be made and the step keeps checkpoints in place.

use candle_core::{bail, DType, Device, Result, Tensor};

pub struct HostStash;

/// No stash is ever made here, so no host memory is asked for.
pub fn host_bytes_available() -> Option<usize> {
    None
}

impl HostStash {
    pub fn new(_: &Device, _: usize, _: &[usize], _: DType) -> Result<HostStash> {
        bail!("offloading checkpoints needs the cuda feature")
    }
    pub fn store(&mut self, _: usize, _: &Tensor) -> Result<()> {
        unreachable!("no stash without the cuda feature")
    }
    pub fn fence(&self, _: usize) -> Result<()> {
        unreachable!("no stash without the cuda feature")
    }
    pub fn prefetch(&mut self, _: usize) -> Result<()> {
        unreachable!("no stash without the cuda feature")
    }
    pub fn take(&mut self, _: usize) -> Result<Tensor> {
        unreachable!("no stash without the cuda feature")
    }
}
