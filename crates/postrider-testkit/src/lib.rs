//! Test support shared by Postrider's test suites.
//!
//! The example plugins in `plugins/` are their own cargo workspace built for `wasm32-wasip2`;
//! tests that run real guests call [`plugin_wasm`], which builds that workspace once per test
//! process (cargo's own lock serialises concurrent test binaries) and returns the component.
//! Tests of the Redis kv backend start a real server with [`RedisServer`]; tests of verified
//! TLS get certificates from a [`TestCa`].

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

mod ca;
mod redis;

pub use ca::TestCa;
pub use redis::RedisServer;

/// The repository root.
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// Builds `plugins/` (release, wasm32-wasip2) once and returns the path of plugin `name`'s
/// component (`name` as in its crate name, e.g. "header-stamp").
///
/// # Panics
/// If the build fails: a test that needs a plugin cannot run without it.
pub fn plugin_wasm(name: &str) -> PathBuf {
    static BUILT: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    let dir = BUILT.get_or_init(build_plugins);
    match dir {
        Ok(dir) => {
            let path = dir.join(format!("{}.wasm", name.replace('-', "_")));
            assert!(path.exists(), "no plugin component at {}", path.display());
            path
        }
        Err(e) => panic!("building the plugins failed:\n{e}"),
    }
}

fn build_plugins() -> Result<PathBuf, String> {
    let plugins = repo_root().join("plugins");
    let target = plugins.join("target");
    let out = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
        .current_dir(&plugins)
        .args([
            "build",
            "--release",
            "--locked",
            "--target",
            "wasm32-wasip2",
            "--target-dir",
        ])
        .arg(&target)
        // The outer cargo's settings are for the host target, not for the plugin build.
        .env_remove("RUSTFLAGS")
        .env_remove("CARGO_BUILD_TARGET")
        .env_remove("CARGO_TARGET_DIR")
        .output()
        .map_err(|e| format!("running cargo: {e}"))?;
    if !out.status.success() {
        return Err(String::from_utf8_lossy(&out.stderr).into_owned());
    }
    Ok(target.join("wasm32-wasip2/release"))
}

/// Builds the C, Python and JavaScript example plugins with `plugins/build-polyglot.sh`
/// (once per test process) and returns the component of `plugin` (its directory name, e.g.
/// "py-keyword-score").
///
/// # Panics
/// If the build fails or a toolchain is missing: CI installs them, so the test fails rather
/// than skips.
pub fn polyglot_wasm(plugin: &str) -> PathBuf {
    static BUILT: OnceLock<Result<(), String>> = OnceLock::new();
    let built = BUILT.get_or_init(|| {
        let out = Command::new("bash")
            .arg(repo_root().join("plugins/build-polyglot.sh"))
            .current_dir(repo_root())
            // The C build runs cargo for postrider-wasm-tools: not with the test's settings.
            .env_remove("RUSTFLAGS")
            .env_remove("CARGO_BUILD_TARGET")
            .output()
            .map_err(|e| format!("running plugins/build-polyglot.sh: {e}"))?;
        if out.status.success() {
            Ok(())
        } else {
            Err(format!(
                "plugins/build-polyglot.sh failed ({}):\n{}\n{}",
                out.status,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ))
        }
    });
    if let Err(e) = built {
        panic!("{e}");
    }
    let path = repo_root()
        .join("plugins")
        .join(plugin)
        .join(format!("{plugin}.wasm"));
    assert!(path.exists(), "no component at {}", path.display());
    path
}
