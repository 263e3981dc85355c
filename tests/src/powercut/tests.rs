//! The model alone: what survives a reboot.

use std::ffi::OsStr;

use super::model::{Content, Model, ROOT};

fn file(model: &Model, dir: u64, name: &str) -> Option<Vec<u8>> {
    let ino = model.lookup(dir, OsStr::new(name)).ok()?;
    match &model.node(ino).ok()?.live {
        Content::File(data) => Some(data.clone()),
        _ => None,
    }
}

/// Creates the file `name` in the root and writes `data` into it, syncing neither: its inode.
fn write_new(model: &mut Model, name: &str, data: &[u8]) -> u64 {
    let ino = model
        .create(ROOT, OsStr::new(name), Content::File(vec![]), 0o644, 0, 0)
        .expect("the model answers");
    model.write(ino, 0, data).expect("the model answers");
    ino
}

/// Syncs `ino`, then the root: its data and its entry become durable.
fn sync_file_and_root(model: &mut Model, ino: u64) {
    model.sync(ino).expect("the model answers");
    model.sync(ROOT).expect("the model answers");
}

/// Renames `.f.tmp` over `f`, both in the root.
fn rename_over_f(model: &mut Model) {
    model
        .rename(ROOT, OsStr::new(".f.tmp"), ROOT, OsStr::new("f"), false)
        .expect("the model answers");
}

#[test]
fn only_synced_data_and_entries_survive_a_reboot() {
    let mut model = Model::new();
    let a = write_new(&mut model, "a", b"synced");
    sync_file_and_root(&mut model, a);
    model.write(a, 6, b" and not").expect("the model answers");
    write_new(&mut model, "b", b"never synced");
    model.powered = false;
    model.reboot();
    assert_eq!(
        file(&model, ROOT, "a").expect("the model answers"),
        b"synced"
    );
    assert_eq!(file(&model, ROOT, "b"), None);
}

#[test]
fn a_rename_made_durable_before_the_data_leaves_an_empty_file() {
    let mut model = Model::new();
    let old = write_new(&mut model, "f", b"old");
    sync_file_and_root(&mut model, old);
    write_new(&mut model, ".f.tmp", b"new");
    rename_over_f(&mut model);
    model.sync(ROOT).expect("the model answers");
    model.reboot();
    assert_eq!(file(&model, ROOT, "f").expect("the model answers"), b"");
}

#[test]
fn an_unsynced_rename_keeps_the_old_file() {
    let mut model = Model::new();
    let old = write_new(&mut model, "f", b"old");
    sync_file_and_root(&mut model, old);
    let temp = write_new(&mut model, ".f.tmp", b"new");
    model.sync(temp).expect("the model answers");
    rename_over_f(&mut model);
    model.reboot();
    assert_eq!(file(&model, ROOT, "f").expect("the model answers"), b"old");
    assert_eq!(file(&model, ROOT, ".f.tmp"), None);
}
