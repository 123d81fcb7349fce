//! `postrider-wasm-tools`: the two steps of a C plugin build that need the wasm-tools family,
//! without installing `wit-bindgen-cli` and `wasm-tools` (each a multi-minute `cargo install`).
//! It calls the same library crates those CLIs are made of, in the versions wasmtime already
//! compiles into the workspace:
//!
//! * `c-bindings --wit DIR --world plugin --out DIR` is `wit-bindgen c DIR --world plugin
//!   --out-dir DIR` (the `wit-bindgen-c` generator with its default options): it writes
//!   `plugin.h`, `plugin.c` and `plugin_component_type.o`.
//! * `component-new CORE.wasm --adapter-preview1 -o OUT.wasm` is `wasm-tools component new
//!   CORE.wasm --adapt wasi_snapshot_preview1=<reactor adapter> -o OUT.wasm` (wit-component's
//!   `ComponentEncoder`), with the preview1 reactor adapter of wasmtime's own release built in.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};
use wasi_preview1_component_adapter_provider::{
    WASI_SNAPSHOT_PREVIEW1_ADAPTER_NAME, WASI_SNAPSHOT_PREVIEW1_REACTOR_ADAPTER,
};

#[derive(Parser)]
#[command(
    name = "postrider-wasm-tools",
    about = "C bindings from WIT (= `wit-bindgen c`) and core module → component (= `wasm-tools component new`)"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Generate C bindings for a WIT world, as `wit-bindgen c` does.
    CBindings {
        /// A WIT file or a directory of WIT files (with an optional `deps/` folder).
        #[arg(long)]
        wit: PathBuf,
        /// The world to generate bindings for (may be omitted when the package has one).
        #[arg(long)]
        world: Option<String>,
        /// Directory to write `<world>.h`, `<world>.c` and `<world>_component_type.o` to.
        #[arg(long)]
        out: PathBuf,
    },
    /// Turn a core module (with the component type custom section the bindings embed) into
    /// a component, as `wasm-tools component new` does.
    ComponentNew {
        /// The core wasm module.
        module: PathBuf,
        /// Adapt `wasi_snapshot_preview1` imports with the preview1 reactor adapter (needed
        /// for anything built against wasi-libc's `wasm32-wasi`).
        #[arg(long)]
        adapter_preview1: bool,
        /// Where to write the component.
        #[arg(short, long)]
        output: PathBuf,
    },
}

fn main() -> Result<()> {
    match Cli::parse().command {
        Command::CBindings { wit, world, out } => c_bindings(&wit, world.as_deref(), &out),
        Command::ComponentNew {
            module,
            adapter_preview1,
            output,
        } => component_new(&module, adapter_preview1, &output),
    }
}

fn c_bindings(wit: &Path, world: Option<&str>, out: &Path) -> Result<()> {
    let mut resolve = wit_parser::Resolve::default();
    let (package, _) = resolve
        .push_path(wit)
        .with_context(|| format!("reading WIT from {}", wit.display()))?;
    let world = resolve.select_world(&[package], world)?;
    let mut files = wit_bindgen_core::Files::default();
    wit_bindgen_c::Opts::default()
        .build()
        .generate(&mut resolve, world, &mut files)?;
    std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    for (name, contents) in files.iter() {
        let path = out.join(name);
        // Unchanged files keep their mtime, so `make`-style rebuilds stay quiet.
        if std::fs::read(&path).is_ok_and(|old| old == contents) {
            continue;
        }
        std::fs::write(&path, contents).with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}

fn component_new(module: &Path, adapter_preview1: bool, output: &Path) -> Result<()> {
    let bytes = std::fs::read(module).with_context(|| format!("reading {}", module.display()))?;
    if !bytes.starts_with(b"\0asm") {
        bail!("{} is not a wasm module", module.display());
    }
    let mut encoder = wit_component::ComponentEncoder::default()
        .validate(true)
        .module(&bytes)
        .with_context(|| format!("decoding {}", module.display()))?;
    if adapter_preview1 {
        encoder = encoder.adapter(
            WASI_SNAPSHOT_PREVIEW1_ADAPTER_NAME,
            WASI_SNAPSHOT_PREVIEW1_REACTOR_ADAPTER,
        )?;
    }
    let component = encoder
        .encode()
        .with_context(|| format!("encoding a component from {}", module.display()))?;
    std::fs::write(output, component).with_context(|| format!("writing {}", output.display()))?;
    Ok(())
}
