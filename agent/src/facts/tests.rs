//! Tests of fact gathering: each fact from a root laid out like a host, what is missing reported
//! as unknown, the device-tree model trimmed of its NUL, and the real host's facts.

use super::*;

fn write(root: &Path, file: &str, bytes: &[u8]) {
    let path = root.join(file);
    std::fs::create_dir_all(path.parent().expect("has a parent")).expect("mkdir");
    std::fs::write(path, bytes).expect("write");
}

#[test]
fn every_fact_is_read_from_its_file() {
    let root = tempfile::tempdir().expect("tempdir");
    write(root.path(), "proc/sys/kernel/hostname", b"kiosk-07\n");
    write(
        root.path(),
        "proc/sys/kernel/osrelease",
        b"6.1.0-rpi7-rpi-v8\n",
    );
    write(
        root.path(),
        "proc/meminfo",
        b"MemTotal:        3884140 kB\nMemFree:          100 kB\n",
    );
    write(
        root.path(),
        "proc/device-tree/model",
        b"Raspberry Pi 4 Model B Rev 1.4\0",
    );
    write(
        root.path(),
        "etc/os-release",
        b"PRETTY_NAME=\"Debian GNU/Linux 12\"\nID=\"raspbian\"\nID_LIKE=debian\n",
    );
    let facts = gather(root.path());
    assert_eq!(facts.hostname, "kiosk-07");
    assert_eq!(facts.kernel, "6.1.0-rpi7-rpi-v8");
    assert_eq!(facts.memory_bytes, 3_884_140 * 1024);
    assert_eq!(
        facts.model.as_deref(),
        Some("Raspberry Pi 4 Model B Rev 1.4")
    );
    assert_eq!(facts.os, "raspbian");
    assert_eq!(facts.arch, std::env::consts::ARCH);
    let map = facts.to_map();
    assert_eq!(map["model"], "Raspberry Pi 4 Model B Rev 1.4");
    assert_eq!(map["memoryBytes"], (3_884_140u64 * 1024).to_string());
}

#[test]
fn missing_files_give_unknown_values_and_no_model() {
    let root = tempfile::tempdir().expect("tempdir");
    let facts = gather(root.path());
    assert_eq!(facts.hostname, UNKNOWN);
    assert_eq!(facts.kernel, UNKNOWN);
    assert_eq!(facts.memory_bytes, 0);
    assert_eq!(facts.model, None);
    assert_eq!(facts.os, std::env::consts::OS);
    assert!(!facts.to_map().contains_key("model"));
}

#[test]
fn os_release_falls_back_to_usr_lib_and_an_empty_model_is_none() {
    let root = tempfile::tempdir().expect("tempdir");
    write(
        root.path(),
        "usr/lib/os-release",
        b"NAME=Fedora\nID=fedora\n",
    );
    write(root.path(), "proc/device-tree/model", b"\0");
    let facts = gather(root.path());
    assert_eq!(facts.os, "fedora");
    assert_eq!(facts.model, None);
}

#[test]
fn meminfo_and_os_release_parsing_refuse_what_they_do_not_know() {
    assert_eq!(meminfo_total_bytes("MemTotal: 2 kB"), Some(2048));
    assert_eq!(meminfo_total_bytes("MemTotal: 2 MB"), None);
    assert_eq!(meminfo_total_bytes("MemFree: 2 kB"), None);
    assert_eq!(os_release_id("ID=''\nID=debian"), Some("debian".into()));
    assert_eq!(os_release_id("VERSION_ID=12"), None);
}

#[test]
fn this_host_reports_its_kernel_hostname_and_memory() {
    let facts = host();
    assert_ne!(facts.kernel, UNKNOWN);
    assert_ne!(facts.hostname, UNKNOWN);
    assert!(facts.memory_bytes > 0);
    assert_eq!(facts.arch, std::env::consts::ARCH);
}
