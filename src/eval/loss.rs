//! Mean next-token loss over the target tokens of a data set, and perplexity.
//!
//! The loss is summed over every target token of every example and divided once by the
//! total count, so it does not depend on batch size or example order.

use candle_core::{DType, Device, Tensor, D};
use serde::Serialize;

use crate::encode::EncodedExample;
use crate::lora::LoraWeights;
use crate::model::Llama;
use crate::train::step::{forward_nll, TrainBatch};

/// Rows of the LM head evaluated at once: bounds the f32 logits buffer to
/// `HEAD_CHUNK * vocab` floats whatever the batch shape.
const HEAD_CHUNK: usize = 1024;

/// A right-padded batch. input_ids and attention_mask: (B, T).
pub struct Batch {
    pub input_ids: Tensor,
    pub attention_mask: Tensor,
    /// Flat row indices b*T + (j-1) of the hidden states that predict a target token j.
    pub predictor_rows: Tensor,
    /// The target token for each predictor row.
    pub labels: Tensor,
    pub num_targets: usize,
    pub num_tokens: usize,
}

impl Batch {
    pub fn new(examples: &[&EncodedExample], pad_id: u32, device: &Device) -> candle_core::Result<Self> {
        let b = examples.len();
        let t = examples.iter().map(|e| e.len()).max().unwrap_or(0).max(1);
        let mut ids = vec![pad_id; b * t];
        let mut mask = vec![0u8; b * t];
        let mut rows = Vec::new();
        let mut labels = Vec::new();
        let mut num_tokens = 0;
        for (bi, e) in examples.iter().enumerate() {
            num_tokens += e.len();
            for (j, (&id, &m)) in e.input_ids.iter().zip(&e.target_mask).enumerate() {
                ids[bi * t + j] = id;
                mask[bi * t + j] = 1;
                if m == 1 && j > 0 {
                    rows.push((bi * t + j - 1) as u32);
                    labels.push(id);
                }
            }
        }
        let num_targets = rows.len();
        Ok(Batch {
            input_ids: Tensor::from_vec(ids, (b, t), device)?,
            attention_mask: Tensor::from_vec(mask, (b, t), device)?,
            predictor_rows: Tensor::from_vec(rows, num_targets, device)?,
            labels: Tensor::from_vec(labels, num_targets, device)?,
            num_targets,
            num_tokens,
        })
    }
}

/// Sum of -log p(label) over the batch's targets (f64), computed in chunks of rows.
pub fn batch_nll(model: &Llama, batch: &Batch) -> candle_core::Result<f64> {
    if batch.num_targets == 0 {
        return Ok(0.0);
    }
    let hidden = model.forward_hidden(&batch.input_ids, &batch.attention_mask)?;
    let (b, t, h) = hidden.dims3()?;
    let hidden = hidden.reshape((b * t, h))?.index_select(&batch.predictor_rows, 0)?; // (N, H)
    let mut total = 0f64;
    let mut start = 0;
    while start < batch.num_targets {
        let len = HEAD_CHUNK.min(batch.num_targets - start);
        let logits = model.lm_head(&hidden.narrow(0, start, len)?)?; // (n, V) f32
        let logp = candle_nn::ops::log_softmax(&logits, D::Minus1)?;
        let labels = batch.labels.narrow(0, start, len)?.unsqueeze(1)?;
        let picked = logp.gather(&labels, 1)?.to_dtype(DType::F64)?;
        total -= picked.sum_all()?.to_scalar::<f64>()?;
        start += len;
    }
    Ok(total)
}

#[derive(Debug, Clone, Serialize)]
pub struct LossSummary {
    pub examples: usize,
    pub examples_without_targets: usize,
    pub total_tokens: usize,
    pub target_tokens: usize,
    pub loss: f64,
    pub perplexity: f64,
    pub seconds: f64,
    pub tokens_per_second: f64,
}

/// Evaluates `examples` in batches of `batch_size` (grouped by length to limit padding),
/// with `adapter` applied when given (through the training step's forward, the same code
/// that trained it). `on_batch(done, total)` reports progress.
pub fn evaluate(
    model: &Llama,
    adapter: Option<&LoraWeights>,
    examples: &[EncodedExample],
    batch_size: usize,
    pad_id: u32,
    mut on_batch: impl FnMut(usize, usize),
) -> candle_core::Result<LossSummary> {
    let start = std::time::Instant::now();
    let mut order: Vec<usize> = (0..examples.len()).collect();
    order.sort_by_key(|&i| std::cmp::Reverse(examples[i].len()));
    let (mut nll, mut targets, mut tokens) = (0f64, 0usize, 0usize);
    let batch_size = batch_size.max(1);
    for (k, chunk) in order.chunks(batch_size).enumerate() {
        let refs: Vec<&EncodedExample> = chunk.iter().map(|&i| &examples[i]).collect();
        let (batch_sum, batch_targets, batch_tokens) = match adapter {
            None => {
                let batch = Batch::new(&refs, pad_id, model.device())?;
                (batch_nll(model, &batch)?, batch.num_targets, batch.num_tokens)
            }
            Some(lora) => {
                let rows: Vec<Vec<&EncodedExample>> = refs.iter().map(|e| vec![*e]).collect();
                let batch = TrainBatch::new(&rows, pad_id, model.device())?;
                (forward_nll(model, lora, &batch)?, batch.num_targets, batch.num_tokens)
            }
        };
        nll += batch_sum;
        targets += batch_targets;
        tokens += batch_tokens;
        on_batch(((k + 1) * batch_size).min(examples.len()), examples.len());
    }
    let seconds = start.elapsed().as_secs_f64();
    let loss = if targets > 0 { nll / targets as f64 } else { f64::NAN };
    Ok(LossSummary {
        examples: examples.len(),
        examples_without_targets: examples.iter().filter(|e| e.num_targets() == 0).count(),
        total_tokens: tokens,
        target_tokens: targets,
        loss,
        perplexity: loss.exp(),
        seconds,
        tokens_per_second: tokens as f64 / seconds.max(1e-9),
    })
}
