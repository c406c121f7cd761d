//! Where cai computes: one rule for inference and training.
//!
//! Built with the `cuda` feature and with a GPU present, every stage runs on the first CUDA
//! device; otherwise on the CPU. `CAI_DEVICE=cpu` forces the CPU on a CUDA build and
//! `CAI_DEVICE=cuda` makes a missing GPU an error instead of a silent fallback.

use anyhow::{bail, Context, Result};
use candle_core::Device;

/// The environment variable that overrides the choice.
pub const DEVICE_ENV: &str = "CAI_DEVICE";

/// The device named by `CAI_DEVICE` (`auto` when unset).
pub fn compute_device() -> Result<Device> {
    let choice = std::env::var(DEVICE_ENV).unwrap_or_default();
    pick(choice.trim())
}

fn pick(choice: &str) -> Result<Device> {
    match choice {
        "cpu" => Ok(Device::Cpu),
        "" | "auto" => Ok(cuda().unwrap_or(Device::Cpu)),
        "cuda" | "gpu" => {
            cuda().with_context(|| format!("{DEVICE_ENV}=cuda: no usable CUDA device"))
        }
        other => bail!("{DEVICE_ENV}={other}: expected `auto`, `cpu` or `cuda`"),
    }
}

#[cfg(feature = "cuda")]
fn cuda() -> Result<Device> {
    Ok(Device::new_cuda(0)?)
}

#[cfg(not(feature = "cuda"))]
fn cuda() -> Result<Device> {
    bail!("this cai was built without the `cuda` feature (cargo build --features cuda)")
}

/// A short name for logs and manifests: `cpu` or `cuda:0`.
pub fn describe(device: &Device) -> String {
    match device {
        Device::Cpu => "cpu".to_string(),
        Device::Cuda(_) => "cuda:0".to_string(),
        Device::Metal(_) => "metal".to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_is_always_available_and_bad_names_are_refused() {
        assert!(pick("cpu").unwrap().is_cpu());
        let err = pick("tpu").unwrap_err().to_string();
        assert!(err.contains("CAI_DEVICE=tpu"), "{err}");
        // Without a GPU `auto` falls back to the CPU and `cuda` is an error that says why.
        #[cfg(not(feature = "cuda"))]
        {
            assert!(pick("auto").unwrap().is_cpu());
            let err = format!("{:#}", pick("cuda").unwrap_err());
            assert!(err.contains("without the `cuda` feature"), "{err}");
        }
    }
}
