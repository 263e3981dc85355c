//! What Container resources may ask of the host, and which runtime they use: the operator's
//! settings, and the refusal of privileged mode, host namespaces and devices they do not allow.

use std::path::PathBuf;

use fleetlet_manifests::{AbsPath, ContainerSpec, ResourceId};

use super::ContainerError;
use crate::runtime::{CliRuntime, ConfiguredRuntime, RuntimeFlavor};

/// Which runtime Container resources use, from the agent's configuration.
#[derive(Debug, Clone, Default)]
pub struct ContainerSettings {
    /// `None`: no runtime (`FLEETLET_CONTAINER_RUNTIME=none`); every container then fails with
    /// `RuntimeUnavailable`.
    pub runtime: Option<RuntimeFlavor>,
    /// The runtime's binary, when not `podman` or `docker` on `PATH`.
    pub runtime_path: Option<PathBuf>,
    /// What containers may ask of the host; nothing unless the operator allows it.
    pub host_access: HostAccess,
}

/// Host access the operator lets Container resources have (`FLEETLET_ALLOW_PRIVILEGED`,
/// `FLEETLET_ALLOW_HOST_NETWORK`, `FLEETLET_ALLOW_HOST_PID`, `FLEETLET_ALLOWED_DEVICES`). The
/// default allows nothing: each of these lets whoever writes manifests take over the device.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HostAccess {
    pub privileged: bool,
    pub host_network: bool,
    pub host_pid: bool,
    /// Device paths a container may be given, matched exactly (no prefixes, links are not
    /// resolved): `/dev/ttyUSB0` allows that path and nothing else.
    pub devices: Vec<AbsPath>,
}

impl ContainerSettings {
    pub fn runtime(&self) -> ConfiguredRuntime {
        match self.runtime {
            Some(flavor) => {
                ConfiguredRuntime::Cli(CliRuntime::new(flavor, self.runtime_path.clone()))
            }
            None => ConfiguredRuntime::Disabled,
        }
    }
}

/// Refuses a spec that asks for access to the host that the agent's configuration does not
/// allow: privileged mode, the host's network or PID namespace, or host devices not on the
/// allowed list. Each would let whoever writes manifests take over the device, so none reaches
/// the runtime unless the operator allowed it; the refusal names what was asked and the setting
/// that would allow it.
pub(super) fn refuse_host_access(
    id: &ResourceId,
    spec: &ContainerSpec,
    allowed: &HostAccess,
) -> Result<(), ContainerError> {
    let mut asked = Vec::new();
    if spec.privileged && !allowed.privileged {
        asked.push("privileged mode (allowed by FLEETLET_ALLOW_PRIVILEGED)".to_owned());
    }
    if spec.host_network && !allowed.host_network {
        asked.push("the host network (allowed by FLEETLET_ALLOW_HOST_NETWORK)".to_owned());
    }
    if spec.host_pid && !allowed.host_pid {
        asked.push("the host PID namespace (allowed by FLEETLET_ALLOW_HOST_PID)".to_owned());
    }
    let devices: Vec<&str> = spec
        .devices
        .iter()
        .filter(|device| !allowed.devices.contains(device))
        .map(|device| device.as_str())
        .collect();
    if !devices.is_empty() {
        asked.push(format!(
            "host devices {} (not listed in FLEETLET_ALLOWED_DEVICES)",
            devices.join(", ")
        ));
    }
    if asked.is_empty() {
        Ok(())
    } else {
        Err(ContainerError::NotAllowed {
            id: id.clone(),
            what: asked.join(" and "),
        })
    }
}
