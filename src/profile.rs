//! Per-operation timing of the training step (`loratune bench --profile`). Each named
//! region runs between two device synchronizations, so on a GPU its figure is the device
//! time of that region's kernels, not of their launch. Off unless asked for: the
//! synchronizations cost throughput, so profiled steps are slower than plain ones.

use candle_core::{Device, Result};
use std::cell::RefCell;
use std::collections::BTreeMap;
use std::time::Instant;

#[derive(Debug)]
pub struct Profiler {
    device: Device,
    /// name -> (seconds, calls)
    totals: RefCell<BTreeMap<&'static str, (f64, usize)>>,
}

/// One region's share of the profiled time.
#[derive(Debug, Clone, serde::Serialize)]
pub struct RegionTime {
    pub name: &'static str,
    pub seconds: f64,
    pub calls: usize,
}

impl Profiler {
    pub fn new(device: &Device) -> Self {
        Profiler { device: device.clone(), totals: RefCell::new(BTreeMap::new()) }
    }

    /// Runs `f` as the region `name`.
    pub fn time<T>(&self, name: &'static str, f: impl FnOnce() -> Result<T>) -> Result<T> {
        self.device.synchronize()?;
        let t = Instant::now();
        let out = f()?;
        self.device.synchronize()?;
        let mut totals = self.totals.borrow_mut();
        let e = totals.entry(name).or_insert((0.0, 0));
        e.0 += t.elapsed().as_secs_f64();
        e.1 += 1;
        Ok(out)
    }

    /// Regions by total time, largest first.
    pub fn report(&self) -> Vec<RegionTime> {
        let mut v: Vec<RegionTime> =
            self.totals.borrow().iter().map(|(&name, &(seconds, calls))| RegionTime { name, seconds, calls }).collect();
        v.sort_by(|a, b| b.seconds.total_cmp(&a.seconds));
        v
    }

    pub fn reset(&self) {
        self.totals.borrow_mut().clear();
    }
}

/// Runs `f` as region `name` of `profiler`, or just runs it.
pub fn timed<T>(profiler: Option<&Profiler>, name: &'static str, f: impl FnOnce() -> Result<T>) -> Result<T> {
    match profiler {
        Some(p) => p.time(name, f),
        None => f(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn regions_accumulate_time_and_calls_and_sort_by_time() {
        let p = Profiler::new(&Device::Cpu);
        for _ in 0..3 {
            p.time("short", || Ok(())).unwrap();
        }
        let v = p.time("long", || {
            std::thread::sleep(std::time::Duration::from_millis(20));
            Ok(7)
        });
        assert_eq!(v.unwrap(), 7);
        let r = p.report();
        assert_eq!(r.iter().map(|x| (x.name, x.calls)).collect::<Vec<_>>(), [("long", 1), ("short", 3)]);
        assert!(r[0].seconds >= 0.02);
        let err = timed(Some(&p), "failing", || -> Result<()> { candle_core::bail!("boom") }).unwrap_err();
        assert!(err.to_string().contains("boom"));
        p.reset();
        assert!(p.report().is_empty());
    }
}
