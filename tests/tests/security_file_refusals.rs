//! Issue 8, acceptance 4 (File part), with the real agent binary: a manifest cannot make the
//! agent write outside its file roots, whether through a symlink inside a root, a path outside
//! every root, `..`, or a hard link inside a root to a file outside. Each refusal is that
//! resource's own typed failure; the other resources converge.

use std::os::unix::fs::MetadataExt;

use fleetlet_tests::agent::{AgentDirs, AgentOptions, file_resource, manifest};
use serde_json::{Value, json};

#[test]
fn file_writes_never_escape_the_roots() -> anyhow::Result<()> {
    let dirs = AgentDirs::new()?;
    let root = dirs.root();
    let outside = dirs.outside();
    std::fs::create_dir_all(&root)?;
    std::fs::create_dir_all(&outside)?;

    // A secret outside the roots, reachable from inside through a symlinked directory and
    // through a hard link.
    let secret = outside.join("secret");
    std::fs::write(&secret, "outside, untouched\n")?;
    std::os::unix::fs::symlink(&outside, root.join("escape"))?;
    let linked = root.join("linked");
    std::fs::hard_link(&secret, &linked)?;

    let desired = manifest(
        "pi-refusals",
        vec![
            file_resource("good", &root.join("good"), "fine\n", "0644"),
            file_resource(
                "through-symlink",
                &root.join("escape/secret"),
                "owned\n",
                "0644",
            ),
            file_resource("outside-roots", &outside.join("new"), "owned\n", "0644"),
            file_resource("hard-link", &linked, "replaced\n", "0644"),
        ],
    );
    dirs.write_manifest(&desired)?;
    let output = AgentOptions::standalone("pi-refusals").run_once(&dirs)?;
    // Not converged: two resources fail.
    assert!(!output.status.success());
    let status: Value = serde_json::from_slice(&output.stdout).map_err(|e| {
        anyhow::anyhow!(
            "{e}: {}\n{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        )
    })?;
    let resources = &status["resources"];
    assert_eq!(resources["good"]["phase"], "Ready", "{status}");
    for refused in ["through-symlink", "outside-roots"] {
        assert_eq!(resources[refused]["phase"], "Failed", "{refused}: {status}");
        assert_eq!(
            resources[refused]["error"]["reason"], "PathNotAllowed",
            "{refused}: {status}"
        );
    }
    // The hard link is replaced by a new file (temp file + rename), never written through.
    assert_eq!(resources["hard-link"]["phase"], "Ready", "{status}");
    assert_eq!(std::fs::read_to_string(&secret)?, "outside, untouched\n");
    assert_eq!(std::fs::read_to_string(&linked)?, "replaced\n");
    assert_ne!(
        std::fs::metadata(&secret)?.ino(),
        std::fs::metadata(&linked)?.ino()
    );
    assert_eq!(std::fs::metadata(&secret)?.nlink(), 1);
    assert!(!outside.join("new").exists());

    // `..` never gets as far as a reconciler: the manifest itself is refused, with the path of
    // the offending field, and nothing is written.
    let mut dotdot = desired.clone();
    dotdot["resources"] = json!([file_resource(
        "dotdot",
        &root.join("..").join("outside").join("via-dotdot"),
        "owned\n",
        "0644"
    )]);
    dirs.write_manifest(&dotdot)?;
    let output = AgentOptions::standalone("pi-refusals").run_once(&dirs)?;
    assert!(!output.status.success());
    let status: Value = serde_json::from_slice(&output.stdout)?;
    let rejected = status["conditions"]
        .as_array()
        .and_then(|conditions| {
            conditions
                .iter()
                .find(|c| c["type"] == "ManifestRejected" && c["status"] == "True")
        })
        .cloned()
        .unwrap_or_else(|| panic!("no ManifestRejected condition: {status}"));
    assert!(
        rejected["message"]
            .as_str()
            .is_some_and(|m| m.contains("resources[0].spec.path")),
        "{rejected}"
    );
    assert!(!dirs.base().join("outside/via-dotdot").exists());
    assert!(!outside.join("via-dotdot").exists());
    Ok(())
}
