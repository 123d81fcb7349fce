//! Errors of the plugin host, split by who is to blame: the operator's setup (load errors)
//! or one plugin call (a failure its failure policy answers).

/// Why the engine or a plugin could not be set up. Fails the start or the reload.
#[derive(Debug, thiserror::Error)]
pub enum HostError {
    /// The engine or linker could not be built.
    #[error("wasm engine: {0}")]
    Engine(String),
    /// The plugin file could not be read.
    #[error("plugin {plugin}: reading {path}: {message}")]
    Read {
        /// Plugin name.
        plugin: String,
        /// Its file.
        path: String,
        /// Why.
        message: String,
    },
    /// The file is not a component, or does not match the host's WIT.
    #[error("plugin {plugin}: {message}")]
    Compile {
        /// Plugin name.
        plugin: String,
        /// Why.
        message: String,
    },
    /// The plugin's network grants could not be set up (its `ca_file`).
    #[error("plugin {plugin}: network: {message}")]
    Network {
        /// Plugin name.
        plugin: String,
        /// Why.
        message: String,
    },
    /// The plugin's `init` refused its config, trapped or timed out.
    #[error("plugin {plugin}: init failed: {message}")]
    Init {
        /// Plugin name.
        plugin: String,
        /// What init said, or the trap.
        message: String,
    },
}

impl HostError {
    pub(crate) fn engine(e: impl std::fmt::Display) -> HostError {
        HostError::Engine(format!("{e:#}"))
    }
}

/// Why one plugin call did not produce a usable answer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CallFailure {
    /// The guest trapped (including running out of memory).
    #[error("trap: {0}")]
    Trap(String),
    /// The call ran past its deadline.
    #[error("timed out after {0} ms")]
    Timeout(u128),
    /// No instance slot was free in time.
    #[error("no free instance slot")]
    Busy,
    /// The plugin answered something the host refuses (bad reply code, CR/LF in text, ...).
    #[error("invalid answer: {0}")]
    Invalid(String),
    /// A milter could not be reached, or closed the connection.
    #[error("unavailable: {0}")]
    Unavailable(String),
}

impl CallFailure {
    /// A short name for logs and metrics: trap, timeout, busy, invalid, unavailable.
    pub fn kind(&self) -> &'static str {
        match self {
            CallFailure::Trap(_) => "trap",
            CallFailure::Timeout(_) => "timeout",
            CallFailure::Busy => "busy",
            CallFailure::Invalid(_) => "invalid",
            CallFailure::Unavailable(_) => "unavailable",
        }
    }
}
