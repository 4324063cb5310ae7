//! The environment variables loratune reads, read once by the command line at start
//! into [`EnvKnobs`] (a bad value is an error there) and handed down as plain values. A
//! training run records them in its manifest (`run.json`, key `environment`).
//! configs/README.md ("Environment") documents each one.
//!
//! A variable set to the empty string counts as unset.

use anyhow::{bail, Result};
use serde::{Deserialize, Serialize};

use crate::distributed::{Collectives, NodeEnv, RankEnv, COLLECTIVES_VAR, TIMEOUT_VAR};
pub use crate::kernels::AttentionChoice;
pub use crate::model::hub::HubKnobs;

/// Warps per flash-attention block on CUDA: 4 (the default) or 8.
pub const FLASH_WARPS_VAR: &str = "LORATUNE_FLASH_WARPS";
/// Attention kernels on CUDA: `auto` (cuDNN where it loads), `cudnn` or `flash`.
pub const ATTENTION_VAR: &str = "LORATUNE_ATTENTION";
/// The cuDNN 9 library to load (default: `libcudnn.so.9` from the loader's path).
pub const CUDNN_LIB_VAR: &str = "LORATUNE_CUDNN_LIB";
/// Threads of candle's element-wise CPU pool.
pub const NUM_THREADS_VAR: &str = "CANDLE_NUM_THREADS";

/// Every environment variable loratune reads, parsed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EnvKnobs {
    /// `LORATUNE_FLASH_WARPS`: warps per flash-attention block on CUDA, 4 (default) or 8.
    /// More rows per block share each tile loaded into shared memory; fewer give more
    /// blocks per multiprocessor.
    pub flash_warps: usize,
    /// `LORATUNE_ATTENTION`: the attention kernels of CUDA bf16 steps: `auto` (default:
    /// cuDNN's fused attention where cuDNN 9 loads, else ours), `cudnn` (an error where it
    /// does not load) or `flash` (ours).
    #[serde(default)]
    pub attention: AttentionChoice,
    /// `LORATUNE_CUDNN_LIB`: the cuDNN library file to load; `None`: `libcudnn.so.9` from
    /// the loader's path (LD_LIBRARY_PATH).
    #[serde(default)]
    pub cudnn_lib: Option<String>,
    /// `CANDLE_NUM_THREADS`: threads of candle's element-wise CPU pool (0: all cores).
    /// `None`: unset (the command line then sets 1, see `cli::run`).
    pub candle_num_threads: Option<usize>,
    /// `LORATUNE_COLLECTIVES`: how GPU ranks sum their gradients, `nccl` (default) or `host`.
    pub collectives: Collectives,
    /// `LORATUNE_RENDEZVOUS_TIMEOUT`: seconds the ranks of a group wait for each other to
    /// connect (default 600).
    pub rendezvous_timeout_s: u64,
    /// `RANK`, `WORLD_SIZE`, `LOCAL_RANK`, `MASTER_ADDR`, `MASTER_PORT`: this process's place
    /// in a group of ranks; `None` when `WORLD_SIZE` is unset (a process of its own).
    pub rank: Option<RankEnv>,
    /// `NNODES`, `NODE_RANK` (and `MASTER_ADDR`, `MASTER_PORT`): the machines a `--gpus N`
    /// launcher's group spans.
    pub node: NodeEnv,
    /// The Hugging Face hub variables.
    pub hub: HubKnobs,
}

/// A variable's value, `None` when unset or empty.
type Vars<'a> = &'a dyn Fn(&str) -> Option<String>;

fn var(get: Vars, name: &str) -> Option<String> {
    get(name).filter(|v| !v.is_empty())
}

impl EnvKnobs {
    /// The knobs of this process's environment.
    pub fn from_env() -> Result<EnvKnobs> {
        Self::from_vars(&|k| std::env::var(k).ok())
    }

    /// The knobs of the variables `get` returns.
    pub fn from_vars(get: Vars) -> Result<EnvKnobs> {
        let rank = RankEnv::from_vars(get)?;
        let node = NodeEnv::from_vars(get)?;
        let flash_warps = match var(get, FLASH_WARPS_VAR).as_deref() {
            None | Some("4") => 4,
            Some("8") => 8,
            Some(other) => bail!("{FLASH_WARPS_VAR}={other}: expected 4 or 8 (warps per flash-attention block)"),
        };
        let attention = match var(get, ATTENTION_VAR).as_deref() {
            None | Some("auto") => AttentionChoice::Auto,
            Some("cudnn") => AttentionChoice::Cudnn,
            Some("flash") => AttentionChoice::Flash,
            Some(other) => bail!("{ATTENTION_VAR}={other}: expected auto, cudnn or flash"),
        };
        let candle_num_threads = match var(get, NUM_THREADS_VAR) {
            None => None,
            Some(v) => Some(
                v.trim()
                    .parse()
                    .map_err(|_| anyhow::anyhow!("{NUM_THREADS_VAR}={v}: not a non-negative whole number"))?,
            ),
        };
        let collectives = match var(get, COLLECTIVES_VAR).as_deref() {
            None | Some("nccl") => Collectives::Nccl,
            Some("host") => Collectives::Host,
            Some(other) => bail!("{COLLECTIVES_VAR}={other}: expected host or nccl"),
        };
        let rendezvous_timeout_s = match var(get, TIMEOUT_VAR) {
            None => 600,
            Some(v) => v.trim().parse().map_err(|_| anyhow::anyhow!("{TIMEOUT_VAR}={v}: not a number of seconds"))?,
        };
        Ok(EnvKnobs {
            flash_warps,
            attention,
            cudnn_lib: var(get, CUDNN_LIB_VAR),
            candle_num_threads,
            collectives,
            rendezvous_timeout_s,
            rank,
            node,
            hub: HubKnobs::from_vars(get),
        })
    }
}

