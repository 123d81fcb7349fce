//! The admin socket: `postrider queue`, `status` and `reload` talk to the running relay over
//! a unix socket only the relay's user can open, one JSON line in, one out.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tokio::io::AsyncWriteExt;
use tracing::info;

use crate::admin_http::Readiness;
use crate::queue::admin::{Request, Response};
use crate::queue::manager::QueueHandle;
use crate::reload::Reloader;

/// What the admin socket answers from.
#[derive(Clone)]
pub struct Admin {
    pub queue: QueueHandle,
    pub reloader: Arc<Reloader>,
    pub ready: Arc<Readiness>,
    pub started: std::time::SystemTime,
    pub http: Option<SocketAddr>,
}

/// Serves `postrider queue`, `status` and `reload` on a unix socket only the relay's user
/// can open.
pub fn admin_socket(
    path: &std::path::Path,
    admin: Admin,
) -> anyhow::Result<tokio::task::JoinHandle<()>> {
    use std::os::unix::fs::PermissionsExt;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    // A socket left by a relay that died; the spool lock already guarantees we are alone.
    let _ = std::fs::remove_file(path);
    let listener = tokio::net::UnixListener::bind(path)
        .with_context(|| format!("binding admin socket {}", path.display()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
        .with_context(|| format!("securing {}", path.display()))?;
    info!(path = %path.display(), "admin socket");
    Ok(tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            };
            let admin = admin.clone();
            tokio::spawn(async move {
                let _ = tokio::time::timeout(Duration::from_secs(60), admin_request(stream, admin))
                    .await;
            });
        }
    }))
}

/// One admin request: a JSON line in, a JSON line out.
async fn admin_request(stream: tokio::net::UnixStream, admin: Admin) -> std::io::Result<()> {
    use tokio::io::{AsyncBufReadExt, AsyncReadExt, BufReader};
    let (read, mut write) = stream.into_split();
    let mut line = String::new();
    BufReader::new(read.take(64 * 1024))
        .read_line(&mut line)
        .await?;
    let response = match serde_json::from_str::<Request>(&line) {
        Ok(Request::Reload) => match admin.reloader.reload("admin socket").await {
            Ok(generation) => Response::Ok { generation },
            Err(e) => Response::Error {
                message: format!("{e:#}"),
            },
        },
        Ok(Request::Kv { kv }) => match &admin.reloader.current().pipeline {
            Some(pipeline) => crate::kv_admin::run(pipeline.services().kv.as_ref(), &kv)
                .await
                .into(),
            None => Response::Error {
                message: "no plugins are configured: no kv store is in use".into(),
            },
        },
        Ok(Request::Status) => Response::Status {
            status: Box::new(status(&admin).await),
        },
        Ok(request) => admin.queue.admin(request).await,
        Err(e) => Response::Error {
            message: format!("bad request: {e}"),
        },
    };
    let mut out = serde_json::to_vec(&response).map_err(std::io::Error::other)?;
    out.push(b'\n');
    write.write_all(&out).await
}

/// The relay's state for `postrider status`.
async fn status(admin: &Admin) -> crate::status::Status {
    use crate::status::{ListenerStatus, PluginStatus, Status, unix_secs};
    let bound = admin.reloader.listeners().lock().await.bound();
    let generation = admin.reloader.current();
    let config = &generation.config;
    let listeners = config
        .listeners
        .iter()
        .map(|l| ListenerStatus {
            name: l.name.clone(),
            kind: format!("{:?}", l.kind).to_lowercase(),
            address: bound.get(&l.name).unwrap_or(&l.address).to_string(),
            tls: l.tls.is_some(),
        })
        .collect();
    let plugins = generation
        .pipeline
        .as_ref()
        .map(|p| {
            p.plugins()
                .iter()
                .map(|p| PluginStatus {
                    name: p.spec().name.clone(),
                    path: p.spec().path.display().to_string(),
                    hash: p.hash.clone(),
                    loaded_at: unix_secs(p.loaded_at),
                    stages: p.stage_names().into_iter().map(str::to_owned).collect(),
                    failure_policy: p.spec().failure_policy.name().to_owned(),
                    timeout_ms: p.spec().timeout.as_millis() as u64,
                })
                .collect()
        })
        .unwrap_or_default();
    Status {
        version: env!("CARGO_PKG_VERSION").to_owned(),
        pid: std::process::id(),
        started_at: unix_secs(admin.started),
        ready: admin.ready.get(),
        config: config.origin.clone(),
        generation: generation.number,
        config_loaded_at: unix_secs(generation.loaded_at),
        reload_failure: admin.reloader.failure(),
        admin_http: admin.http.map(|a| a.to_string()),
        listeners,
        plugins,
        queue: admin.queue.summary(),
    }
}
