//! Frozen projection weights kept in GGUF blocks (QLoRA): 4-bit or 8-bit in memory and
//! expanded to the compute dtype only for the GEMM that needs them, then dropped. On CUDA
//! the blocks are a plain u8 tensor expanded to bf16 by our kernels (src/kernels/cuda/dequantize.cu);
//! on the CPU they stay a candle `QTensor` expanded by candle's decoders.

use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::{DType, Device, Result, Tensor};
use std::sync::Arc;

/// Block formats the CUDA kernels expand; the CPU takes any format candle reads.
pub const CUDA_FORMATS: [GgmlDType; 4] = [GgmlDType::Q4_0, GgmlDType::Q4_1, GgmlDType::Q8_0, GgmlDType::Q4K];

/// What `[model] quantize` asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Quantize {
    /// Keep a GGUF file's own blocks for every projection stored in a supported format.
    Gguf,
    /// Quantize every projection to this format at load (any source).
    To(GgmlDType),
}

impl Quantize {
    /// Every value a user can ask for, in the order of [`Quantize::NAMES`].
    pub const ALL: [Quantize; 5] = [
        Quantize::Gguf,
        Quantize::To(GgmlDType::Q4_0),
        Quantize::To(GgmlDType::Q4_1),
        Quantize::To(GgmlDType::Q4K),
        Quantize::To(GgmlDType::Q8_0),
    ];
    /// Their names, as `[model] quantize` and `--quantize` take them.
    pub const NAMES: [&'static str; 5] = ["gguf", "q4_0", "q4_1", "q4_k", "q8_0"];

    /// "gguf", "q4_0", "q4_1", "q4_k", "q8_0", in any case.
    pub fn parse(s: &str) -> std::result::Result<Self, String> {
        let lower = s.to_ascii_lowercase();
        Self::from_name(&lower)
            .ok_or_else(|| format!("quantize = \"{lower}\" is not one of gguf, q4_0, q4_1, q4_k, q8_0"))
    }

    /// The value of one of [`Quantize::NAMES`], spelled exactly.
    pub fn from_name(name: &str) -> Option<Self> {
        Self::NAMES.iter().position(|n| *n == name).map(|i| Self::ALL[i])
    }
}

impl std::fmt::Display for Quantize {
    /// Its name in [`Quantize::NAMES`] (another block format: its `Debug` form, lowercase).
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match Self::ALL.iter().position(|q| q == self) {
            Some(i) => f.write_str(Self::NAMES[i]),
            None => f.write_str(&format!("{self:?}").to_ascii_lowercase()),
        }
    }
}

impl std::str::FromStr for Quantize {
    type Err = String;

    fn from_str(s: &str) -> std::result::Result<Self, Self::Err> {
        Self::parse(s)
    }
}

impl serde::Serialize for Quantize {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for Quantize {
    /// Exactly one of [`Quantize::NAMES`] (the config's rule; `--quantize` ignores case).
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        let name = String::deserialize(d)?;
        Self::from_name(&name).ok_or_else(|| serde::de::Error::unknown_variant(&name, &Self::NAMES))
    }
}

#[derive(Debug, Clone)]
enum Blocks {
    Host(Arc<QTensor>),
    /// Raw blocks, rows one after another, and the buffer the training step expands them
    /// into (shared by every weight on the device).
    Device(Tensor, Scratch),
}

/// One bf16 buffer that the training step's expansions reuse, one weight at a time: fresh
/// temporaries of three sizes, interleaved with the saved activations, left the memory
/// pool with 1.5 GiB of blocks it could not reuse (7B QLoRA).
#[derive(Debug, Clone, Default)]
pub struct Scratch(Arc<std::sync::Mutex<Option<Tensor>>>);

impl Scratch {
    /// A (rows, cols) view of the buffer, grown when too small. The previous view's
    /// contents are overwritten by the next expansion: stream order makes that safe for
    /// GEMMs already queued, but a caller must not keep a view across another call.
    fn view(&self, rows: usize, cols: usize, device: &Device) -> Result<Tensor> {
        let mut slot = self.0.lock().expect("scratch lock");
        let n = rows * cols;
        if slot.as_ref().is_none_or(|t| t.elem_count() < n) {
            *slot = None; // free the old buffer before taking the larger one
                          // SAFETY: every element of a view is written by the expansion before it is read.
            *slot = Some(unsafe { Tensor::empty(n, DType::BF16, device)? });
        }
        slot.as_ref().expect("just set").narrow(0, 0, n)?.reshape((rows, cols))
    }
}

/// A (rows, cols) matrix in GGUF blocks, expanded to `compute` dtype on use.
#[derive(Debug, Clone)]
pub struct QuantizedWeight {
    pub format: GgmlDType,
    pub rows: usize,
    pub cols: usize,
    compute: DType,
    blocks: Blocks,
}