impl Default for EnvKnobs {
    /// No variable set.
    fn default() -> Self {
        Self::from_vars(&|_| None).expect("the defaults are valid")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;
    use std::path::PathBuf;

    fn knobs(pairs: &[(&str, &str)]) -> Result<EnvKnobs> {
        let m: HashMap<String, String> = pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        EnvKnobs::from_vars(&move |k| m.get(k).cloned())
    }

    #[test]
    fn unset_variables_give_the_defaults() {
        let k = knobs(&[]).unwrap();
        assert_eq!(k, EnvKnobs::default());
        assert_eq!((k.flash_warps, k.candle_num_threads, k.collectives), (4, None, Collectives::Nccl));
        assert_eq!((k.rendezvous_timeout_s, k.rank.as_ref(), k.node.nnodes), (600, None, 1));
        assert_eq!(k.hub, HubKnobs::default());
        // Empty is unset.
        assert_eq!((k.attention, k.cudnn_lib.as_deref()), (AttentionChoice::Auto, None));
        assert_eq!(
            knobs(&[(FLASH_WARPS_VAR, ""), (COLLECTIVES_VAR, ""), (TIMEOUT_VAR, ""), (ATTENTION_VAR, "")]).unwrap(),
            k
        );
    }

    #[test]
    fn values_are_read_and_bad_ones_named() {
        let k = knobs(&[
            (FLASH_WARPS_VAR, "8"),
            (NUM_THREADS_VAR, "2"),
            (COLLECTIVES_VAR, "host"),
            (TIMEOUT_VAR, "30"),
            ("RANK", "1"),
            ("WORLD_SIZE", "2"),
            ("HF_HOME", "/h"),
            ("HF_HUB_OFFLINE", "1"),
            (ATTENTION_VAR, "flash"),
            (CUDNN_LIB_VAR, "/opt/cudnn/libcudnn.so.9"),
        ])
        .unwrap();
        assert_eq!((k.attention, k.cudnn_lib.as_deref()), (AttentionChoice::Flash, Some("/opt/cudnn/libcudnn.so.9")));
        assert_eq!(knobs(&[(ATTENTION_VAR, "cudnn")]).unwrap().attention, AttentionChoice::Cudnn);
        assert_eq!((k.flash_warps, k.candle_num_threads, k.collectives), (8, Some(2), Collectives::Host));
        assert_eq!((k.rendezvous_timeout_s, k.rank.as_ref().map(|r| r.rank)), (30, Some(1)));
        let hub = k.hub.options();
        assert_eq!((hub.cache_dir, hub.offline), (PathBuf::from("/h/hub"), true));
        let hub = knobs(&[("HF_HOME", "/h"), ("HF_HUB_CACHE", "/c")]).unwrap().hub.options();
        assert_eq!((hub.cache_dir, hub.offline), (PathBuf::from("/c"), false));
        for (pairs, says) in [
            ((FLASH_WARPS_VAR, "16"), "LORATUNE_FLASH_WARPS=16: expected 4 or 8"),
            ((NUM_THREADS_VAR, "many"), "CANDLE_NUM_THREADS=many: not a non-negative whole number"),
            ((COLLECTIVES_VAR, "mpi"), "LORATUNE_COLLECTIVES=mpi: expected host or nccl"),
            ((TIMEOUT_VAR, "1m"), "LORATUNE_RENDEZVOUS_TIMEOUT=1m: not a number of seconds"),
            ((ATTENTION_VAR, "fa3"), "LORATUNE_ATTENTION=fa3: expected auto, cudnn or flash"),
            (("RANK", "0"), "RANK is set but WORLD_SIZE is not"),
        ] {
            let e = knobs(&[pairs]).unwrap_err().to_string();
            assert!(e.starts_with(says), "{e}");
        }
    }

    #[test]
    fn knobs_round_trip_through_json() {
        let k = knobs(&[("WORLD_SIZE", "2"), ("RANK", "0"), ("HF_HUB_CACHE", "/c")]).unwrap();
        let json = serde_json::to_value(&k).unwrap();
        assert_eq!(json["collectives"], "nccl");
        assert_eq!(json["rank"]["world_size"], 2);
        assert_eq!(serde_json::from_value::<EnvKnobs>(json).unwrap(), k);
    }
}
