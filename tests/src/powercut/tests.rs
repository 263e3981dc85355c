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

#[test]
fn only_synced_data_and_entries_survive_a_reboot() {
    let mut model = Model::new();
    let a = model
        .create(ROOT, OsStr::new("a"), Content::File(vec![]), 0o644, 0, 0)
        .expect("the model answers");
    model.write(a, 0, b"synced").expect("the model answers");
    model.sync(a).expect("the model answers");
    model.sync(ROOT).expect("the model answers");
    model.write(a, 6, b" and not").expect("the model answers");
    let b = model
        .create(ROOT, OsStr::new("b"), Content::File(vec![]), 0o644, 0, 0)
        .expect("the model answers");
    model
        .write(b, 0, b"never synced")
        .expect("the model answers");
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
    let old = model
        .create(ROOT, OsStr::new("f"), Content::File(vec![]), 0o644, 0, 0)
        .expect("the model answers");
    model.write(old, 0, b"old").expect("the model answers");
    model.sync(old).expect("the model answers");
    model.sync(ROOT).expect("the model answers");
    let temp = model
        .create(
            ROOT,
            OsStr::new(".f.tmp"),
            Content::File(vec![]),
            0o644,
            0,
            0,
        )
        .expect("the model answers");
    model.write(temp, 0, b"new").expect("the model answers");
    model
        .rename(ROOT, OsStr::new(".f.tmp"), ROOT, OsStr::new("f"), false)
        .expect("the model answers");
    model.sync(ROOT).expect("the model answers");
    model.reboot();
    assert_eq!(file(&model, ROOT, "f").expect("the model answers"), b"");
}

#[test]
fn an_unsynced_rename_keeps_the_old_file() {
    let mut model = Model::new();
    let old = model
        .create(ROOT, OsStr::new("f"), Content::File(vec![]), 0o644, 0, 0)
        .expect("the model answers");
    model.write(old, 0, b"old").expect("the model answers");
    model.sync(old).expect("the model answers");
    model.sync(ROOT).expect("the model answers");
    let temp = model
        .create(
            ROOT,
            OsStr::new(".f.tmp"),
            Content::File(vec![]),
            0o644,
            0,
            0,
        )
        .expect("the model answers");
    model.write(temp, 0, b"new").expect("the model answers");
    model.sync(temp).expect("the model answers");
    model
        .rename(ROOT, OsStr::new(".f.tmp"), ROOT, OsStr::new("f"), false)
        .expect("the model answers");
    model.reboot();
    assert_eq!(file(&model, ROOT, "f").expect("the model answers"), b"old");
    assert_eq!(file(&model, ROOT, ".f.tmp"), None);
}