impl QuantizedWeight {
    /// `q`: a (rows, cols) QTensor on the CPU. On a CUDA device its blocks are uploaded
    /// (formats in [`CUDA_FORMATS`] only).
    pub fn new(q: QTensor, device: &Device, compute: DType) -> Result<Self> {
        Self::with_scratch(q, device, compute, Scratch::default())
    }

    /// As [`Self::new`], expanding into `scratch` in the training step (share one per model).
    pub fn with_scratch(q: QTensor, device: &Device, compute: DType, scratch: Scratch) -> Result<Self> {
        let (rows, cols) = q.shape().dims2()?;
        let format = q.dtype();
        let blocks = match device {
            Device::Cpu => Blocks::Host(Arc::new(q)),
            _ => {
                if !CUDA_FORMATS.contains(&format) {
                    candle_core::bail!(
                        "{format:?} blocks cannot be expanded on the GPU (supported: Q4_0, Q4_1, Q8_0, Q4_K)"
                    );
                }
                let bytes = q.data()?;
                let n = rows * cols / format.block_size() * format.type_size();
                Blocks::Device(Tensor::from_slice(&bytes[..n], n, device)?, scratch)
            }
        };
        Ok(QuantizedWeight { format, rows, cols, compute, blocks })
    }

    /// Quantizes a dense (rows, cols) matrix (any device) to `format`.
    pub fn quantize(w: &Tensor, format: GgmlDType, device: &Device, compute: DType) -> Result<Self> {
        let q = QTensor::quantize(&w.to_device(&Device::Cpu)?.to_dtype(DType::F32)?, format)?;
        Self::new(q, device, compute)
    }

    /// The matrix in the compute dtype, (rows, cols).
    pub fn dequantize(&self) -> Result<Tensor> {
        match &self.blocks {
            Blocks::Host(q) => q.dequantize(&Device::Cpu)?.to_dtype(self.compute),
            Blocks::Device(b, _) => {
                let w = dequantize_on_device(b, self.format, self.rows, None, self.cols)?;
                if self.compute == DType::BF16 {
                    Ok(w)
                } else {
                    w.to_dtype(self.compute)
                }
            }
        }
    }

    /// As [`Self::dequantize`], but on CUDA into the shared scratch buffer: the result is
    /// valid only until the next expansion of any weight of the model (the training step
    /// uses one projection's weight at a time).
    pub fn dequantize_transient(&self) -> Result<Tensor> {
        match &self.blocks {
            Blocks::Device(b, scratch) if self.compute == DType::BF16 => {
                let view = scratch.view(self.rows, self.cols, b.device())?;
                dequantize_on_device(b, self.format, self.rows, Some(&view), self.cols)
            }
            _ => self.dequantize(),
        }
    }

    /// Bytes the blocks take.
    pub fn storage_bytes(&self) -> usize {
        self.rows * self.cols / self.format.block_size() * self.format.type_size()
    }

    /// A copy with blocks of its own (device memory as separate weights would take).
    pub fn deep_copy(&self) -> Result<Self> {
        let blocks = match &self.blocks {
            Blocks::Host(q) => Blocks::Host(q.clone()),
            Blocks::Device(b, s) => Blocks::Device(b.copy()?, s.clone()),
        };
        Ok(QuantizedWeight { blocks, ..self.clone() })
    }
}

/// `into`: a (rows, cols) bf16 view to write (None: a fresh tensor).
#[cfg(feature = "cuda")]
fn dequantize_on_device(
    b: &Tensor,
    format: GgmlDType,
    rows: usize,
    into: Option<&Tensor>,
    cols: usize,
) -> Result<Tensor> {
    crate::kernels::cuda::dequantize_bf16(b, format, rows, cols, into)
}

#[cfg(not(feature = "cuda"))]
fn dequantize_on_device(_: &Tensor, _: GgmlDType, _: usize, _: Option<&Tensor>, _: usize) -> Result<Tensor> {
    candle_core::bail!("loratune was built without the cuda feature")
}

/// A frozen projection weight, (out, in): dense, or blocks expanded on use.
#[derive(Debug, Clone)]
pub enum Weight {
    Dense(Tensor),
    Quantized(QuantizedWeight),
}

impl Weight {
    /// The matrix in the compute dtype: the tensor itself, or a fresh expansion that the
    /// caller drops after use.
    pub fn dense(&self) -> Result<Tensor> {
        match self {
            Weight::Dense(t) => Ok(t.clone()),
            Weight::Quantized(q) => q.dequantize(),
        }
    }

    /// As [`Self::dense`], a quantized weight expanded into the model's shared scratch
    /// buffer: use it and let go before expanding another weight (the training step).
    pub fn dense_transient(&self) -> Result<Tensor> {
        match self {
            Weight::Dense(t) => Ok(t.clone()),
            Weight::Quantized(q) => q.dequantize_transient(),
        }
    }

