//! The checks around a unit: its name, what its file holds, whether its text installs it, and
//! whether systemd loaded it from the agent's file; and the details reported from what systemd
//! says.

use super::*;

/// Checks the unit name again although the manifest was validated: the name becomes a file
/// name and a `systemctl` argument, so the agent does not take that on trust (defence in depth).
pub(super) fn check_unit_name(name: &str) -> Result<UnitName, SystemdUnitError> {
    let unit = UnitName::try_from(name).map_err(|error| SystemdUnitError::InvalidName {
        unit: name.to_owned(),
        message: error.to_string(),
    })?;
    if name.contains('/') || name.starts_with('-') || name.starts_with('.') {
        return Err(SystemdUnitError::InvalidName {
            unit: name.to_owned(),
            message: "must be a plain file name".into(),
        });
    }
    Ok(unit)
}

pub(super) fn abs_path(unit: &UnitName, path: &Path) -> Result<AbsPath, SystemdUnitError> {
    AbsPath::try_from(path.display().to_string().as_str()).map_err(|error| {
        SystemdUnitError::UnitDir {
            unit: unit.to_string(),
            dir: path
                .parent()
                .map(|dir| dir.display().to_string())
                .unwrap_or_default(),
            message: format!("{error} (it must be absolute and normalised)"),
        }
    })
}

/// Reads what is at a unit file's path: the file is opened in its directory without following a
/// link (and read through that descriptor, so a link swapped in after the check is not read).
pub(super) fn read_existing(
    path: &Path,
    marker: &str,
    unit: &str,
) -> Result<Existing, SystemdUnitError> {
    let failed = |source: FileError| SystemdUnitError::File {
        unit: unit.to_owned(),
        source,
    };
    let io_error =
        |action: &'static str, errno: Errno| failed(FileError::io(path, action, errno.into()));
    let (Some(unit_dir), Some(name)) = (path.parent(), path.file_name()) else {
        return Ok(Existing::Foreign {
            why: "it is not a file name in a directory".into(),
        });
    };
    let root = match confined::open_root(unit_dir, "open the unit dir") {
        Ok(root) => root,
        Err(ConfinedError::Os {
            errno: Errno::ENOENT,
            ..
        }) => return Ok(Existing::Missing),
        Err(error) => return Err(failed(error.into())),
    };
    let not_regular = || Existing::Foreign {
        why: "it is not a regular file".into(),
    };
    let file = match confined::open_file_at(&root, name, OFlag::O_NONBLOCK) {
        Ok(fd) => File::from(fd),
        Err(Errno::ENOENT) => return Ok(Existing::Missing),
        Err(errno) => {
            // Say what is in the way: a link, or something that cannot be opened for reading.
            return match fstatat(&root, name, AtFlags::AT_SYMLINK_NOFOLLOW) {
                Ok(stat) if confined::file_type(&stat) == SFlag::S_IFLNK => Ok(Existing::Foreign {
                    why: "it is a symbolic link".into(),
                }),
                Ok(stat) if confined::file_type(&stat) != SFlag::S_IFREG => Ok(not_regular()),
                _ => Err(io_error("read", errno)),
            };
        }
    };
    let metadata = file
        .metadata()
        .map_err(|error| failed(FileError::io(path, "read", error)))?;
    if !metadata.is_file() {
        return Ok(not_regular());
    }
    let mut bytes = Vec::new();
    file.take(MAX_UNIT_FILE_READ)
        .read_to_end(&mut bytes)
        .map_err(|error| failed(FileError::io(path, "read", error)))?;
    let text = String::from_utf8_lossy(&bytes).into_owned();
    if text.lines().next() != Some(marker) {
        return Ok(Existing::Foreign {
            why: "its first line is not this agent's marker for this resource".into(),
        });
    }
    Ok(Existing::Ours { text })
}

/// Whether a unit's text gives `systemctl enable` something to do: an `[Install]` section with
/// at least one directive that installs the unit somewhere. Without one systemd calls the unit
/// "static" and `enable` does nothing.
pub(super) fn installable(text: &str) -> bool {
    let mut in_install = false;
    for line in text.lines().map(str::trim) {
        if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
            continue;
        }
        if line.starts_with('[') {
            in_install = line == "[Install]";
            continue;
        }
        if let Some((key, value)) = line.split_once('=')
            && in_install
            && matches!(
                key.trim(),
                "WantedBy" | "RequiredBy" | "UpheldBy" | "Alias" | "Also"
            )
            && !value.trim().is_empty()
        {
            return true;
        }
    }
    false
}

/// The unit must be loaded, and from the agent's file: a same-named unit earlier in the search
/// path would otherwise be driven in its place.
pub(super) fn check_loaded(
    unit: &UnitName,
    path: &Path,
    observed: &UnitObservation,
) -> Result<(), SystemdUnitError> {
    if observed.load_state != "loaded" {
        return Err(SystemdUnitError::NotLoaded {
            unit: unit.to_string(),
            load_state: observed.load_state.clone(),
            dir: path
                .parent()
                .map(|dir| dir.display().to_string())
                .unwrap_or_default(),
        });
    }
    if !observed.fragment_path.is_empty() && Path::new(&observed.fragment_path) != path {
        return Err(SystemdUnitError::Shadowed {
            unit: unit.to_string(),
            path: path.display().to_string(),
            fragment: observed.fragment_path.clone(),
        });
    }
    Ok(())
}

pub(super) fn unit_failed(unit: &UnitName, observed: &UnitObservation) -> SystemdUnitError {
    SystemdUnitError::UnitFailed {
        unit: unit.to_string(),
        result: observed.result.clone(),
        active_state: observed.active_state.clone(),
        sub_state: observed.sub_state.clone(),
    }
}

pub(super) fn details_of(observed: &UnitObservation) -> SystemdUnitDetails {
    let non_empty = |value: &str| (!value.is_empty()).then(|| value.to_owned());
    SystemdUnitDetails {
        active_state: observed.active_state.clone(),
        sub_state: observed.sub_state.clone(),
        main_pid: observed.main_pid,
        n_restarts: observed.n_restarts,
        enabled: observed.is_enabled(),
        result: non_empty(&observed.result),
        unit_file_state: non_empty(&observed.unit_file_state),
    }
}
