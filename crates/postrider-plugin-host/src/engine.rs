//! The one wasmtime [`Engine`] of the relay: pooling allocator, copy-on-write memory images,
//! epoch interruption driven by a ticker thread, and the linker holding the host imports.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use wasmtime::component::{HasSelf, Linker};
use wasmtime::{Config, Enabled, Engine, InstanceAllocationStrategy, PoolingAllocationConfig};

use crate::bindings::Plugin;
use crate::error::HostError;
use crate::state::HostState;

/// How often the epoch advances; plugin deadlines are counted in these ticks.
pub const EPOCH_TICK: Duration = Duration::from_millis(5);

/// Bytes of each released linear memory and table reset in place rather than decommitted.
const KEEP_RESIDENT: usize = 1 << 20;

/// Released slots decommitted per batch.
const DECOMMIT_BATCH: usize = 16;

/// Sizing of the instance pool, shared by all plugins.
#[derive(Debug, Clone)]
pub struct EngineOptions {
    /// Most plugin instances alive at once (each transaction holds one per plugin).
    pub max_instances: u32,
    /// Largest linear memory any plugin may be given, in bytes.
    pub max_memory_bytes: usize,
}

impl Default for EngineOptions {
    fn default() -> Self {
        EngineOptions {
            max_instances: 1000,
            max_memory_bytes: 64 << 20,
        }
    }
}

/// The engine, the linker with every host import, and the epoch ticker.
pub struct PluginEngine {
    pub(crate) engine: Engine,
    pub(crate) linker: Linker<HostState>,
    pub(crate) instance_slots: Arc<tokio::sync::Semaphore>,
    /// The warm pools of plugins with `reuse` > 1 (idle instances hold slots).
    pub(crate) pools: Arc<crate::pool::Registry>,
    stop: Arc<AtomicBool>,
}

impl PluginEngine {
    /// Builds the engine and starts its epoch ticker thread.
    pub fn new(options: &EngineOptions) -> Result<PluginEngine, HostError> {
        let mut pool = PoolingAllocationConfig::default();
        // A Rust wasip2 component has a few core instances, memories and tables each.
        pool.total_component_instances(options.max_instances)
            .total_core_instances(options.max_instances.saturating_mul(4))
            .total_memories(options.max_instances.saturating_mul(2))
            .total_tables(options.max_instances.saturating_mul(4))
            .max_memory_size(options.max_memory_bytes)
            // Reset a released slot's dirty pages in place (found with PAGEMAP_SCAN) instead
            // of madvise: no page faults on the next instantiation and no TLB-shootdown IPIs
            // to every core, which dominated the cost of a fresh instance under load.
            .pagemap_scan(Enabled::Auto)
            .linear_memory_keep_resident(KEEP_RESIDENT)
            .table_keep_resident(KEEP_RESIDENT)
            // What must still be decommitted goes in batches: one syscall and IPI for many.
            .decommit_batch_size(DECOMMIT_BATCH);
        let mut config = Config::new();
        config
            // Plugins use the classic async ABI only: no component-model concurrency, so a
            // store needs no worker fiber (whose disposal on drop cost an error and a fiber
            // switch per instance).
            .concurrency_support(false)
            .epoch_interruption(true)
            .memory_init_cow(true)
            .memory_reservation(options.max_memory_bytes as u64)
            .memory_guard_size(64 << 10)
            .allocation_strategy(InstanceAllocationStrategy::Pooling(pool));
        let engine = Engine::new(&config).map_err(HostError::engine)?;
        let mut linker = Linker::new(&engine);
        wasmtime_wasi::p2::add_to_linker_async(&mut linker).map_err(HostError::engine)?;
        // wasi:http/outgoing-handler and types; requests are checked by the hooks (net.rs).
        wasmtime_wasi_http::p2::add_only_http_to_linker_async(&mut linker)
            .map_err(HostError::engine)?;
        Plugin::add_to_linker::<_, HasSelf<_>>(&mut linker, |state| state)
            .map_err(HostError::engine)?;

        let stop = Arc::new(AtomicBool::new(false));
        let ticker = engine.weak();
        let ticker_stop = Arc::clone(&stop);
        std::thread::Builder::new()
            .name("postrider-epoch".into())
            .spawn(move || {
                while !ticker_stop.load(Ordering::Relaxed) {
                    std::thread::sleep(EPOCH_TICK);
                    match ticker.upgrade() {
                        Some(engine) => engine.increment_epoch(),
                        None => break,
                    }
                }
            })
            .map_err(|e| HostError::Engine(format!("epoch thread: {e}")))?;
        Ok(PluginEngine {
            engine,
            linker,
            instance_slots: Arc::new(tokio::sync::Semaphore::new(options.max_instances as usize)),
            // Idle warm instances may hold at most half the slots.
            pools: crate::pool::Registry::new(options.max_instances as usize / 2),
            stop,
        })
    }

    /// The wasmtime engine (for precompiling and cache keys).
    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    /// Idle warm instances of every plugin (see `PluginSpec::reuse`).
    pub fn idle_instances(&self) -> usize {
        self.pools.idle()
    }
}

impl Drop for PluginEngine {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}