    /// (out, in).
    pub fn dims2(&self) -> Result<(usize, usize)> {
        match self {
            Weight::Dense(t) => t.dims2(),
            Weight::Quantized(q) => Ok((q.rows, q.cols)),
        }
    }

    /// Bytes held in memory.
    pub fn storage_bytes(&self) -> usize {
        match self {
            Weight::Dense(t) => t.elem_count() * t.dtype().size_in_bytes(),
            Weight::Quantized(q) => q.storage_bytes(),
        }
    }
}

/// True for the seven projection weights of a decoder layer: what QLoRA keeps in blocks
/// (embeddings, norms and the LM head stay dense).
pub fn is_projection(name: &str) -> bool {
    name.starts_with("model.layers.")
        && (name.contains(".self_attn.") || name.contains(".mlp."))
        && name.ends_with("_proj.weight")
}

/// Runs `f` on every item on all cores (items interleaved over workers so large and small
/// ones spread evenly); results in item order, the first error returned.
pub(crate) fn parallel_map<T: Sync, R: Send, E: Send>(
    items: &[T],
    f: impl Fn(&T) -> std::result::Result<R, E> + Sync,
) -> std::result::Result<Vec<R>, E> {
    let workers = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1).min(items.len().max(1));
    let mut slots: Vec<Option<std::result::Result<R, E>>> = (0..items.len()).map(|_| None).collect();
    std::thread::scope(|s| {
        let handles: Vec<_> = (0..workers)
            .map(|w| {
                let f = &f;
                s.spawn(move || {
                    items.iter().enumerate().skip(w).step_by(workers).map(|(i, x)| (i, f(x))).collect::<Vec<_>>()
                })
            })
            .collect();
        for h in handles {
            for (i, r) in h.join().expect("quantize worker panicked") {
                slots[i] = Some(r);
            }
        }
    });
    slots.into_iter().map(|r| r.expect("every item done")).collect()
}

/// Replaces every projection weight of `model` by its quantization to `format` (on all
/// CPU cores; the dense copies are dropped as they are replaced).
pub fn quantize_model(model: &mut super::Llama, format: GgmlDType) -> Result<()> {
    let device = model.device().clone();
    let compute = model.dtype();
    let scratch = Scratch::default();
    for layer in &mut model.weights.layers {
        let a = &mut layer.self_attn;
        let m = &mut layer.mlp;
        let mut lins = [
            &mut a.q_proj,
            &mut a.k_proj,
            &mut a.v_proj,
            &mut a.o_proj,
            &mut m.gate_proj,
            &mut m.up_proj,
            &mut m.down_proj,
        ];
        let dense: Vec<Tensor> = lins
            .iter()
            .map(|l| l.weight.dense()?.to_device(&Device::Cpu)?.to_dtype(DType::F32))
            .collect::<Result<_>>()?;
        let q = parallel_map(&dense, |w| QTensor::quantize(w, format))?;
        for (lin, q) in lins.iter_mut().zip(q) {
            lin.weight = Weight::Quantized(QuantizedWeight::with_scratch(q, &device, compute, scratch.clone())?);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantized_weights_expand_to_candle_dequantization_on_the_cpu() {
        // Seeded: candle's CPU `randn` cannot be.
        let w = crate::model::init::init_tensor("w", &[8, 256], 0, 1.0).unwrap();
        for format in CUDA_FORMATS {
            let q = QuantizedWeight::quantize(&w, format, &Device::Cpu, DType::F32).unwrap();
            let want = QTensor::quantize(&w, format).unwrap().dequantize(&Device::Cpu).unwrap();
            let got = Weight::Quantized(q.clone()).dense().unwrap();
            assert_eq!(got.to_vec2::<f32>().unwrap(), want.to_vec2::<f32>().unwrap(), "{format:?}");
            let err = (&got - &w).unwrap().sqr().unwrap().mean_all().unwrap().to_scalar::<f32>().unwrap().sqrt();
            assert!(err > 0.0 && err < 0.15, "{format:?}: rms error {err}");
            assert_eq!(q.storage_bytes(), 8 * 256 / format.block_size() * format.type_size());
        }
        assert_eq!(Quantize::parse("Q4_K").unwrap(), Quantize::To(GgmlDType::Q4K));
        assert!(Quantize::parse("q3_k").unwrap_err().contains("q4_k"));
        for (q, name) in Quantize::ALL.into_iter().zip(Quantize::NAMES) {
            assert_eq!((q.to_string(), Quantize::parse(name).unwrap()), (name.to_string(), q));
            assert_eq!(serde_json::from_value::<Quantize>(serde_json::to_value(q).unwrap()).unwrap(), q);
        }
        assert!(serde_json::from_value::<Quantize>("Q4_K".into()).is_err(), "the config's names are exact");
    }
}
