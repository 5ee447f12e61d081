//! Which device runs the model: [`DeviceChoice`] is what a config file or flag says,
//! [`DeviceChoice::resolve`] turns it into a candle [`Device`].
//! [`Engine::load`](crate::Engine::load) resolves it before loading; only the CPU takes the
//! batched runtime.
//!
//! CUDA support is compiled only with the crate's `cuda` feature; without it `Auto`
//! always means CPU and `Cuda` is an error ([`LoadError::CudaNotCompiled`]).

use std::fmt;
use std::str::FromStr;

use candle_core::Device;
use serde::{Deserialize, Serialize};

use crate::error::LoadError;

/// Where to run a model.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DeviceChoice {
    /// CUDA device 0 if this build has the `cuda` feature and a GPU is present, else CPU.
    #[default]
    Auto,
    /// The CPU.
    Cpu,
    /// CUDA device 0; an error if unavailable.
    Cuda,
}

impl DeviceChoice {
    /// Opens the chosen device.
    pub fn resolve(self) -> Result<Device, LoadError> {
        match self {
            DeviceChoice::Cpu => Ok(Device::Cpu),
            DeviceChoice::Cuda => open_cuda(),
            DeviceChoice::Auto => {
                if cfg!(feature = "cuda") && candle_core::utils::cuda_is_available() {
                    open_cuda()
                } else {
                    Ok(Device::Cpu)
                }
            }
        }
    }
}

#[cfg(feature = "cuda")]
fn open_cuda() -> Result<Device, LoadError> {
    Device::new_cuda(0).map_err(|e| LoadError::Device(e.to_string()))
}

#[cfg(not(feature = "cuda"))]
fn open_cuda() -> Result<Device, LoadError> {
    Err(LoadError::CudaNotCompiled)
}

/// A short human name for a device: `cpu` or `cuda:N`.
pub(crate) fn device_name(device: &Device) -> String {
    match device.location() {
        candle_core::DeviceLocation::Cpu => "cpu".to_string(),
        candle_core::DeviceLocation::Cuda { gpu_id } => format!("cuda:{gpu_id}"),
        candle_core::DeviceLocation::Metal { gpu_id } => format!("metal:{gpu_id}"),
    }
}

impl fmt::Display for DeviceChoice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            DeviceChoice::Auto => "auto",
            DeviceChoice::Cpu => "cpu",
            DeviceChoice::Cuda => "cuda",
        })
    }
}

/// The error of parsing a [`DeviceChoice`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown device {0:?}: expected auto, cpu or cuda")]
pub struct ParseDeviceError(pub String);

impl FromStr for DeviceChoice {
    type Err = ParseDeviceError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().as_str() {
            "auto" => Ok(DeviceChoice::Auto),
            "cpu" => Ok(DeviceChoice::Cpu),
            "cuda" | "gpu" => Ok(DeviceChoice::Cuda),
            _ => Err(ParseDeviceError(s.to_string())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_displays() {
        for c in [DeviceChoice::Auto, DeviceChoice::Cpu, DeviceChoice::Cuda] {
            assert_eq!(c.to_string().parse::<DeviceChoice>(), Ok(c));
        }
        assert_eq!("CPU".parse::<DeviceChoice>(), Ok(DeviceChoice::Cpu));
        assert!("tpu".parse::<DeviceChoice>().is_err());
    }

    #[test]
    fn cpu_resolves_and_auto_works_everywhere() {
        assert!(DeviceChoice::Cpu.resolve().unwrap().is_cpu());
        assert!(DeviceChoice::Auto.resolve().is_ok());
    }

    #[cfg(not(feature = "cuda"))]
    #[test]
    fn cuda_without_feature_is_a_clear_error() {
        assert!(matches!(
            DeviceChoice::Cuda.resolve(),
            Err(LoadError::CudaNotCompiled)
        ));
    }
}
